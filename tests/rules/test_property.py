"""Safety properties of the rule table and the cards (decision-rules.md v2, change 1), for random records.

- Adding any finding that a supporting (``appropriate``) rule reads never turns an ``appropriate``
  rating into ``not-appropriate``, and never brings back a cancel suggestion.
- No card recommends cancelling, or says "no red flag(s)", while the record holds a red flag or a
  weaker risk factor; "not found" is always "not found in the coded record".
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from service.facts import model
from service.render import cards
from service.rules import engine
from service.rules import table
from service.rules.predicates import READS
from service.rules.predicates import WEAKER_RISK_FACTORS
from tests import fhir
from tests.fhir import AS_OF

F = model.Finding
TABLE = table.load_table()
PREPARED = cards.prepare(TABLE)
CONTRAST = {"72148": model.Contrast.WITHOUT, "72149": model.Contrast.WITH, "72158": model.Contrast.WITHOUT_WITH}
# The episode facts are the indication itself, not a finding that supports imaging: without them the
# order is unrated (rule 9), with them it is judged.
EPISODE = {F.BACK_PAIN, F.RADICULOPATHY}
SUPPORTING = sorted(
    {f for r in TABLE.rules if r.rating == "appropriate" for name in (*r.when.all, *r.when.any) for f in READS[name]} - EPISODE
)
RED_FLAGS = {F(k) for k, v in TABLE.findings.items() if v.red_flag} | set(WEAKER_RISK_FACTORS)


def facts(found: set[model.Finding], *, days: int | None, age: int, sex: str, code: str, reason: bool, priority: str | None) -> model.Facts:
    order = fhir.mri_order(code, priority=priority)
    return model.Facts(
        today=AS_OF, age=age, sex=sex,
        order=model.Order(reference="ServiceRequest/example-request-id", resource=order, study=fhir.study(code, CONTRAST[code]),
                          priority=priority, has_reason=reason),
        findings={f: (model.Evidence(reference=f"Condition/{f.value}", on=AS_OF - timedelta(days=3), text=f.value),) for f in found},
        episode_start=None if days is None else AS_OF - timedelta(days=days), episode_days=days,
    )


def rendered(f: model.Facts) -> tuple[engine.Decision, list[dict]]:
    decision = engine.decide(TABLE, f)
    return decision, [c.card for c in cards.render_decision(decision, TABLE, PREPARED)[0]]


def cancels(card_list: list[dict]) -> list[bool]:
    """isRecommended of every suggestion that deletes the order."""
    return [s["isRecommended"] for c in card_list for s in c.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]


RECORDS = dict(
    found=st.sets(st.sampled_from(list(F)), max_size=5),  # small records: larger ones nearly always match rule 1-4
    days=st.none() | st.integers(0, 400),
    age=st.integers(18, 95),
    sex=st.sampled_from(["female", "male"]),
    code=st.sampled_from(sorted(CONTRAST)),
    reason=st.booleans(),
    priority=st.sampled_from([None, "routine", "stat"]),
)


@settings(max_examples=400, deadline=None)
@given(added=st.sampled_from(SUPPORTING), **RECORDS)
def test_a_supporting_finding_never_discourages_imaging(added: model.Finding, found: set[model.Finding], **record) -> None:
    before, before_cards = rendered(facts(found, **record))
    after, after_cards = rendered(facts(found | {added}, **record))
    if before.rating == "appropriate":
        assert after.rating == "appropriate", (before.rule.id, after.rule.id)
    if not cancels(before_cards):
        assert not cancels(after_cards), (before.rule and before.rule.id, after.rule and after.rule.id)


@settings(max_examples=400, deadline=None)
@given(**RECORDS)
def test_no_card_denies_a_finding_in_the_record(found: set[model.Finding], **record) -> None:
    decision, card_list = rendered(facts(found, **record))
    if found & RED_FLAGS:
        assert not any(cancels(card_list)), decision.rule and decision.rule.id
        for card in card_list:
            opening = card["detail"].split("\n\n", 1)[0].lower()
            assert "no red flag" not in card["summary"].lower() and "without red flag" not in card["summary"].lower()
            assert "no red flag" not in opening and "without red flag" not in opening, card["detail"]
    for card in card_list:
        assert "not found" not in card["detail"].replace("Not found in the coded record", "").lower()


def test_the_supporting_findings_are_the_red_flags_and_their_partners() -> None:
    # A reviewer's check that the property above adds the findings that matter.
    assert {F.CAUDA_EQUINA, F.MOTOR_DEFICIT, F.MALIGNANCY, F.IV_DRUG_USE, F.RECENT_TRAUMA, F.AGE_OVER_70,
            F.ANKYLOSING_SPONDYLITIS, F.CONSERVATIVE_CARE, F.WEIGHT_LOSS} <= set(SUPPORTING)


def test_a_supporting_finding_never_discourages_imaging_exhaustively() -> None:
    # Every record of up to two findings, on top of no episode, an episode, or an episode with
    # conservative care, at several durations and ages: the combinations random records rarely hit.
    import itertools

    others = [f for f in F if f not in EPISODE | {F.CONSERVATIVE_CARE}]
    small = [set(c) for n in range(3) for c in itertools.combinations(others, n)]
    bases = [set(), {F.BACK_PAIN}, {F.BACK_PAIN, F.CONSERVATIVE_CARE}]
    checked = 0
    for extra, base, days, age in itertools.product(small, bases, (None, 10, 30, 60, 200), (40, 75)):
        record = dict(days=days, age=age, sex="female", code="72148", reason=True, priority=None)
        before = engine.decide(TABLE, facts(base | extra, **record))
        for added in SUPPORTING:
            after = engine.decide(TABLE, facts(base | extra | {added}, **record))
            if before.rating == "appropriate":
                assert after.rating == "appropriate", (sorted(base | extra), added, after.rule.id)
            if after.rule is not None and after.rule.id == "acute-uncomplicated" and (before.rule is None or before.rule.id != "acute-uncomplicated"):
                assert not cancels(rendered(facts(base | extra | {added}, **record))[1]), (sorted(base | extra), added)
            checked += 1
    assert checked > 100_000

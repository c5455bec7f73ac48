"""Cards and ratings as the clinician and the EHR receive them, for every fixture request.

Each case runs the real path: ``Evaluator.evaluate(parse_request(fixture), AS_OF)``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from service import pipeline
from service.facts import codes
from service.facts.model import Contrast
from service.facts.model import Evidence
from service.facts.model import Facts
from service.facts.model import Finding
from service.facts.model import Order
from service.intake.envelope import parse_request
from service.render import actions
from service.render import cards
from service.rules import engine
from service.rules import table
from service.rules.table import FindingLabel
from tests import fhir
from tests.fhir import AS_OF
from tests.fhir import FIXTURES
from tests.fhir import load_request

TABLE = table.load_table()
EVALUATOR = pipeline.Evaluator(codes.ValueSets.load(), TABLE)
RATING_RULES = {r.id for r in TABLE.rules}
RATING_OVERRIDES = ["red-flag-undocumented", "conservative-care-undocumented", "surgical-planning", "patient-specific"]
# decision-rules.md v2, "What a card must say": the override reasons that fit each warning card.
OVERRIDES = {
    "acute-uncomplicated": RATING_OVERRIDES,
    "no-conservative-trial": RATING_OVERRIDES,
    "trauma-ct-first": ["imaging-already-done", "high-risk-mechanism-not-coded", "patient-specific"],
    "repeat-imaging": ["clinical-change", "prior-study-unavailable", "surgical-planning", "patient-specific"],
    "pregnancy-contrast": ["contrast-agreed-with-radiology", "not-pregnant", "patient-specific"],
    "pregnancy-radiation": ["contrast-agreed-with-radiology", "not-pregnant", "patient-specific"],
}

# fixture -> (card rule ids in order, rating of every rated order or None, the rule that rated it)
EXPECTED: dict[str, tuple[list[str], str | None, str | None]] = {
    "acute-uncomplicated": (["acute-uncomplicated"], "not-appropriate", "acute-uncomplicated"),
    "benchmark-realistic": (["acute-uncomplicated"], "not-appropriate", "acute-uncomplicated"),
    "cauda-equina": (["cauda-equina"], "appropriate", "cauda-equina"),
    "child": ([], None, None),
    # v2 "Ratings by modality": 72158 may be appropriate in V3; the rating card itself offers 72148 (usually
    # appropriate), so the contrast-choice card, whose only suggestion that was, is left out.
    "contrast-choice": (["persistent-after-conservative-care"], "appropriate", "persistent-after-conservative-care"),
    "fever-infection-risk": (["suspected-cancer-infection"], "appropriate", "suspected-cancer-infection"),
    "fracture-risk": (["fracture-risk"], "appropriate", "fracture-risk"),
    "no-conservative-trial": (["no-conservative-trial"], "not-appropriate", "no-conservative-trial"),
    "no-criteria-apply": ([], "no-criteria-apply", "no-criteria-apply"),
    "no-indication": (["no-indication"], None, None),
    "order-sign-two-orders": (["acute-uncomplicated", "acute-uncomplicated", "contrast-choice"], "not-appropriate", "acute-uncomplicated"),
    "persistent-after-conservative-care": (["persistent-after-conservative-care"], "appropriate", "persistent-after-conservative-care"),
    "pregnancy-contrast": (["acute-uncomplicated", "pregnancy-contrast"], "not-appropriate", "acute-uncomplicated"),
    "prior-lumbar-surgery": (["prior-lumbar-surgery"], "appropriate", "prior-lumbar-surgery"),
    "repeat-imaging": (["repeat-imaging"], "not-appropriate", "repeat-imaging"),
    "sandbox-dstu2-medication-order": ([], None, None),
    "sandbox-empty-order": ([], None, None),
    "sandbox-medication-order": ([], None, None),
    "sandbox-no-draft-orders": ([], None, None),
    "suspected-cancer-infection": (["suspected-cancer-infection"], "appropriate", "suspected-cancer-infection"),
    "trauma-ct-first": (["trauma-ct-first"], "not-appropriate", "trauma-ct-first"),
    # decision-rules.md v2: one story per new behaviour
    "snomed-cancer-history": (["suspected-cancer-infection"], "appropriate", "suspected-cancer-infection"),
    "snomed-motor-deficit": (["cauda-equina"], "appropriate", "cauda-equina"),
    "steroid-statement": (["fracture-risk"], "appropriate", "fracture-risk"),
    "atc-glucocorticoid-dispense": (["fracture-risk"], "appropriate", "fracture-risk"),
    "fever-recent-infection": (["suspected-cancer-infection"], "appropriate", "suspected-cancer-infection"),
    "weight-loss-over-50": (["suspected-cancer-infection"], "appropriate", "suspected-cancer-infection"),
    "injection-drug-use": (["suspected-cancer-infection"], "appropriate", "suspected-cancer-infection"),
    "age-over-70": (["fracture-risk"], "appropriate", "fracture-risk"),
    "ankylosing-spondylitis-trauma": (["fracture-risk"], "appropriate", "fracture-risk"),
    "acute-weaker-risk-factors": (["acute-uncomplicated"], "not-appropriate", "acute-uncomplicated"),
    "trauma-high-energy": (["trauma-ct-first"], "not-appropriate", "trauma-ct-first"),
    "cervical-fusion": (["acute-uncomplicated"], "not-appropriate", "acute-uncomplicated"),
    "old-physical-therapy": (["no-conservative-trial"], "not-appropriate", "no-conservative-trial"),
    "known-vertebral-fracture": (["fracture-risk"], "appropriate", "fracture-risk"),
    # v2 "Ratings by modality", row 1: MRI with contrast only (72149) is usually not appropriate in V4.
    "cauda-equina-contrast": (["cauda-equina"], "not-appropriate", "cauda-equina"),
    # v2 change 6: lumbar CT and radiography orders, rated by the ordered study (radiography: no rating)
    "ct-acute-uncomplicated": (["acute-uncomplicated"], "not-appropriate", "acute-uncomplicated"),
    "ct-pregnancy": (["persistent-after-conservative-care", "pregnancy-radiation"], "appropriate", "persistent-after-conservative-care"),
    "ct-cauda-equina": (["cauda-equina"], "appropriate", "cauda-equina"),
    "xr-acute-uncomplicated": (["acute-uncomplicated"], None, None),
    "ct-repeat-imaging": (["repeat-imaging"], "not-appropriate", "repeat-imaging"),
}
FIXTURE_NAMES = sorted(EXPECTED)


def evaluate(data: dict[str, Any], *, from_sandbox: bool = False) -> pipeline.Evaluation:
    return EVALUATOR.evaluate(parse_request(data, hook=data["hook"], sandbox_quirks=from_sandbox), AS_OF)


def response_of(name: str) -> dict[str, Any]:
    return evaluate(load_request(name), from_sandbox=name.startswith("sandbox-")).response


def draft(data: dict[str, Any], n: int = 0) -> dict[str, Any]:
    """The n-th draft order of a request (to edit in place)."""
    return data["context"]["draftOrders"]["entry"][n]["resource"]


def topic(card: dict[str, Any]) -> str:
    return card["source"]["topic"]["code"]


def extension(resource: dict[str, Any], url: str) -> dict[str, Any]:
    found = [e for e in resource.get("extension", []) if e.get("url") == url]
    assert len(found) == 1, f"{url}: {found}"
    return found[0]


def rating_of(resource: dict[str, Any]) -> str:
    return extension(resource, actions.PAMA_RATING)["valueCodeableConcept"]["coding"][0]["code"]


def suggestion_actions(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for card in response["cards"]:
        for suggestion in card.get("suggestions", []):
            yield from suggestion["actions"]


def empties(value: Any, path: str = "$") -> Iterator[str]:
    """Paths of null, "", [] and {} anywhere below value."""
    if value is None or value == "" or value == [] or value == {}:
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from empties(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from empties(v, f"{path}[{i}]")


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.stem for p in (FIXTURES / "requests").glob("*.json")) == FIXTURE_NAMES


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_cards_and_rating(name: str) -> None:
    rule_ids, rating, rated_by = EXPECTED[name]
    response = response_of(name)
    assert [topic(c) for c in response["cards"]] == rule_ids
    ratings = [rating_of(a["resource"]) for a in response.get("systemActions", [])]
    assert set(ratings) == ({rating} if rating else set())
    for action in response.get("systemActions", []):
        assert extension(action["resource"], actions.PAMA_AUC_APPLIED)["valueUri"].endswith(f"#{rated_by}")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_card_contract(name: str) -> None:
    response = response_of(name)
    assert isinstance(response["cards"], list), "`cards` is required, even when empty"
    uuids: list[str] = []
    for card in response["cards"]:
        where = f"{name}: {topic(card)}"
        assert len(card["summary"]) < 140, where
        assert card["source"]["label"] and card["source"]["url"].startswith("https://"), where
        assert topic(card) in RATING_RULES | {m.id for m in TABLE.modifiers}, where
        assert card["links"] and all(link["type"] == "absolute" and link["url"].startswith("https://") for link in card["links"]), where
        assert ("selectionBehavior" in card) == bool(card.get("suggestions")), where
        uuids.append(card["uuid"])
        for suggestion in card.get("suggestions", []):
            assert suggestion["uuid"] and suggestion["actions"], where
            uuids.append(suggestion["uuid"])
        if card["indicator"] == "warning":
            reasons = card.get("overrideReasons", [])
            assert [r["code"] for r in reasons] == OVERRIDES[topic(card)], where
            assert all(r["system"] and r["display"] for r in reasons), where
    assert len(uuids) == len(set(uuids)), "card and suggestion uuids must be unique"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_no_empty_members(name: str) -> None:
    response = response_of(name)
    found = [p for key, value in response.items() if key != "cards" for p in empties(value, f"$.{key}")]
    # `cards` itself may be [] (it is required); nothing inside a card may be empty.
    found += [p for n, card in enumerate(response["cards"]) for p in empties(card, f"$.cards[{n}]")]
    assert found == []


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_system_actions(name: str) -> None:
    response = response_of(name)
    top = response.get("systemActions")
    assert top == response.get("extension", {}).get("systemActions")
    ids = []
    for action in top or []:
        assert action["type"] == "update"
        resource = action["resource"]
        ServiceRequest.model_validate(resource)
        ids.append(resource["id"])
        assert extension(resource, actions.PAMA_RATING)["valueCodeableConcept"]["coding"][0]["system"] == actions.PAMA_RATING_SYSTEM
        assert extension(resource, actions.PAMA_CONSULT_ID)["valueUri"].startswith("urn:uuid:")
        original = next(o for o in load_request(name)["context"]["draftOrders"]["entry"] if o["resource"]["id"] == resource["id"])
        assert {k: v for k, v in resource.items() if k != "extension"} == original["resource"], "the rated order must be unchanged otherwise"
    assert len(ids) == len(set(ids)), "at most one rating per order"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_suggested_resources_are_valid(name: str) -> None:
    for action in suggestion_actions(response_of(name)):
        if action["type"] in ("create", "update"):
            ServiceRequest.model_validate(action["resource"])
        else:
            assert action["type"] == "delete"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_at_most_one_rating_card_per_order(name: str) -> None:
    evaluation = evaluate(load_request(name), from_sandbox=name.startswith("sandbox-"))
    rating_cards = [c for c in evaluation.response["cards"] if topic(c) in RATING_RULES]
    assert len(rating_cards) <= evaluation.orders_reviewed


def test_the_same_order_twice_gets_one_card_and_one_rating() -> None:
    data = load_request("acute-uncomplicated")
    data["context"]["draftOrders"]["entry"].append(copy.deepcopy(data["context"]["draftOrders"]["entry"][0]))
    data["context"]["selections"] = ["ServiceRequest/example-request-id", "ServiceRequest/example-request-id"]
    response = evaluate(data).response
    assert [topic(c) for c in response["cards"]] == ["acute-uncomplicated"]
    assert len(response["systemActions"]) == 1


@pytest.mark.parametrize("name", ["child", "no-indication"])
def test_not_rated(name: str) -> None:
    response = response_of(name)
    assert "systemActions" not in response
    assert "extension" not in response


def test_consult_ids_unique_across_evaluations() -> None:
    ids = [
        extension(a["resource"], actions.PAMA_CONSULT_ID)["valueUri"]
        for _ in range(2)
        for a in response_of("order-sign-two-orders")["systemActions"]
    ]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_card_uuids_differ_across_evaluations() -> None:
    first, second = response_of("cauda-equina"), response_of("cauda-equina")
    assert first["cards"][0]["uuid"] != second["cards"][0]["uuid"]


# -- what each card offers -------------------------------------------------------------------------

def suggestions_of(name: str, rule_id: str, n: int = 0) -> list[dict[str, Any]]:
    cards = [c for c in response_of(name)["cards"] if topic(c) == rule_id]
    return cards[n].get("suggestions", [])


def test_cancel_suggestion_deletes_the_draft() -> None:
    cancel = [a for s in suggestions_of("acute-uncomplicated", "acute-uncomplicated") for a in s["actions"] if a["type"] == "delete"]
    assert cancel == [{"type": "delete", "description": cancel[0]["description"], "resourceId": "ServiceRequest/example-request-id"}]


def test_cancel_suggestion_names_each_order_of_order_sign() -> None:
    response = response_of("order-sign-two-orders")
    deleted = [a["resourceId"] for a in suggestion_actions(response) if a["type"] == "delete"]
    assert deleted == ["ServiceRequest/mri-1", "ServiceRequest/mri-2"]


def test_physical_therapy_referral_is_a_new_draft_for_the_same_patient() -> None:
    created = [a["resource"] for s in suggestions_of("no-conservative-trial", "no-conservative-trial") for a in s["actions"] if a["type"] == "create"]
    assert len(created) == 1
    referral = created[0]
    assert referral["status"] == "draft"
    assert referral["subject"] == draft(load_request("no-conservative-trial"))["subject"]
    assert referral["code"]["coding"][0]["code"] == "91251008"


@pytest.mark.parametrize(("name", "rule_id", "codes_offered"), [
    pytest.param("trauma-ct-first", "trauma-ct-first", ["72100", "72131"], id="low-energy-trauma-radiographs-then-ct"),
    pytest.param("fracture-risk", "fracture-risk", ["72100"], id="fracture-risk-radiographs"),
    pytest.param("contrast-choice", "persistent-after-conservative-care", ["72148"], id="72158-after-conservative-care-to-72148"),
    pytest.param("pregnancy-contrast", "pregnancy-contrast", ["72148"], id="pregnant-to-72148"),
])
def test_replacement_studies(name: str, rule_id: str, codes_offered: list[str]) -> None:
    offered = [a["resource"]["code"]["coding"][0]["code"] for s in suggestions_of(name, rule_id) for a in s["actions"]]
    assert offered == codes_offered


def test_radiography_for_fracture_risk_is_not_recommended_by_default() -> None:
    assert [s["isRecommended"] for s in suggestions_of("fracture-risk", "fracture-risk")] == [False]


def test_72149_on_order_sign_is_offered_72148() -> None:
    contrast = [c for c in response_of("order-sign-two-orders")["cards"] if topic(c) == "contrast-choice"]
    resource = contrast[0]["suggestions"][0]["actions"][0]["resource"]
    assert (resource["id"], resource["code"]["coding"][0]["code"]) == ("mri-2", "72148")


@pytest.mark.parametrize(("priority", "offered"), [
    pytest.param(None, True, id="no-priority"),
    pytest.param("routine", True, id="routine"),
    pytest.param("urgent", True, id="urgent"),
    pytest.param("asap", False, id="asap"),
    pytest.param("stat", False, id="already-stat"),
])
def test_stat_suggestion(priority: str | None, offered: bool) -> None:
    data = load_request("cauda-equina")
    if priority:
        draft(data)["priority"] = priority
    card = evaluate(data).response["cards"][0]
    assert topic(card) == "cauda-equina" and card["indicator"] == "critical"
    stat = [a["resource"] for s in card.get("suggestions", []) for a in s["actions"]]
    if not offered:
        assert stat == [] and "selectionBehavior" not in card
        return
    assert len(stat) == 1
    assert stat[0]["priority"] == "stat" and stat[0]["id"] == "example-request-id"
    assert rating_of(stat[0]) == "appropriate"


def test_add_reason_suggestion_leads_to_a_rating() -> None:
    data = load_request("no-indication")
    suggestions = suggestions_of("no-indication", "no-indication")
    assert len(suggestions) == 5
    low_back_pain = next(s for s in suggestions if "low back pain" in s["label"].lower())
    data["context"]["draftOrders"]["entry"][0]["resource"] = low_back_pain["actions"][0]["resource"]
    response = evaluate(data).response
    assert [topic(c) for c in response["cards"]] == ["acute-uncomplicated"]
    assert rating_of(response["systemActions"][0]["resource"]) == "not-appropriate"


def test_accepting_the_pregnancy_suggestion_removes_the_pregnancy_card() -> None:
    data = load_request("pregnancy-contrast")
    replacement = suggestions_of("pregnancy-contrast", "pregnancy-contrast")[0]["actions"][0]["resource"]
    data["context"]["draftOrders"]["entry"][0]["resource"] = replacement
    assert [topic(c) for c in evaluate(data).response["cards"]] == ["acute-uncomplicated"]


# -- what the detail says --------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "rule_id", "says"), [
    pytest.param("acute-uncomplicated", "acute-uncomplicated", ["(Condition/cond-acute-lbp, 2026-11-12)", "since 2026-11-12 (14 days)"], id="acute"),
    pytest.param("cauda-equina", "cauda-equina", ["(Condition/cond-cauda-retention, 2026-11-25)"], id="cauda-equina"),
    pytest.param("suspected-cancer-infection", "suspected-cancer-infection", ["(Condition/cond-cancer-history, 2019-02-01)"], id="cancer-history"),
    pytest.param("fever-infection-risk", "suspected-cancer-infection", ["(Condition/cond-fever-oud, 2025-06-01)", "**Also in the record:** Fever"], id="fever-and-ivdu"),
    pytest.param("fracture-risk", "fracture-risk", ["(Condition/cond-fracture-osteo, 2021-05-01)"], id="osteoporosis"),
    pytest.param("trauma-ct-first", "trauma-ct-first", ["(Condition/cond-trauma-contusion, 2026-11-22)"], id="trauma"),
    pytest.param("persistent-after-conservative-care", "persistent-after-conservative-care", ["(Procedure/proc-3, 2026-08-20)", "(Condition/cond-persistent-radic, 2026-08-01)"], id="physical-therapy"),
    pytest.param("prior-lumbar-surgery", "prior-lumbar-surgery", ["(Procedure/proc-2, 2023-04-12)"], id="prior-surgery"),
    pytest.param("no-conservative-trial", "no-conservative-trial", ["(Condition/cond-chronic-lbp, 2026-08-15)", "since 2026-08-15 (103 days)"], id="chronic"),
    pytest.param("repeat-imaging", "repeat-imaging", ["(DiagnosticReport/report-8, 2026-06-02)", "2026-06-02"], id="prior-mri"),
    pytest.param("pregnancy-contrast", "pregnancy-contrast", ["(Condition/cond-pregnant, 2026-07-01)"], id="pregnancy"),
])
def test_detail_names_the_evidence(name: str, rule_id: str, says: list[str]) -> None:
    card = next(c for c in response_of(name)["cards"] if topic(c) == rule_id)
    for text in says:
        assert text in card["detail"], card["detail"]


def test_repeat_imaging_summary_gives_the_earlier_date() -> None:
    card = next(c for c in response_of("repeat-imaging")["cards"] if topic(c) == "repeat-imaging")
    assert "2026-06-02" in card["summary"]


NOT_FOUND = "**Not found in the coded record:** "


def not_found_line(detail: str) -> str:
    assert NOT_FOUND in detail, detail
    return detail.split(NOT_FOUND, 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize(("name", "present"), [
    pytest.param("acute-uncomplicated", set(), id="acute"),
    pytest.param("no-conservative-trial", set(), id="chronic"),
    pytest.param("trauma-ct-first", {"recent_trauma"}, id="trauma"),
    pytest.param("pregnancy-contrast", set(), id="pregnant"),
    pytest.param("repeat-imaging", set(), id="repeat"),
    pytest.param("no-indication", set(), id="no-indication"),
])
def test_rating_card_lists_red_flags_not_found(name: str, present: set[str]) -> None:
    # The rating card of a not-appropriate (or unrated) order says, in one line, what would change
    # the verdict: every red flag absent, "not found in the coded record" (v2).
    card = response_of(name)["cards"][0]
    line = not_found_line(card["detail"])
    names = line.rstrip(".").split(", ")
    for key, label in TABLE.findings.items():
        if label.red_flag:
            assert (label.short in names) is (key not in present), f"{key} in {line}"
    assert len(card["detail"].splitlines()) <= 25, card["detail"]


@pytest.mark.parametrize("name", [n for n, (ids, *_) in EXPECTED.items() if ids])
def test_every_warning_rating_card_lists_red_flags(name: str) -> None:
    for card in response_of(name)["cards"]:
        if card["indicator"] == "warning" and topic(card) in RATING_RULES:
            assert TABLE.findings["cauda_equina"].short in not_found_line(card["detail"])
            assert "looked for and not found" not in card["detail"]


@pytest.mark.parametrize("resources", [
    pytest.param([fhir.condition("Z94.0", onset="2015-01-01", cid="cond-transplant")], id="kidney-transplant"),
    pytest.param([fhir.condition("R50.9", onset="2026-11-24", cid="cond-fever")], id="fever"),
])
def test_no_indication_card_does_not_deny_a_present_red_flag(resources: list[dict[str, Any]]) -> None:
    data = fhir.hook_request([fhir.mri_order()], resources=resources)
    card = evaluate(data).response["cards"][0]
    assert topic(card) == "no-indication"
    assert resources[0]["id"] in card["detail"]            # the red flag is shown as a fact ...
    assert "no red flag" not in card["detail"].lower()     # ... so the card must not deny it


# -- what prepare() works out at start-up ----------------------------------------------------------

MODEL_KEYS = {f.value for f in Finding}
# The shipped table, and one whose findings.toml names a red flag the decision model does not have.
TABLES = [TABLE, dataclasses.replace(TABLE, findings={
    **TABLE.findings, "unknown_flag": FindingLabel(label="Unknown", looked_for="something unknown", red_flag=True)})]


def reference_absent(facts: Facts, table_: table.RuleTable) -> list[str]:
    """The red flags not found in the coded record, straight from the table."""
    return [label.short for key, label in table_.findings.items()
            if label.red_flag and not (key in MODEL_KEYS and facts.has(Finding(key)))]


@pytest.mark.parametrize("table_", TABLES, ids=["shipped", "unknown-red-flag"])
def test_prepared_card_text_is_the_tables(table_: table.RuleTable) -> None:
    prepared = cards.prepare(table_)
    assert list(prepared.findings) == [(Finding(k), v.label) for k, v in table_.findings.items() if k in MODEL_KEYS]
    assert list(prepared.red_flags) == [(Finding(k) if k in MODEL_KEYS else None, v.short)
                                        for k, v in table_.findings.items() if v.red_flag]
    assert dict(prepared.closing) == {
        cid: f"Rule `{cid}` · Sources: " + "; ".join(table_.sources[k].label for k in content.cites)
        for cid, content in table_.cards.items()
    }


EVIDENCE = st.lists(st.builds(Evidence, reference=st.sampled_from(["Condition/c1", "Observation/o-2"]),
                              on=st.none() | st.dates(), text=st.sampled_from(["M54.50 Low back pain", "x"])),
                    min_size=1, max_size=5).map(tuple)
PREPARED = [cards.prepare(t) for t in TABLES]


@settings(max_examples=200, deadline=None)
@given(findings=st.dictionaries(st.sampled_from(list(Finding)), EVIDENCE),
       age=st.none() | st.integers(0, 110), sex=st.sampled_from([None, "female", "male"]),
       start=st.none() | st.dates(max_value=AS_OF), which=st.sampled_from(range(len(TABLES))))
def test_not_found_never_names_a_present_finding(
    findings: dict[Finding, tuple[Evidence, ...]], age: int | None, sex: str | None, start: Any, which: int,
) -> None:
    table_, prepared = TABLES[which], PREPARED[which]
    order = Order(reference="ServiceRequest/o", resource=fhir.mri_order(), study=fhir.study("72148", Contrast.WITHOUT),
                  priority=None, has_reason=True)
    facts = Facts(today=AS_OF, age=age, sex=sex, order=order, findings=findings, episode_start=start,
                  episode_days=None if start is None else (AS_OF - start).days)
    unrated = engine.Decision(facts=facts, rule=None, modifiers=())  # a rating card not rated "appropriate"
    detail = cards._detail(table_.cards["acute-uncomplicated"], unrated, prepared, table_, rating_card=True)
    absent = reference_absent(facts, table_)
    if absent:
        assert not_found_line(detail) == ", ".join(absent) + "."
    else:
        assert NOT_FOUND not in detail
    for finding, label in prepared.findings:
        if finding in findings and finding in cards.WEAKER:
            assert label in detail  # shown as found, never as absent

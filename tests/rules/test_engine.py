"""Rule precedence, the six-week boundary and the modifier cards, starting from ``Facts`` built directly."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.facts import model
from service.rules import engine
from service.rules import table
from tests import fhir
from tests.fhir import AS_OF

F = model.Finding
CONTRAST = {"72148": model.Contrast.WITHOUT, "72149": model.Contrast.WITH, "72158": model.Contrast.WITHOUT_WITH}
BACK = F.BACK_PAIN
CARE = F.CONSERVATIVE_CARE


@pytest.fixture(scope="module")
def rules() -> table.RuleTable:
    return table.load_table()


def facts(*found: model.Finding, days: int | None = None, reason: bool = True, code: str = "72148",
          priority: str | None = None, age: int = 50) -> model.Facts:
    """Facts of one lumbar MRI order with these findings and this episode length (None = unknown)."""
    order = model.Order(
        reference="ServiceRequest/order-1",
        resource={"resourceType": "ServiceRequest", "id": "order-1", "status": "draft", "intent": "plan",
                  "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": code}]},
                  "subject": {"reference": "Patient/patient-1"}},
        study=fhir.study(code, CONTRAST[code]),
        priority=priority,
        has_reason=reason,
    )
    return model.Facts(
        today=AS_OF,
        age=age,
        sex="female",
        order=order,
        findings={f: (model.Evidence(reference=f"Condition/{f.value}", on=None, text=f.value),) for f in found},
        episode_start=None if days is None else AS_OF - timedelta(days=days),
        episode_days=days,
    )


def rule_of(rules: table.RuleTable, f: model.Facts) -> str | None:
    decision = engine.decide(rules, f)
    return decision.rule.id if decision.rule else None


# (facts, the rule that rates the order) -- one clinical situation per line.
PRECEDENCE = [
    # rule 1 beats everything
    pytest.param(facts(F.CAUDA_EQUINA, F.MALIGNANCY, BACK, days=3), "cauda-equina", id="cauda-equina-beats-cancer"),
    pytest.param(facts(F.MOTOR_DEFICIT, F.MALIGNANCY, BACK, days=3), "cauda-equina", id="foot-drop-beats-cancer"),
    pytest.param(facts(F.CAUDA_EQUINA, F.RECENT_TRAUMA, days=1), "cauda-equina", id="cauda-equina-beats-trauma"),
    pytest.param(facts(F.CAUDA_EQUINA, reason=False), "cauda-equina", id="cauda-equina-without-back-pain-or-reason"),
    # rule 2 beats prior surgery, fracture risk and trauma
    pytest.param(facts(F.MALIGNANCY, F.PRIOR_LUMBAR_SURGERY, BACK, days=10), "suspected-cancer-infection", id="cancer-beats-prior-surgery"),
    pytest.param(facts(F.SPINAL_INFECTION, F.OSTEOPOROSIS, BACK, days=10), "suspected-cancer-infection", id="infection-beats-osteoporosis"),
    pytest.param(facts(F.MALIGNANCY, reason=False), "suspected-cancer-infection", id="cancer-history-without-reason"),
    # rule 3 needs a current episode; beats fracture risk
    pytest.param(facts(F.PRIOR_LUMBAR_SURGERY, F.OSTEOPOROSIS, BACK, days=10), "prior-lumbar-surgery", id="prior-surgery-beats-osteoporosis"),
    pytest.param(facts(F.PRIOR_LUMBAR_SURGERY, BACK, days=100), "prior-lumbar-surgery", id="prior-surgery-beats-no-conservative-trial"),
    pytest.param(facts(F.PRIOR_LUMBAR_SURGERY), "no-criteria-apply", id="prior-surgery-without-back-pain"),
    # rule 4 beats trauma
    pytest.param(facts(F.VERTEBRAL_FRACTURE, F.RECENT_TRAUMA, BACK, days=5), "fracture-risk", id="known-fracture-beats-trauma"),
    pytest.param(facts(F.RECENT_TRAUMA, F.OLDER_AGE, BACK, days=5), "fracture-risk", id="trauma-at-older-age-is-fracture-risk"),
    pytest.param(facts(F.OSTEOPOROSIS, F.RECENT_TRAUMA, BACK, days=5), "fracture-risk", id="osteoporosis-beats-trauma"),
    pytest.param(facts(F.LONG_TERM_STEROIDS, BACK, days=5), "fracture-risk", id="long-term-steroids"),
    pytest.param(facts(F.OLDER_AGE, BACK, days=5), "acute-uncomplicated", id="older-age-alone-is-not-a-red-flag"),
    # rule 5 beats the episode rules
    pytest.param(facts(F.RECENT_TRAUMA, BACK, days=5), "trauma-ct-first", id="trauma-beats-acute"),
    pytest.param(facts(F.RECENT_TRAUMA, BACK, days=60), "trauma-ct-first", id="trauma-beats-no-conservative-trial"),
    # project choice: a recent injury does not take the rating from persistent pain after care
    pytest.param(facts(F.RECENT_TRAUMA, BACK, CARE, days=60), "persistent-after-conservative-care", id="persistent-after-care-beats-trauma"),
    pytest.param(facts(F.RECENT_TRAUMA, F.HIGH_ENERGY_TRAUMA, BACK, days=5), "trauma-ct-first", id="high-energy-trauma"),
    # v2 rule 4: age over 70; ankylosing spondylitis with trauma; older age with low-energy trauma only
    pytest.param(facts(F.AGE_OVER_70, BACK, days=5, age=71), "fracture-risk", id="age-over-70"),
    pytest.param(facts(F.ANKYLOSING_SPONDYLITIS, F.RECENT_TRAUMA, BACK, days=5), "fracture-risk", id="as-with-trauma"),
    pytest.param(facts(F.ANKYLOSING_SPONDYLITIS, BACK, days=5), "acute-uncomplicated", id="as-without-trauma"),
    pytest.param(facts(F.RECENT_TRAUMA, F.OLDER_AGE, F.HIGH_ENERGY_TRAUMA, BACK, days=5), "fracture-risk", id="high-energy-trauma-at-older-age-stays-fracture-risk"),
    # rule 2: fever needs a risk factor; immunosuppression needs back pain
    pytest.param(facts(F.FEVER, BACK, days=5), "acute-uncomplicated", id="fever-alone-is-not-rule-2"),
    pytest.param(facts(F.FEVER, F.IV_DRUG_USE, BACK, days=5), "suspected-cancer-infection", id="fever-with-ivdu"),
    pytest.param(facts(F.FEVER, F.RECENT_INFECTION, BACK, days=5), "suspected-cancer-infection", id="fever-with-recent-infection"),
    pytest.param(facts(F.RECENT_INFECTION, BACK, days=5), "acute-uncomplicated", id="recent-infection-without-fever"),
    pytest.param(facts(F.WEIGHT_LOSS, BACK, days=5, age=50), "suspected-cancer-infection", id="weight-loss-at-50"),
    pytest.param(facts(F.WEIGHT_LOSS, BACK, days=5, age=49), "acute-uncomplicated", id="weight-loss-at-49"),
    pytest.param(facts(F.FEVER, F.IMMUNOSUPPRESSION), "suspected-cancer-infection", id="fever-with-immunosuppression"),
    pytest.param(facts(F.IV_DRUG_USE, BACK, days=5), "suspected-cancer-infection", id="ivdu-without-fever-v2"),
    pytest.param(facts(F.IMMUNOSUPPRESSION), "no-criteria-apply", id="immunosuppression-without-back-pain"),
    pytest.param(facts(F.IMMUNOSUPPRESSION, BACK, days=5), "suspected-cancer-infection", id="immunosuppression-with-back-pain"),
    # not red flags by themselves
    pytest.param(facts(F.RADICULOPATHY, BACK, days=10), "acute-uncomplicated", id="radiculopathy-alone"),
    pytest.param(facts(F.PREGNANCY, BACK, days=10), "acute-uncomplicated", id="pregnancy-alone"),
    # v2 rule 5b: a prior study of the same modality is a rule, after rules 1-5
    pytest.param(facts(F.PRIOR_LUMBAR_IMAGING, BACK, CARE, days=60), "repeat-imaging", id="prior-mri-beats-persistent"),
    pytest.param(facts(F.PRIOR_LUMBAR_IMAGING, BACK, days=5), "repeat-imaging", id="prior-mri-beats-acute"),
    pytest.param(facts(F.PRIOR_LUMBAR_IMAGING, F.MALIGNANCY, BACK, days=5), "suspected-cancer-infection", id="cancer-beats-prior-mri"),
    pytest.param(facts(F.PRIOR_LUMBAR_IMAGING, F.RECENT_TRAUMA, BACK, days=5), "trauma-ct-first", id="trauma-beats-prior-mri"),
    # six weeks = 42 days
    pytest.param(facts(BACK, CARE, days=41), "acute-uncomplicated", id="41-days-with-care"),
    pytest.param(facts(BACK, CARE, days=42), "persistent-after-conservative-care", id="42-days-with-care"),
    pytest.param(facts(BACK, days=42), "no-conservative-trial", id="42-days-without-care"),
    pytest.param(facts(BACK, days=41), "acute-uncomplicated", id="41-days-without-care"),
    pytest.param(facts(BACK, days=0), "acute-uncomplicated", id="started-today"),
    pytest.param(facts(BACK, days=400), "no-conservative-trial", id="over-a-year-without-care"),
    pytest.param(facts(BACK, days=None), "acute-uncomplicated", id="unknown-duration"),
    pytest.param(facts(BACK, CARE, days=None), "acute-uncomplicated", id="unknown-duration-with-care"),
    # no indication / no criteria
    pytest.param(facts(reason=False), "no-indication", id="no-reason-no-back-pain"),
    pytest.param(facts(reason=True), "no-criteria-apply", id="reason-but-no-back-pain"),
    pytest.param(facts(BACK, days=None, reason=False), "acute-uncomplicated", id="back-pain-without-order-reason"),
]


@pytest.mark.parametrize(("f", "rule_id"), PRECEDENCE)
def test_rule(rules: table.RuleTable, f: model.Facts, rule_id: str) -> None:
    assert rule_of(rules, f) == rule_id


@pytest.mark.parametrize(("f", "rating"), [
    pytest.param(facts(F.CAUDA_EQUINA, BACK, days=1), "appropriate", id="cauda-equina"),
    pytest.param(facts(BACK, days=10), "not-appropriate", id="acute"),
    pytest.param(facts(BACK, CARE, days=60), "appropriate", id="persistent"),
    pytest.param(facts(reason=False), None, id="no-indication-is-not-rated"),
    pytest.param(facts(reason=True), "no-criteria-apply", id="no-criteria-apply"),
])
def test_rating(rules: table.RuleTable, f: model.Facts, rating: str | None) -> None:
    assert engine.decide(rules, f).rating == rating


def test_no_criteria_apply_has_no_card(rules: table.RuleTable) -> None:
    decision = engine.decide(rules, facts(reason=True))
    assert decision.rule is not None and decision.rule.card is False


# (facts, rating rule, modifier cards as (id, replace_with)) -- one situation per line.
MODIFIERS = [
    # pregnancy and a contrast study: the pregnancy card, never also the contrast-choice card
    pytest.param(facts(F.PREGNANCY, BACK, CARE, days=60, code="72158"), "persistent-after-conservative-care", [("pregnancy-contrast", "72148")], id="pregnant-72158-persistent"),
    pytest.param(facts(F.PREGNANCY, BACK, days=5, code="72149"), "acute-uncomplicated", [("pregnancy-contrast", "72148")], id="pregnant-72149-acute"),
    pytest.param(facts(F.PREGNANCY, F.MALIGNANCY, BACK, days=5, code="72149"), "suspected-cancer-infection", [("pregnancy-contrast", "72148")], id="pregnant-72149-cancer"),
    pytest.param(facts(F.PREGNANCY, code="72158"), "no-criteria-apply", [("pregnancy-contrast", "72148")], id="pregnant-72158-no-criteria-apply"),
    pytest.param(facts(F.PREGNANCY, BACK, days=5, code="72148"), "acute-uncomplicated", [], id="pregnant-72148"),
    # 72149 (with contrast only)
    pytest.param(facts(F.MALIGNANCY, BACK, days=5, code="72149"), "suspected-cancer-infection", [("contrast-choice", "72158")], id="72149-cancer-to-72158"),
    pytest.param(facts(F.PRIOR_LUMBAR_SURGERY, BACK, days=5, code="72149"), "prior-lumbar-surgery", [("contrast-choice", "72158")], id="72149-prior-surgery-to-72158"),
    pytest.param(facts(BACK, days=5, code="72149"), "acute-uncomplicated", [("contrast-choice", "72148")], id="72149-acute-to-72148"),
    pytest.param(facts(F.OSTEOPOROSIS, BACK, days=5, code="72149"), "fracture-risk", [("contrast-choice", "72148")], id="72149-fracture-risk-to-72148"),
    pytest.param(facts(code="72149"), "no-criteria-apply", [], id="72149-no-criteria-apply"),
    # 72158 (without then with) only where 72148 is the usually appropriate study (rules 4 and 6)
    pytest.param(facts(BACK, CARE, days=60, code="72158"), "persistent-after-conservative-care", [("contrast-choice", "72148")], id="72158-persistent-to-72148"),
    pytest.param(facts(F.OSTEOPOROSIS, BACK, days=5, code="72158"), "fracture-risk", [("contrast-choice", "72148")], id="72158-fracture-risk-to-72148"),
    pytest.param(facts(F.MALIGNANCY, BACK, days=5, code="72158"), "suspected-cancer-infection", [], id="72158-cancer"),
    pytest.param(facts(F.PRIOR_LUMBAR_SURGERY, BACK, days=5, code="72158"), "prior-lumbar-surgery", [], id="72158-prior-surgery"),
    pytest.param(facts(BACK, CARE, days=60, code="72148"), "persistent-after-conservative-care", [], id="72148-persistent"),
    # several modifiers at once, in table order
    pytest.param(facts(F.PREGNANCY, F.CAUDA_EQUINA, BACK, days=5, code="72158"), "cauda-equina", [("pregnancy-contrast", "72148")], id="pregnant-72158-cauda-equina"),
]


@pytest.mark.parametrize(("f", "rule_id", "modifiers"), MODIFIERS)
def test_modifiers(rules: table.RuleTable, f: model.Facts, rule_id: str, modifiers: list[tuple[str, str | None]]) -> None:
    decision = engine.decide(rules, f)
    assert decision.rule is not None and decision.rule.id == rule_id
    assert [(m.id, m.replace_with) for m in decision.modifiers] == modifiers

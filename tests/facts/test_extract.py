"""From FHIR JSON to facts, as a clinician would notice it: which record counts as which finding.

Every case starts from the JSON an EHR sends (built with tests/fhir.py), goes through the real
envelope and prefetch code, and is read on ``today = AS_OF`` (2026-11-26).
"""

from __future__ import annotations

import itertools
from datetime import date
from datetime import timedelta
from typing import Any

import pytest

from service.facts import extract
from service.facts import model
from service.facts.codes import ValueSets
from service.intake import envelope
from service.intake import prefetch
from tests import fhir
from tests.fhir import AS_OF

F = model.Finding
CPT_OID = "urn:oid:2.16.840.1.113883.6.12"
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"

VS = ValueSets.load()
TEMPLATES = prefetch.build_templates(VS.codings("body_temperature") + VS.codings("pregnancy_status_observation"))


def ago(days: int) -> str:
    """The ISO date `days` before AS_OF."""
    return (AS_OF - timedelta(days=days)).isoformat()


def born(age: int, *, birthday_tomorrow: bool = False) -> str:
    """A birth date giving `age` on AS_OF (birthday on Jan 1, or tomorrow)."""
    if birthday_tomorrow:
        tomorrow = AS_OF + timedelta(days=1)
        return date(tomorrow.year - age - 1, tomorrow.month, tomorrow.day).isoformat()
    return date(AS_OF.year - age, 1, 1).isoformat()


def facts_of(*resources: dict[str, Any], pat: dict[str, Any] | None = None,
             order: dict[str, Any] | None = None) -> model.Facts:
    """The facts of one lumbar MRI order, through the real envelope, prefetch and extraction."""
    order = order or fhir.mri_order()
    data = fhir.hook_request([order], pat=pat, resources=list(resources))
    request = envelope.parse_request(data, hook="order-select")
    record = prefetch.resolve(request.prefetch, TEMPLATES, request.patient_id, None)
    patient = extract.extract_patient(record, VS, AS_OF)
    facts = extract.facts_for_order(patient, order, VS)
    assert facts is not None, "the order should be recognised as a lumbar MRI"
    return facts


def with_system(resource: dict[str, Any], system: str) -> dict[str, Any]:
    resource["code"]["coding"][0]["system"] = system
    return resource


def with_status(resource: dict[str, Any], status: str) -> dict[str, Any]:
    resource["status"] = status
    return resource


_text_ids = itertools.count(1)


def text_only(resource_type: str, text: str) -> dict[str, Any]:
    """A resource whose code has only free text (no coding)."""
    return {"resourceType": resource_type, "id": f"text-{next(_text_ids)}", "code": {"text": text},
            "clinicalStatus": {"coding": [{"code": "active"}]}, "subject": {"reference": "Patient/patient-1"},
            "onsetDateTime": ago(5)}


def pt_referral(status: str, authored: str) -> dict[str, Any]:
    """A physical-therapy ServiceRequest (not the draft MRI) placed earlier."""
    return {"resourceType": "ServiceRequest", "id": f"pt-{status}", "status": status, "intent": "order",
            "code": {"coding": [fhir.coding("97110", "Therapeutic exercises")]},
            "subject": {"reference": "Patient/patient-1"}, "authoredOn": authored}


def lumbar_site(condition: dict[str, Any]) -> dict[str, Any]:
    """The condition placed in the lumbar spine by its bodySite (SNOMED CT 122496007 Lumbar spine structure)."""
    condition["bodySite"] = [{"coding": [fhir.coding("122496007", "Lumbar spine structure")]}]
    return condition


def prednisone(authored: str, supply_days: int, repeats: int = 0) -> dict[str, Any]:
    return fhir.medication("8640", "prednisone", authored=authored, supply_days=supply_days, repeats=repeats)


# (resources, finding, present) -- one clinical statement per line.
FINDINGS = [
    # statuses that say a Condition is not true are ignored
    pytest.param([fhir.condition("G83.4", onset=ago(1), verification="refuted")], F.CAUDA_EQUINA, False, id="refuted-cauda-equina"),
    pytest.param([fhir.condition("G83.4", onset=ago(1), verification="entered-in-error")], F.CAUDA_EQUINA, False, id="entered-in-error-cauda-equina"),
    pytest.param([fhir.condition("C34.90", onset=ago(30), verification="refuted")], F.MALIGNANCY, False, id="refuted-cancer"),
    pytest.param([fhir.condition("M54.50", onset=ago(5), verification="entered-in-error")], F.BACK_PAIN, False, id="entered-in-error-lbp"),
    # suspected cauda equina is enough
    pytest.param([fhir.condition("G83.4", onset=ago(1), verification="provisional")], F.CAUDA_EQUINA, True, id="provisional-cauda-equina"),
    pytest.param([fhir.condition("G83.4", onset=ago(1), verification="differential")], F.CAUDA_EQUINA, True, id="differential-cauda-equina"),
    pytest.param([fhir.condition("R33.9", onset=ago(2), verification="provisional")], F.CAUDA_EQUINA, True, id="provisional-urinary-retention"),
    pytest.param([fhir.condition("R15.9", onset=ago(2))], F.CAUDA_EQUINA, True, id="new-fecal-incontinence"),
    # a resolved back pain is not a current episode
    pytest.param([fhir.condition("M54.50", onset=ago(10))], F.BACK_PAIN, True, id="active-lbp"),
    pytest.param([fhir.condition("M54.50", onset=ago(10), clinical="resolved")], F.BACK_PAIN, False, id="resolved-lbp"),
    pytest.param([fhir.condition("M54.50", onset=ago(10), clinical="inactive")], F.BACK_PAIN, False, id="inactive-lbp"),
    pytest.param([fhir.condition("M54.16", onset=ago(10), clinical="remission")], F.BACK_PAIN, False, id="radiculopathy-in-remission"),
    pytest.param([fhir.condition("M54.16", onset=ago(10))], F.RADICULOPATHY, True, id="active-radiculopathy"),
    # cancer: history counts at any time, skin cancer never
    pytest.param([fhir.condition("Z85.3", onset="2019-02-01", clinical="resolved")], F.MALIGNANCY, True, id="history-of-breast-cancer-resolved"),
    pytest.param([fhir.condition("C50.911", onset=ago(200))], F.MALIGNANCY, True, id="active-breast-cancer"),
    pytest.param([fhir.condition("C79.51", onset=ago(20))], F.MALIGNANCY, True, id="bone-metastasis"),
    pytest.param([fhir.condition("C44.91", onset=ago(20))], F.MALIGNANCY, False, id="active-skin-cancer-C44"),
    pytest.param([fhir.condition("Z85.820", onset="2015-01-01", clinical="resolved")], F.MALIGNANCY, False, id="history-of-melanoma-Z85.820"),
    pytest.param([fhir.condition("Z85.828", onset="2015-01-01", clinical="resolved")], F.MALIGNANCY, False, id="history-of-skin-cancer-Z85.828"),
    # spinal infection: active, or resolved within 365 days
    pytest.param([fhir.condition("M46.26", onset=ago(260), clinical="resolved", abatement=ago(200))], F.SPINAL_INFECTION, True, id="osteomyelitis-resolved-200-days-ago"),
    pytest.param([fhir.condition("M46.26", onset=ago(460), clinical="resolved", abatement=ago(400))], F.SPINAL_INFECTION, False, id="osteomyelitis-resolved-400-days-ago"),
    pytest.param([fhir.condition("M46.46", onset=ago(200), clinical="resolved")], F.SPINAL_INFECTION, True, id="discitis-resolved-onset-200-days-ago"),
    pytest.param([fhir.condition("M46.46", onset=ago(400), clinical="resolved")], F.SPINAL_INFECTION, False, id="discitis-resolved-onset-400-days-ago"),
    pytest.param([fhir.condition("G06.1", onset=ago(900))], F.SPINAL_INFECTION, True, id="active-epidural-abscess-long-ago"),
    # fever: coded within 14 days
    pytest.param([fhir.condition("R50.9", onset=ago(13))], F.FEVER, True, id="fever-13-days-ago"),
    pytest.param([fhir.condition("R50.9", onset=ago(14))], F.FEVER, True, id="fever-14-days-ago"),
    pytest.param([fhir.condition("R50.9", onset=ago(15))], F.FEVER, False, id="fever-15-days-ago"),
    # fever: body temperature >= 38.0 °C within 14 days; °F converted
    pytest.param([fhir.temperature(100.4, "[degF]", on=ago(2))], F.FEVER, True, id="100.4-degF-is-38.0-Cel"),
    pytest.param([fhir.temperature(100.3, "[degF]", on=ago(2))], F.FEVER, False, id="100.3-degF"),
    pytest.param([fhir.temperature(38.0, "Cel", on=ago(2))], F.FEVER, True, id="38.0-Cel"),
    pytest.param([fhir.temperature(37.9, "Cel", on=ago(2))], F.FEVER, False, id="37.9-Cel"),
    pytest.param([fhir.temperature(39.5, "Cel", on=ago(15))], F.FEVER, False, id="39.5-Cel-15-days-ago"),
    pytest.param([fhir.temperature(39.5, "Cel", on=ago(2), status="entered-in-error")], F.FEVER, False, id="entered-in-error-temperature"),
    pytest.param([fhir.temperature(39.5, "Cel", on=ago(2), status="cancelled")], F.FEVER, False, id="cancelled-temperature"),
    pytest.param([fhir.temperature(39.5, "kg", on=ago(2))], F.FEVER, False, id="temperature-in-unknown-unit"),
    pytest.param([fhir.temperature(312.0, "K", on=ago(2))], F.FEVER, False, id="temperature-in-kelvin-not-read"),
    # v2 infection risk: injection drug use within 365 days; a recent infection within 90 days
    pytest.param([fhir.condition("F11.20", onset=ago(100))], F.IV_DRUG_USE, True, id="opioid-use-disorder-active"),
    pytest.param([fhir.condition("F11.20", onset=ago(500), clinical="resolved", abatement=ago(400))], F.IV_DRUG_USE, False, id="opioid-use-disorder-resolved-400-days-ago"),
    pytest.param([fhir.condition("F11.20", onset=ago(500), clinical="resolved", abatement=ago(200))], F.IV_DRUG_USE, True, id="opioid-use-disorder-resolved-200-days-ago"),
    pytest.param([fhir.condition("F14.20", onset=ago(100))], F.IV_DRUG_USE, True, id="cocaine-use-disorder"),
    pytest.param([fhir.condition("F12.20", onset=ago(100))], F.IV_DRUG_USE, False, id="cannabis-use-disorder-is-not-injection"),
    pytest.param([fhir.condition("R78.81", onset=ago(60), clinical="resolved")], F.RECENT_INFECTION, True, id="bacteremia-60-days-ago"),
    pytest.param([fhir.condition("R78.81", onset=ago(120), clinical="resolved")], F.RECENT_INFECTION, False, id="bacteremia-120-days-ago"),
    pytest.param([fhir.condition("N39.0", onset=ago(30), clinical="resolved", abatement=ago(20))], F.RECENT_INFECTION, True, id="uti-resolved-30-days-ago"),
    pytest.param([fhir.condition("N39.0", onset=ago(150), clinical="resolved", abatement=ago(80))], F.RECENT_INFECTION, True, id="uti-abated-80-days-ago"),
    pytest.param([fhir.condition("L03.115", onset=ago(40))], F.RECENT_INFECTION, True, id="cellulitis-40-days-ago"),
    pytest.param([fhir.condition("N39.0", onset=ago(200), clinical="resolved", abatement=ago(150))], F.RECENT_INFECTION, False, id="uti-150-days-ago"),
    # v2: unexplained weight loss within 90 days; ankylosing spondylitis (history counts)
    pytest.param([fhir.condition("R63.4", onset=ago(60))], F.WEIGHT_LOSS, True, id="weight-loss-60-days-ago"),
    pytest.param([fhir.condition("R63.4", onset=ago(120), clinical="resolved")], F.WEIGHT_LOSS, False, id="weight-loss-120-days-ago"),
    pytest.param([fhir.condition("M45.6", onset="2010-01-01", clinical="inactive")], F.ANKYLOSING_SPONDYLITIS, True, id="ankylosing-spondylitis-history"),
    # motor deficit: foot drop yes, generalized weakness no
    pytest.param([fhir.condition("R53.1", onset=ago(3))], F.MOTOR_DEFICIT, False, id="generalized-weakness-R53.1"),
    pytest.param([fhir.condition("M62.81", onset=ago(3))], F.MOTOR_DEFICIT, False, id="muscle-weakness-M62.81"),
    pytest.param([fhir.condition("M21.371", onset=ago(3))], F.MOTOR_DEFICIT, True, id="foot-drop-M21.371"),
    pytest.param([fhir.condition("G83.12", onset=ago(3))], F.MOTOR_DEFICIT, True, id="monoplegia-lower-limb"),
    # a strain is uncomplicated back pain; an injury within 90 days is trauma
    pytest.param([fhir.condition("S39.012A", onset=ago(5))], F.BACK_PAIN, True, id="lumbar-strain-is-back-pain"),
    pytest.param([fhir.condition("S39.012A", onset=ago(5))], F.RECENT_TRAUMA, False, id="lumbar-strain-is-not-trauma"),
    pytest.param([fhir.condition("S33.5XXA", onset=ago(5))], F.RECENT_TRAUMA, False, id="lumbar-sprain-is-not-trauma"),
    pytest.param([fhir.condition("S30.0XXA", onset=ago(30))], F.RECENT_TRAUMA, True, id="contusion-30-days-ago"),
    pytest.param([fhir.condition("S30.0XXA", onset=ago(90))], F.RECENT_TRAUMA, True, id="contusion-90-days-ago"),
    pytest.param([fhir.condition("S30.0XXA", onset=ago(100))], F.RECENT_TRAUMA, False, id="contusion-100-days-ago"),
    pytest.param([fhir.condition("S32.010A", onset=ago(10))], F.VERTEBRAL_FRACTURE, True, id="lumbar-vertebral-fracture"),
    # immunosuppression; transplant history counts
    pytest.param([fhir.condition("Z94.0", onset="2015-01-01")], F.IMMUNOSUPPRESSION, True, id="kidney-transplant"),
    pytest.param([fhir.condition("Z94.0", onset="2015-01-01", clinical="inactive")], F.IMMUNOSUPPRESSION, True, id="kidney-transplant-inactive"),
    pytest.param([fhir.condition("B20", onset="2015-01-01")], F.IMMUNOSUPPRESSION, True, id="hiv"),
    pytest.param([fhir.condition("Z94.7", onset="2015-01-01")], F.IMMUNOSUPPRESSION, False, id="corneal-transplant"),
    # osteoporosis (history counts) and documented long-term steroids
    pytest.param([fhir.condition("M81.0", onset="2020-01-01", clinical="inactive")], F.OSTEOPOROSIS, True, id="osteoporosis-history"),
    pytest.param([fhir.condition("Z79.52", onset="2024-01-01")], F.LONG_TERM_STEROIDS, True, id="long-term-steroids-Z79.52"),
    # glucocorticoid orders: >= 90 days in the last year
    pytest.param([prednisone(ago(300), 30), prednisone(ago(200), 30), prednisone(ago(100), 30)], F.LONG_TERM_STEROIDS, True, id="prednisone-30-days-x3-orders"),
    pytest.param([prednisone(ago(100), 30, repeats=2)], F.LONG_TERM_STEROIDS, True, id="prednisone-30-days-x3-fills"),
    pytest.param([prednisone(ago(100), 30)], F.LONG_TERM_STEROIDS, False, id="prednisone-30-days-x1"),
    pytest.param([prednisone(ago(400), 30), prednisone(ago(200), 30), prednisone(ago(100), 30)], F.LONG_TERM_STEROIDS, False, id="prednisone-one-fill-over-a-year-ago"),
    # prior lumbar surgery
    pytest.param([fhir.procedure("63030", performed="2023-04-12")], F.PRIOR_LUMBAR_SURGERY, True, id="laminotomy-procedure"),
    pytest.param([fhir.procedure("63030", performed="2023-04-12", status="not-done")], F.PRIOR_LUMBAR_SURGERY, False, id="laminotomy-not-done"),
    # v2: Z98.1 / M96.0 only when the record places them in the lumbar spine
    pytest.param([fhir.condition("Z98.1", onset="2020-01-01", clinical="inactive")], F.PRIOR_LUMBAR_SURGERY, False, id="arthrodesis-status-not-located"),
    pytest.param([fhir.condition("Z98.1", onset="2020-01-01", clinical="inactive")], F.FUSION_NOT_LOCATED, True, id="arthrodesis-status-not-located-is-shown"),
    pytest.param([lumbar_site(fhir.condition("Z98.1", onset="2020-01-01"))], F.FUSION_NOT_LOCATED, False, id="arthrodesis-status-lumbar-is-not-unlocated"),
    pytest.param([lumbar_site(fhir.condition("Z98.1", onset="2020-01-01"))], F.PRIOR_LUMBAR_SURGERY, True, id="arthrodesis-status-lumbar-body-site"),
    pytest.param([fhir.condition("Z98.1", onset="2020-01-01"), fhir.condition("M96.1", onset="2021-01-01")], F.PRIOR_LUMBAR_SURGERY, True, id="arthrodesis-status-with-postlaminectomy"),
    pytest.param([fhir.condition("M96.0", onset="2020-01-01")], F.PRIOR_LUMBAR_SURGERY, False, id="pseudarthrosis-not-located"),
    # prior lumbar study of the ordered modality (MRI) in the last 365 days
    pytest.param([fhir.imaging_report("72148", on=ago(200))], F.PRIOR_LUMBAR_IMAGING, True, id="mri-report-200-days-ago"),
    pytest.param([fhir.imaging_report("72148", on=ago(400))], F.PRIOR_LUMBAR_IMAGING, False, id="mri-report-400-days-ago"),
    pytest.param([with_status(fhir.imaging_report("72148", on=ago(200)), "entered-in-error")], F.PRIOR_LUMBAR_IMAGING, False, id="mri-report-entered-in-error"),
    pytest.param([fhir.imaging_report("72131", on=ago(200))], F.PRIOR_LUMBAR_IMAGING, False, id="ct-report-is-not-the-ordered-modality"),
    pytest.param([fhir.imaging_report("72100", on=ago(200))], F.PRIOR_LUMBAR_IMAGING, False, id="radiographs-are-not-the-ordered-modality"),
    pytest.param([fhir.procedure("72148", performed=ago(100))], F.PRIOR_LUMBAR_IMAGING, True, id="mri-procedure-100-days-ago"),
    # pregnancy: the latest pregnancy status observation wins
    pytest.param([fhir.pregnancy_status(True, on=ago(10))], F.PREGNANCY, True, id="pregnant-observation"),
    pytest.param([fhir.pregnancy_status(True, on=ago(60)), fhir.pregnancy_status(False, on=ago(10))], F.PREGNANCY, False, id="pregnant-then-not-pregnant"),
    pytest.param([fhir.pregnancy_status(False, on=ago(60)), fhir.pregnancy_status(True, on=ago(10))], F.PREGNANCY, True, id="not-pregnant-then-pregnant"),
    pytest.param([fhir.condition("Z34.90", onset=ago(100))], F.PREGNANCY, True, id="active-pregnancy-condition"),
    pytest.param([fhir.condition("Z34.90", onset=ago(280), clinical="resolved", abatement=ago(10))], F.PREGNANCY, False, id="delivered-10-days-ago"),
    pytest.param([fhir.condition("Z34.90", onset=ago(320))], F.PREGNANCY, False, id="stale-pregnancy-entry-320-days-ago"),
    # ICD-10 without dot, both ICD-10 system URLs
    pytest.param([fhir.condition("M5450", onset=ago(5))], F.BACK_PAIN, True, id="icd-without-dot"),
    pytest.param([fhir.condition("M54.50", onset=ago(5), system=ICD10_WHO)], F.BACK_PAIN, True, id="who-icd-10-system"),
    pytest.param([fhir.condition("C7951", onset=ago(5), system=ICD10_WHO)], F.MALIGNANCY, True, id="who-icd-10-without-dot"),
    # code.text alone is never matched; unknown codes are ignored
    pytest.param([text_only("Condition", "Low back pain")], F.BACK_PAIN, False, id="text-only-low-back-pain"),
    pytest.param([text_only("Condition", "Cauda equina syndrome")], F.CAUDA_EQUINA, False, id="text-only-cauda-equina"),
    pytest.param([fhir.condition("M54.50", onset=ago(5), system="http://example.org/local-codes")], F.BACK_PAIN, False, id="known-code-in-unknown-system"),
    # CPT under its OID
    pytest.param([with_system(fhir.procedure("63030", performed="2023-04-12"), CPT_OID)], F.PRIOR_LUMBAR_SURGERY, True, id="cpt-oid-surgery"),
    pytest.param([with_system(fhir.imaging_report("72148", on=ago(100)), CPT_OID)], F.PRIOR_LUMBAR_IMAGING, True, id="cpt-oid-prior-mri"),
]


@pytest.mark.parametrize(("resources", "finding", "present"), FINDINGS)
def test_finding(resources: list[dict[str, Any]], finding: model.Finding, present: bool) -> None:
    assert facts_of(*resources).has(finding) is present


@pytest.mark.parametrize(("resources"), [
    pytest.param([fhir.condition("ZZZ.99", onset=ago(5))], id="unknown-icd-code"),
    pytest.param([fhir.condition("12345", onset=ago(5), system="http://example.org/local-codes")], id="unknown-system"),
    pytest.param([fhir.observation("2339-0", on=ago(1), value=5.0)], id="unknown-observation (glucose)"),
    pytest.param([fhir.procedure("99213", performed=ago(3))], id="unknown-procedure (office visit)"),
    pytest.param([fhir.medication("197361", "amlodipine", authored=ago(3))], id="unknown-medication"),
    pytest.param([text_only("Condition", "Severe back pain with fever")], id="free-text-only"),
])
def test_unknown_codes_give_no_findings(resources: list[dict[str, Any]]) -> None:
    assert dict(facts_of(*resources, pat=fhir.patient(birth=born(40))).findings) == {}


def test_ivdu_with_fever_is_infection_risk_and_fever() -> None:
    facts = facts_of(fhir.condition("F11.20", onset=ago(200)), fhir.temperature(101.8, "[degF]", on=ago(2)))
    assert facts.has(F.IV_DRUG_USE)
    assert facts.has(F.FEVER)


def test_evidence_names_the_resource_and_its_date() -> None:
    history = fhir.condition("Z85.3", onset="2019-02-01", clinical="resolved", cid="cond-cancer-history")
    fever = fhir.temperature(38.4, "Cel", on=ago(2))
    facts = facts_of(history, fever)
    assert [(e.reference, e.on) for e in facts.findings[F.MALIGNANCY]] == [("Condition/cond-cancer-history", date(2019, 2, 1))]
    assert [(e.reference, e.on) for e in facts.findings[F.FEVER]] == [(f"Observation/{fever['id']}", AS_OF - timedelta(days=2))]


def test_one_condition_is_one_piece_of_evidence() -> None:
    # M51.362 is in both low_back_pain and radiculopathy_stenosis: the card must not show it twice.
    facts = facts_of(fhir.condition("M51.362", onset=ago(10), cid="cond-disc"))
    assert [e.reference for e in facts.findings[F.BACK_PAIN]] == ["Condition/cond-disc"]


# Older age counts only together with recent trauma: > 65 men, > 75 women (ACP-2011).
@pytest.mark.parametrize(("gender", "birth", "trauma", "older"), [
    pytest.param("male", born(66), True, True, id="man-66-with-trauma"),
    pytest.param("male", born(65), True, False, id="man-65-with-trauma"),
    pytest.param("male", born(66), False, False, id="man-66-without-trauma"),
    pytest.param("female", born(70), True, False, id="woman-70-with-trauma"),
    pytest.param("female", born(76), True, True, id="woman-76-with-trauma"),
    pytest.param("female", born(75), True, False, id="woman-75-with-trauma"),
    pytest.param("male", born(65, birthday_tomorrow=True), True, False, id="man-65-turning-66-tomorrow"),
])
def test_older_age_only_with_trauma(gender: str, birth: str, trauma: bool, older: bool) -> None:
    resources = [fhir.condition("S30.0XXA", onset=ago(10))] if trauma else []
    facts = facts_of(*resources, pat=fhir.patient(birth=birth, gender=gender))
    assert facts.has(F.OLDER_AGE) is older


@pytest.mark.parametrize(("birth", "age"), [
    pytest.param(born(40), 40, id="birthday-passed"),
    pytest.param(born(40, birthday_tomorrow=True), 40, id="turning-41-tomorrow-is-still-40"),
    pytest.param(date(AS_OF.year - 41, AS_OF.month, AS_OF.day).isoformat(), 41, id="birthday-today"),
    pytest.param(date(AS_OF.year - 18, AS_OF.month, AS_OF.day + 1).isoformat(), 17, id="eighteen-tomorrow-is-17"),
])
def test_age_on_the_day(birth: str, age: int) -> None:
    assert facts_of(pat=fhir.patient(birth=birth)).age == age


# The episode: earliest onset among current back-pain conditions; an undated order reason is "unknown".
@pytest.mark.parametrize(("resources", "reasons", "episode_days"), [
    pytest.param([fhir.condition("M54.50", onset=ago(10))], None, 10, id="one-lbp"),
    pytest.param([fhir.condition("M54.50", onset=ago(10)), fhir.condition("M54.16", onset=ago(50))], None, 50, id="earliest-of-lbp-and-radiculopathy"),
    pytest.param([fhir.condition("M54.50", onset=ago(10)), fhir.condition("M54.50", onset=ago(400), clinical="resolved")], None, 10, id="resolved-older-episode-ignored"),
    pytest.param([fhir.condition("M54.50", onset=ago(10)), fhir.condition("M54.50", onset=ago(100), verification="refuted")], None, 10, id="refuted-older-lbp-ignored"),
    pytest.param([fhir.condition("M54.50", recorded=ago(20))], None, 20, id="recorded-date-when-no-onset"),
    pytest.param([fhir.condition("I10", onset=ago(1000))], None, None, id="no-back-pain"),
    pytest.param([], [fhir.coding("M54.50")], None, id="order-reason-without-dated-condition"),
    pytest.param([], [fhir.coding("279039007")], None, id="snomed-order-reason-without-dated-condition"),
    pytest.param([fhir.condition("M54.50", onset=ago(70))], [fhir.coding("M54.50")], 70, id="order-reason-and-dated-condition"),
])
def test_episode(resources: list[dict[str, Any]], reasons: list[dict[str, Any]] | None, episode_days: int | None) -> None:
    facts = facts_of(*resources, order=fhir.mri_order(reasons=reasons))
    assert facts.episode_days == episode_days
    assert facts.episode_start == (None if episode_days is None else AS_OF - timedelta(days=episode_days))


def test_order_reason_alone_is_a_back_pain_episode_of_unknown_duration() -> None:
    facts = facts_of(order=fhir.mri_order(reasons=[fhir.coding("M54.50")]))
    assert facts.has(F.BACK_PAIN)
    assert facts.order.has_reason
    assert facts.episode_days is None


# Conservative care counts only during the current episode (here: back pain since 60 days ago).
@pytest.mark.parametrize(("care", "counts"), [
    pytest.param(fhir.procedure("97110", performed=ago(30)), True, id="pt-procedure-during-episode"),
    pytest.param(fhir.procedure("97110", performed=ago(60)), True, id="pt-procedure-on-first-day"),
    pytest.param(fhir.procedure("97110", performed=ago(90)), False, id="pt-procedure-before-episode"),
    pytest.param(fhir.procedure("97110", performed=ago(30), status="not-done"), False, id="pt-procedure-not-done"),
    pytest.param(fhir.procedure("97110", performed=ago(30), status="entered-in-error"), False, id="pt-procedure-entered-in-error"),
    pytest.param(fhir.procedure("98940", performed=ago(30)), True, id="chiropractic-during-episode"),
    pytest.param(with_system(fhir.procedure("97110", performed=ago(30)), CPT_OID), True, id="pt-procedure-cpt-oid"),
    pytest.param(fhir.medication("5640", "ibuprofen", authored=ago(40)), True, id="nsaid-order-during-episode"),
    pytest.param(fhir.medication("21949", "cyclobenzaprine", authored=ago(40)), True, id="muscle-relaxant-during-episode"),
    pytest.param(fhir.medication("5640", "ibuprofen", authored=ago(90)), False, id="nsaid-order-before-episode"),
    pytest.param(fhir.medication("5640", "ibuprofen", authored=ago(40), status="entered-in-error"), False, id="nsaid-order-entered-in-error"),
    pytest.param(pt_referral("active", ago(20)), True, id="pt-referral-placed-during-episode"),
    pytest.param(pt_referral("draft", ago(20)), False, id="pt-referral-still-draft"),
])
def test_conservative_care_during_the_episode(care: dict[str, Any], counts: bool) -> None:
    facts = facts_of(fhir.condition("M54.50", onset=ago(60)), care)
    assert facts.has(F.CONSERVATIVE_CARE) is counts


def test_conservative_care_needs_an_episode() -> None:
    facts = facts_of(fhir.procedure("97110", performed=ago(30)))
    assert not facts.has(F.CONSERVATIVE_CARE)


@pytest.mark.parametrize(("code", "system", "contrast"), [
    pytest.param("72148", fhir.CPT, model.Contrast.WITHOUT, id="cpt-72148"),
    pytest.param("72149", fhir.CPT, model.Contrast.WITH, id="cpt-72149"),
    pytest.param("72158", fhir.CPT, model.Contrast.WITHOUT_WITH, id="cpt-72158"),
    pytest.param("72158", CPT_OID, model.Contrast.WITHOUT_WITH, id="cpt-oid-72158"),
    pytest.param("24967-2", fhir.LOINC, model.Contrast.WITHOUT_WITH, id="loinc-without-and-with"),
])
def test_order_is_a_lumbar_mri(code: str, system: str, contrast: model.Contrast) -> None:
    facts = facts_of(order=fhir.mri_order(code, system=system))
    assert (facts.order.code, facts.order.contrast) == (code, contrast)


@pytest.mark.parametrize(("code", "system", "modality", "contrast", "column"), [
    pytest.param("72148", fhir.CPT, model.Modality.MRI, model.Contrast.WITHOUT, "mri-without", id="mri-72148"),
    pytest.param("24968-0", fhir.LOINC, model.Modality.MRI, model.Contrast.UNKNOWN, "mri-without", id="mri-contrast-unknown"),
    pytest.param("72131", fhir.CPT, model.Modality.CT, model.Contrast.WITHOUT, "ct-without", id="ct-72131"),
    pytest.param("72132", CPT_OID, model.Modality.CT, model.Contrast.WITH, "ct-with", id="ct-72132-oid"),
    pytest.param("36402-6", fhir.LOINC, model.Modality.CT, model.Contrast.WITHOUT_WITH, "ct-without-with", id="ct-loinc"),
    pytest.param("90523008", fhir.SNOMED, model.Modality.CT, model.Contrast.WITH, "ct-with", id="ct-snomed"),
    pytest.param("72100", fhir.CPT, model.Modality.XR, model.Contrast.UNKNOWN, "xr", id="xr-72100"),
    pytest.param("72120", fhir.CPT, model.Modality.XR, model.Contrast.UNKNOWN, "xr", id="xr-72120"),
    pytest.param("36670-8", fhir.LOINC, model.Modality.XR, model.Contrast.UNKNOWN, "xr", id="xr-loinc"),
    pytest.param("840361000", fhir.SNOMED, model.Modality.XR, model.Contrast.UNKNOWN, "xr", id="xr-snomed"),
])
def test_the_ordered_study_is_read_once_from_the_draft(code: str, system: str, modality: model.Modality,
                                                       contrast: model.Contrast, column: str) -> None:
    study = extract.ordered_study(fhir.imaging_order(code, system=system), VS)
    assert study is not None
    assert (study.modality, study.contrast, study.region, study.code, study.column) == (modality, contrast, "lumbar", code, column)
    assert facts_of(order=fhir.imaging_order(code, system=system)).order.study == study


@pytest.mark.parametrize(("code", "system"), [
    pytest.param("72141", fhir.CPT, id="cervical-mri"),
    pytest.param("72125", fhir.CPT, id="cervical-ct"),
    pytest.param("72148", "http://example.org/local-codes", id="mri-code-in-unknown-system"),
])
def test_order_that_is_not_a_lumbar_study(code: str, system: str) -> None:
    assert extract.ordered_study(fhir.mri_order(code, system=system), VS) is None


def test_a_service_reviews_only_the_concepts_it_names() -> None:
    ct = fhir.imaging_order("72131")
    assert extract.ordered_study(ct, VS, ("order_mri_lumbar",)) is None
    assert extract.ordered_study(ct, VS, ("order_ct_lumbar",)) is not None


# -- v2: medications from MedicationRequest, MedicationStatement and MedicationDispense ------------

def statement(code: str, display: str, start: str, end: str | None = None, status: str = "active", system: str = fhir.RXNORM) -> dict[str, Any]:
    return fhir.medication_statement(code, display, start=start, end=end, status=status, system=system)


@pytest.mark.parametrize(("resources", "steroids"), [
    pytest.param([statement("8640", "prednisone", ago(120))], True, id="statement-open-ended-active-120-days"),
    pytest.param([statement("8640", "prednisone", ago(60))], False, id="statement-open-ended-active-60-days"),
    pytest.param([statement("8640", "prednisone", ago(120), status="completed")], False, id="statement-completed-without-end-is-one-day"),
    pytest.param([statement("8640", "prednisone", ago(200), end=ago(80), status="completed")], True, id="statement-period-120-days"),
    pytest.param([statement("8640", "prednisone", "2024-01-01")], True, id="statement-begun-before-the-window-counts-inside-it"),
    pytest.param([statement("8640", "prednisone", ago(500), end=ago(300), status="completed")], False, id="statement-ended-300-days-ago-65-days-inside"),
    pytest.param([statement("8640", "prednisone", ago(120), status="entered-in-error")], False, id="statement-entered-in-error"),
    pytest.param([statement("8640", "prednisone", ago(120), status="not-taken")], False, id="statement-not-taken"),
    pytest.param([statement("H02AB06", "prednisolone", ago(120), system="http://www.whocc.no/atc")], True, id="statement-atc-H02AB"),
    pytest.param([fhir.medication_dispense("8640", "prednisone", handed_over=ago(100), days_supply=90)], True, id="dispense-90-days-supply"),
    pytest.param([fhir.medication_dispense("8640", "prednisone", handed_over=ago(100))], False, id="dispense-without-supply-is-30-days"),
    pytest.param([statement("8640", "prednisone", ago(100)), prednisone(ago(300), 30)], True, id="statement-and-request-add-up"),
    pytest.param([{**prednisone(ago(200), 0), "dispenseRequest": {"validityPeriod": {"start": ago(200)}}}], True, id="request-open-validity-active-to-today"),
])
def test_glucocorticoid_days_v2(resources: list[dict[str, Any]], steroids: bool) -> None:
    assert facts_of(*resources).has(F.LONG_TERM_STEROIDS) is steroids


def test_contained_medication_is_read() -> None:
    med = statement("8640", "prednisone", ago(120))
    del med["medicationCodeableConcept"]
    med["contained"] = [{"resourceType": "Medication", "id": "m1", "code": {"coding": [fhir.coding("8640", "prednisone", fhir.RXNORM)]}}]
    med["medicationReference"] = {"reference": "#m1"}
    assert facts_of(med).has(F.LONG_TERM_STEROIDS)


# v2: conservative care within the 182 days before the order and after the episode start (here:
# back pain since 300 days ago).
@pytest.mark.parametrize(("care", "counts"), [
    pytest.param(fhir.procedure("97110", performed=ago(100)), True, id="pt-100-days-ago"),
    pytest.param(fhir.procedure("97110", performed=ago(182)), True, id="pt-182-days-ago"),
    pytest.param(fhir.procedure("97110", performed=ago(183)), False, id="pt-183-days-ago"),
    pytest.param(fhir.procedure("97110", performed="2025-03-01"), False, id="pt-from-an-earlier-year"),
    pytest.param(statement("5640", "ibuprofen", ago(250)), True, id="nsaid-statement-still-active"),
    pytest.param(statement("5640", "ibuprofen", ago(250), end=ago(200), status="completed"), False, id="nsaid-statement-ended-200-days-ago"),
    pytest.param(fhir.medication_dispense("21949", "cyclobenzaprine", handed_over=ago(30), days_supply=10), True, id="relaxant-dispense"),
])
def test_conservative_care_within_182_days(care: dict[str, Any], counts: bool) -> None:
    facts = facts_of(fhir.condition("M54.50", onset=ago(300)), care)
    assert facts.has(F.CONSERVATIVE_CARE) is counts


# v2: trauma energy from external cause codes, on the injury's encounter or as Conditions.
def on_encounter(condition: dict[str, Any], encounter: str) -> dict[str, Any]:
    condition["encounter"] = {"reference": f"Encounter/{encounter}"}
    return condition


@pytest.mark.parametrize(("resources", "high"), [
    pytest.param([fhir.condition("S32.010A", onset=ago(5)), fhir.condition("V43.52XA", onset=ago(5))], True, id="car-crash-condition"),
    pytest.param([fhir.condition("S30.0XXA", onset=ago(5)), fhir.condition("W13.9XXA", onset=ago(5))], True, id="fall-from-building"),
    pytest.param([fhir.condition("S30.0XXA", onset=ago(5)), fhir.condition("W01.0XXA", onset=ago(5))], False, id="slip-on-level-is-low-energy"),
    pytest.param([fhir.condition("S30.0XXA", onset=ago(5))], False, id="no-mechanism-coded"),
    pytest.param([on_encounter(fhir.condition("S30.0XXA", onset=ago(5)), "e1"), on_encounter(fhir.condition("V43.52XA"), "e1")], True, id="undated-cause-on-the-injury-encounter"),
    pytest.param([on_encounter(fhir.condition("S30.0XXA", onset=ago(5)), "e1"), on_encounter(fhir.condition("V43.52XA", onset=ago(400), clinical="resolved"), "e1")], True, id="cause-on-the-same-encounter"),
    pytest.param([fhir.condition("S30.0XXA", onset=ago(5)), fhir.condition("V43.52XA", onset=ago(400), clinical="resolved")], False, id="old-crash-elsewhere"),
])
def test_trauma_energy(resources: list[dict[str, Any]], high: bool) -> None:
    facts = facts_of(*resources)
    assert facts.has(F.RECENT_TRAUMA)
    assert facts.has(F.HIGH_ENERGY_TRAUMA) is high


@pytest.mark.parametrize(("age", "over_70", "over_50"), [
    pytest.param(71, True, True, id="71"),
    pytest.param(70, False, True, id="70"),
    pytest.param(51, False, True, id="51"),
    pytest.param(50, False, False, id="50"),
])
def test_age_findings(age: int, over_70: bool, over_50: bool) -> None:
    facts = facts_of(pat=fhir.patient(birth=born(age)))
    assert (facts.has(F.AGE_OVER_70), facts.has(F.AGE_OVER_50)) == (over_70, over_50)


def test_fusion_status_beside_a_lumbar_procedure_is_evidence_too() -> None:
    fusion = fhir.condition("Z98.1", onset="2020-01-01", cid="cond-fusion")
    facts = facts_of(fusion, fhir.procedure("22612", performed="2019-06-01"))
    assert "Condition/cond-fusion" in [e.reference for e in facts.findings[F.PRIOR_LUMBAR_SURGERY]]


def test_pain_over_one_month_between_28_and_41_days() -> None:
    assert facts_of(fhir.condition("M54.50", onset=ago(28))).has(F.PAIN_OVER_ONE_MONTH)
    assert not facts_of(fhir.condition("M54.50", onset=ago(27))).has(F.PAIN_OVER_ONE_MONTH)
    assert not facts_of(fhir.condition("M54.50", onset=ago(42))).has(F.PAIN_OVER_ONE_MONTH)


def test_official_display_on_evidence() -> None:
    facts = facts_of(fhir.condition("N39.0", onset=ago(10), display="uti"))
    assert facts.findings[F.RECENT_INFECTION][0].text == "N39.0 Urinary tract infection, site not specified"

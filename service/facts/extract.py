"""From FHIR JSON to the decision model: ``extract_patient`` once per call, ``facts_for_order`` per order.

Pure: no I/O, no clock (``today`` is an argument). Resources are read as raw JSON and selected by
code first; nothing here validates a whole resource (issue 2: validating every prefetched resource
costs ~27 ms). Every window and status rule below names its row of decision-rules.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from service.facts import model
from service.facts.codes import ValueSets
from service.facts.dates import age_on
from service.facts.dates import first_date
from service.facts.dates import parse_date
from service.intake.prefetch import PatientRecord

F = model.Finding

# JSON objects are dicts: with dict first, isinstance takes CPython's fast exact-type path (an ABC
# check such as isinstance(x, Mapping) alone costs several times more), and any other Mapping still
# counts as an object.
OBJECT = (dict, Mapping)
NO_CONCEPTS: tuple[frozenset[str], str] = (frozenset(), "")

# Condition statuses (decision-rules.md, "Common rules for every fact").
NOT_TRUE = frozenset({"refuted", "entered-in-error"})
HISTORY = frozenset({"inactive", "resolved", "remission"})
# Resource `status` codes, read straight from the JSON. Tuples, not sets: membership compares by
# equality, so a malformed status (an EHR's list or object, unhashable) matches nothing, as a code
# that is not a string must.
OBSERVATION_NOT_TRUE = ("entered-in-error", "cancelled")
PROCEDURE_NOT_DONE = ("entered-in-error", "not-done", "preparation")
ORDER_NOT_TRUE = ("entered-in-error", "revoked", "draft")
MEDICATION_NOT_TRUE = ("entered-in-error", "cancelled", "draft", "not-taken")
REPORT_NOT_TRUE = ("entered-in-error", "cancelled")


@dataclass(frozen=True, slots=True)
class ConditionRule:
    """How a condition concept becomes a finding."""

    concept: str          # value set in valuesets.json
    finding: model.Finding
    mode: str             # "active" | "ever" | "active-or-within" | "within" | "active-within"
    window_days: int = 0  # for the windowed modes


# decision-rules.md, "The facts the rules read", one line per row.
CONDITION_RULES: tuple[ConditionRule, ...] = (
    ConditionRule("low_back_pain", F.BACK_PAIN, "active"),
    ConditionRule("radiculopathy_stenosis", F.BACK_PAIN, "active"),
    ConditionRule("radiculopathy_stenosis", F.RADICULOPATHY, "active"),
    # "new" urinary retention / fecal incontinence: project choice of 30 days (CES evolves over hours
    # to days; a retention coded months ago is not new). Undated active findings count.
    ConditionRule("cauda_equina", F.CAUDA_EQUINA, "within", 30),
    ConditionRule("motor_deficit", F.MOTOR_DEFICIT, "active"),
    ConditionRule("malignancy", F.MALIGNANCY, "ever"),                        # history counts at any time
    ConditionRule("spinal_infection", F.SPINAL_INFECTION, "active-or-within", 365),
    ConditionRule("fever", F.FEVER, "within", 14),
    ConditionRule("iv_drug_use", F.INFECTION_RISK, "active-or-within", 365),
    ConditionRule("systemic_infection", F.INFECTION_RISK, "active-or-within", 90),
    ConditionRule("immunosuppression", F.IMMUNOSUPPRESSION, "active"),
    ConditionRule("osteoporosis", F.OSTEOPOROSIS, "ever"),
    ConditionRule("long_term_steroids", F.LONG_TERM_STEROIDS, "active"),
    ConditionRule("vertebral_fracture", F.VERTEBRAL_FRACTURE, "active"),
    ConditionRule("trauma", F.RECENT_TRAUMA, "within", 90),
    ConditionRule("prior_lumbar_surgery", F.PRIOR_LUMBAR_SURGERY, "ever"),
    # Pregnancy: active only; project choice: an active pregnancy coded more than 300 days ago
    # (beyond 42 weeks) is a stale problem-list entry.
    ConditionRule("pregnancy", F.PREGNANCY, "active-within", 300),
)

# Immunosuppression whose history counts (decision-rules.md: transplant, HIV): ICD-10 prefixes.
IMMUNOSUPPRESSION_HISTORY_PREFIXES = ("B20", "Z21", "Z94")

FEVER_CELSIUS = 38.0              # decision-rules.md "fever": >= 38.0 °C within 14 days
FEVER_DAYS = 14
PRIOR_MRI_DAYS = 365              # decision-rules.md "prior lumbar MRI": last 365 days
STEROID_DAYS = 90                 # ">= 90 days of glucocorticoid orders in the last year"
STEROID_LOOKBACK_DAYS = 365
PREGNANCY_OBSERVATION_DAYS = 300  # project choice, as for pregnancy conditions


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientFacts:
    """The order-independent part of the facts, extracted once per hook call."""

    today: date
    age: int | None
    sex: str | None
    findings: dict[model.Finding, tuple[model.Evidence, ...]]
    episode_dates: tuple[date, ...]                      # dates of active back-pain conditions
    conservative: tuple[model.Evidence, ...]             # PT / chiropractic / NSAID / relaxant, dated
    unavailable: tuple[str, ...]


def extract_patient(record: PatientRecord, vs: ValueSets, today: date) -> PatientFacts:
    """Read the patient's record once into findings."""
    found: dict[model.Finding, list[model.Evidence]] = {}
    episode_dates: list[date] = []
    for condition in record.of("Condition"):
        _read_condition(condition, vs, today, found, episode_dates)
    _read_observations(record.of("Observation"), vs, today, found)
    conservative = _read_procedures_and_orders(record, vs, today, found)
    conservative += _read_medications(record.of("MedicationRequest", "MedicationStatement"), vs, today, found)
    _read_imaging(record, vs, today, found)
    age, sex = _demographics(record.patient, today)
    return PatientFacts(
        today=today,
        age=age,
        sex=sex,
        findings={k: tuple(v) for k, v in found.items()},
        episode_dates=tuple(episode_dates),
        conservative=tuple(conservative),
        unavailable=record.unavailable,
    )


def _demographics(patient: Mapping[str, Any] | None, today: date) -> tuple[int | None, str | None]:
    if patient is None:
        return None, None
    birth = parse_date(patient.get("birthDate"))
    gender = patient.get("gender")
    return (age_on(birth, today) if birth else None), (gender if isinstance(gender, str) else None)


def _status(resource: Mapping[str, Any], field: str) -> str | None:
    """The code of a CodeableConcept status (Condition.clinicalStatus, verificationStatus)."""
    for coding in _codings(resource.get(field)):
        code = coding.get("code")
        if isinstance(code, str):
            return code
    return None


def _codings(codeable: Any) -> list[Mapping[str, Any]]:
    """The objects among a CodeableConcept's codings; a malformed CodeableConcept has none."""
    codings = codeable.get("coding") if isinstance(codeable, OBJECT) else None
    if not isinstance(codings, list):
        return []
    return [c for c in codings if isinstance(c, OBJECT)]


def concepts_of(codeable: Any, vs: ValueSets) -> tuple[frozenset[str], str]:
    """The value-set concepts of a CodeableConcept, and a short text naming the matching coding."""
    # On every resource of the record: one loop, no intermediate list (most codeables match nothing).
    codings = codeable.get("coding") if isinstance(codeable, OBJECT) else None
    if not isinstance(codings, list):
        return NO_CONCEPTS
    concepts: frozenset[str] = frozenset()
    text = ""
    for coding in codings:
        if not isinstance(coding, OBJECT):
            continue
        code = coding.get("code")
        got = vs.concepts(coding.get("system"), code)  # empty unless both are strings
        if not got:
            continue
        if concepts:
            concepts |= got
            continue
        concepts = got  # the first matching coding names the match
        display = coding.get("display")
        text = f"{code} {display}" if isinstance(display, str) else code
    return concepts, text


def _reference(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id', '?')}"


def _add(found: dict[model.Finding, list[model.Evidence]], finding: model.Finding, evidence: model.Evidence) -> None:
    items = found.setdefault(finding, [])
    if evidence not in items:  # a code in two value sets of one finding is still one piece of evidence
        items.append(evidence)


def _read_condition(
    condition: Mapping[str, Any],
    vs: ValueSets,
    today: date,
    found: dict[model.Finding, list[model.Evidence]],
    episode_dates: list[date],
) -> None:
    concepts, text = concepts_of(condition.get("code"), vs)
    if not concepts or _status(condition, "verificationStatus") in NOT_TRUE:
        return
    history = _status(condition, "clinicalStatus") in HISTORY
    onset = first_date(condition, "onsetDateTime", "onsetPeriod", "recordedDate")
    # For windows, the latest thing we know: when it ended, else when it began.
    latest = first_date(condition, "abatementDateTime", "abatementPeriod") or onset
    evidence = model.Evidence(reference=_reference(condition), on=onset, text=text)
    for rule in CONDITION_RULES:
        if rule.concept in concepts and _counts(rule, history, latest, today, condition, text):
            _add(found, rule.finding, evidence)
            if rule.finding is F.BACK_PAIN and onset is not None:
                episode_dates.append(onset)


def _counts(rule: ConditionRule, history: bool, on: date | None, today: date, condition: Mapping[str, Any], text: str) -> bool:
    within = on is not None and (today - on).days <= rule.window_days
    match rule.mode:
        case "active":
            if rule.finding is F.IMMUNOSUPPRESSION and history:
                return text.replace(".", "").upper().startswith(IMMUNOSUPPRESSION_HISTORY_PREFIXES)
            return not history
        case "ever":
            return True
        case "active-or-within":
            return not history or within
        case "within":
            return within or (not history and on is None)
        case "active-within":
            return not history and (on is None or within)
    return False


def _read_observations(
    observations: Iterable[Mapping[str, Any]],
    vs: ValueSets,
    today: date,
    found: dict[model.Finding, list[model.Evidence]],
) -> None:
    latest_pregnancy: tuple[date, Mapping[str, Any]] | None = None
    for obs in observations:
        if obs.get("status") in OBSERVATION_NOT_TRUE:
            continue
        concepts, _ = concepts_of(obs.get("code"), vs)
        if not concepts:
            continue
        on = first_date(obs, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
        if on is None or on > today:
            continue
        if "body_temperature" in concepts and (today - on).days <= FEVER_DAYS:
            celsius = _celsius(obs.get("valueQuantity"))
            if celsius is not None and celsius >= FEVER_CELSIUS:
                _add(found, F.FEVER, model.Evidence(reference=_reference(obs), on=on, text=f"body temperature {celsius:.1f} °C"))
        if "pregnancy_status_observation" in concepts and (latest_pregnancy is None or on > latest_pregnancy[0]):
            latest_pregnancy = (on, obs)
    # The most recent pregnancy status decides (a later "not pregnant" supersedes).
    if latest_pregnancy is not None:
        on, obs = latest_pregnancy
        value_concepts, text = concepts_of(obs.get("valueCodeableConcept"), vs)
        if "pregnant_value" in value_concepts and (today - on).days <= PREGNANCY_OBSERVATION_DAYS:
            _add(found, F.PREGNANCY, model.Evidence(reference=_reference(obs), on=on, text=f"pregnancy status: {text}"))


def _celsius(quantity: Any) -> float | None:
    """°C from a Quantity in Cel or [degF]; a temperature in an unknown unit is not read (None)."""
    if not isinstance(quantity, OBJECT):
        return None
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    unit = str(quantity.get("code") or quantity.get("unit") or "").strip()
    if unit in ("Cel", "°C", "C", "degC", "Celsius"):
        return float(value)
    if unit in ("[degF]", "°F", "F", "degF", "Fahrenheit"):
        return (float(value) - 32.0) * 5.0 / 9.0
    return None


def _read_procedures_and_orders(
    record: PatientRecord,
    vs: ValueSets,
    today: date,
    found: dict[model.Finding, list[model.Evidence]],
) -> list[model.Evidence]:
    conservative: list[model.Evidence] = []
    for proc in record.of("Procedure"):
        if proc.get("status") in PROCEDURE_NOT_DONE:
            continue
        concepts, text = concepts_of(proc.get("code"), vs)
        if not concepts:
            continue
        on = first_date(proc, "performedDateTime", "performedPeriod")
        evidence = model.Evidence(reference=_reference(proc), on=on, text=text)
        if "prior_lumbar_surgery" in concepts:
            _add(found, F.PRIOR_LUMBAR_SURGERY, evidence)
        if "physical_therapy" in concepts and on is not None:
            conservative.append(evidence)
        if "order_mri_lumbar" in concepts and _recent(on, today, PRIOR_MRI_DAYS):
            _add(found, F.PRIOR_LUMBAR_MRI, evidence)
    for order in record.of("ServiceRequest"):
        # Referrals placed (not drafts): a PT referral documents a conservative trial.
        if order.get("status") in ORDER_NOT_TRUE:
            continue
        concepts, text = concepts_of(order.get("code"), vs)
        on = first_date(order, "occurrenceDateTime", "occurrencePeriod", "authoredOn")
        if "physical_therapy" in concepts and on is not None:
            conservative.append(model.Evidence(reference=_reference(order), on=on, text=text))
    return conservative


def _read_medications(
    medications: Iterable[Mapping[str, Any]],
    vs: ValueSets,
    today: date,
    found: dict[model.Finding, list[model.Evidence]],
) -> list[model.Evidence]:
    conservative: list[model.Evidence] = []
    steroid_days = 0
    steroid_evidence: list[model.Evidence] = []
    for med in medications:
        if med.get("status") in MEDICATION_NOT_TRUE:
            continue
        concepts, text = concepts_of(med.get("medicationCodeableConcept"), vs)
        if not concepts:
            continue
        on = first_date(med, "authoredOn", "effectiveDateTime", "effectivePeriod", "dateAsserted")
        if on is None:
            continue
        evidence = model.Evidence(reference=_reference(med), on=on, text=text)
        if "conservative_medication" in concepts:
            conservative.append(evidence)
        if "glucocorticoid_medication" in concepts and _recent(on, today, STEROID_LOOKBACK_DAYS):
            steroid_days += _supply_days(med)
            steroid_evidence.append(evidence)
    if steroid_days >= STEROID_DAYS:
        found.setdefault(F.LONG_TERM_STEROIDS, []).extend(steroid_evidence)
    return conservative


_DAYS_PER_UNIT = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30, "months": 30}


def _supply_days(med: Mapping[str, Any]) -> int:
    """Days of supply an order or statement covers (expected supply × fills, or its period)."""
    dispense = med.get("dispenseRequest")
    if isinstance(dispense, OBJECT):
        supply = dispense.get("expectedSupplyDuration")
        if isinstance(supply, OBJECT) and isinstance(supply.get("value"), (int, float)):
            per = _DAYS_PER_UNIT.get(str(supply.get("code") or supply.get("unit") or "d"), 0)
            repeats = dispense.get("numberOfRepeatsAllowed")
            fills = 1 + (repeats if isinstance(repeats, int) and repeats > 0 else 0)
            return int(supply["value"] * per * fills)
    for name in ("effectivePeriod", "validityPeriod"):
        period = med.get(name) or (dispense.get(name) if isinstance(dispense, OBJECT) else None)
        if isinstance(period, OBJECT):
            start, end = parse_date(period.get("start")), parse_date(period.get("end"))
            if start and end and end >= start:
                return (end - start).days
    return 0


def _read_imaging(record: PatientRecord, vs: ValueSets, today: date, found: dict[model.Finding, list[model.Evidence]]) -> None:
    for study in record.of("ImagingStudy"):
        if study.get("status") in REPORT_NOT_TRUE:
            continue
        on = first_date(study, "started")
        codeables = study.get("procedureCode")
        for codeable in codeables if isinstance(codeables, list) else ():
            concepts, text = concepts_of(codeable, vs)
            if "order_mri_lumbar" in concepts and _recent(on, today, PRIOR_MRI_DAYS):
                _add(found, F.PRIOR_LUMBAR_MRI, model.Evidence(reference=_reference(study), on=on, text=text))
                break
    for report in record.of("DiagnosticReport"):
        if report.get("status") in REPORT_NOT_TRUE:
            continue
        concepts, text = concepts_of(report.get("code"), vs)
        on = first_date(report, "effectiveDateTime", "effectivePeriod", "issued")
        if "order_mri_lumbar" in concepts and _recent(on, today, PRIOR_MRI_DAYS):
            _add(found, F.PRIOR_LUMBAR_MRI, model.Evidence(reference=_reference(report), on=on, text=text))


def _recent(on: date | None, today: date, days: int) -> bool:
    return on is not None and on <= today and (today - on).days <= days


def lumbar_mri(order: Mapping[str, Any], vs: ValueSets) -> tuple[str, str, str | None, model.Contrast] | None:
    """(system, code, display, contrast) when this ServiceRequest orders a lumbar spine MRI."""
    if order.get("resourceType") != "ServiceRequest":
        return None
    for coding in _codings(order.get("code")):
        system, code = coding.get("system"), coding.get("code")
        if isinstance(system, str) and isinstance(code, str) and "order_mri_lumbar" in vs.concepts(system, code):
            contrast = vs.contrast(system, code) or "unknown"
            display = coding.get("display")
            return system, code, display if isinstance(display, str) else None, model.Contrast(contrast)
    return None


def facts_for_order(patient: PatientFacts, order: Mapping[str, Any], vs: ValueSets) -> model.Facts | None:
    """The facts for one lumbar MRI order: the patient's findings plus the order's own reasons."""
    mri = lumbar_mri(order, vs)
    if mri is None:
        return None
    system, code, display, contrast = mri
    found = {k: list(v) for k, v in patient.findings.items()}
    episode_dates = list(patient.episode_dates)
    has_reason = _read_order_reasons(order, vs, patient.today, found)
    start = min(episode_dates) if episode_dates else None
    episode_days = max(0, (patient.today - start).days) if start else None
    if start is not None:
        # Conservative management counts only during the current episode (decision-rules.md).
        during = [e for e in patient.conservative if e.on is not None and start <= e.on <= patient.today]
        if during:
            found[F.CONSERVATIVE_CARE] = during
    if F.RECENT_TRAUMA in found and _older(patient):
        found[F.OLDER_AGE] = [model.Evidence(reference="Patient", on=None, text=f"age {patient.age}")]
    priority = order.get("priority")
    return model.Facts(
        today=patient.today,
        age=patient.age,
        sex=patient.sex,
        order=model.Order(
            reference=_reference(order),
            resource=order,
            system=system,
            code=code,
            display=display,
            contrast=contrast,
            priority=priority if isinstance(priority, str) else None,
            has_reason=has_reason,
        ),
        findings={k: tuple(v) for k, v in found.items()},
        episode_start=start,
        episode_days=episode_days,
        unavailable=patient.unavailable,
    )


def _read_order_reasons(order: Mapping[str, Any], vs: ValueSets, today: date, found: dict[model.Finding, list[model.Evidence]]) -> bool:
    """Add the findings the order's reasonCode names; True when the order gives any reason."""
    codes = order.get("reasonCode")
    references = order.get("reasonReference")
    has_reason = bool(isinstance(references, list) and references)
    for codeable in codes if isinstance(codes, list) else ():
        if any(isinstance(c.get("code"), str) for c in _codings(codeable)):
            has_reason = True
        concepts, text = concepts_of(codeable, vs)
        evidence = model.Evidence(reference=_reference(order), on=None, text=f"order reason {text}")
        # A reason on the order is current by definition; it carries no date, so the episode's
        # duration stays unknown unless a dated condition gives it (decision-rules.md).
        for rule in CONDITION_RULES:
            if rule.concept in concepts:
                _add(found, rule.finding, evidence)
    return has_reason


def _older(patient: PatientFacts) -> bool:
    """ACP-2011 fracture-risk age: > 65 for men, > 75 for women; > 65 when sex is unknown."""
    if patient.age is None:
        return False
    return patient.age > (75 if patient.sex == "female" else 65)

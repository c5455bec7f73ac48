"""From FHIR JSON to the decision model: ``extract_patient`` once per call, ``facts_for_order`` per order.

Pure: no I/O, no clock (``today`` is an argument). Resources are read as raw JSON and selected by
code first; nothing here validates a whole resource (issue 2: validating every prefetched resource
costs ~27 ms). Every window and status rule below names its row of decision-rules.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import date
from datetime import timedelta
from typing import Any

from service.facts import medication_use
from service.facts import model
from service.facts.codes import ValueSets
from service.facts.dates import age_on
from service.facts.dates import first_date
from service.facts.dates import parse_date
from service.intake.prefetch import PatientRecord

F = model.Finding
M = model.Modality

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
REPORT_NOT_TRUE = ("entered-in-error", "cancelled")


class Days:
    """Every window of decision-rules.md, defined once (issue 16): the row each one belongs to."""

    CAUDA_EQUINA = 30          # project choice: "new" retention / incontinence (README "Choices made")
    SPINAL_INFECTION = 365     # "spinal infection": active, or within 365 days
    FEVER = 14                 # "fever": R50.x or >= 38.0 °C within 14 days
    IV_DRUG_USE = 365          # "infection risk": injection drug use, active or within 365 days
    RECENT_INFECTION = 90      # "infection risk": recent infection within 90 days
    WEIGHT_LOSS = 90           # "unexplained weight loss": within 90 days
    TRAUMA = 90                # "recent trauma" (and its external cause): within 90 days
    PREGNANCY = 300            # project choice: an active pregnancy coded > 42 weeks ago is stale
    PRIOR_IMAGING = 365        # "prior lumbar imaging": last 365 days
    STEROID_LOOKBACK = 365     # "fracture risk": >= 90 days of glucocorticoid exposure in the last 365
    STEROID_EXPOSURE = 90
    CONSERVATIVE = 182         # "conservative management": within the 182 days before the order
    ONE_MONTH = 28             # ACP-2011 "failure to improve after 1 month" (README "Choices made")
    SIX_WEEKS = 42             # rules 6-8: six weeks separates acute from persistent pain


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
    # "new" urinary retention / fecal incontinence: CES evolves over hours to days; a retention coded
    # months ago is not new. Undated active findings count.
    ConditionRule("cauda_equina", F.CAUDA_EQUINA, "within", Days.CAUDA_EQUINA),
    ConditionRule("motor_deficit", F.MOTOR_DEFICIT, "active"),
    ConditionRule("malignancy", F.MALIGNANCY, "ever"),                        # history counts at any time
    ConditionRule("spinal_infection", F.SPINAL_INFECTION, "active-or-within", Days.SPINAL_INFECTION),
    ConditionRule("fever", F.FEVER, "within", Days.FEVER),
    ConditionRule("iv_drug_use", F.IV_DRUG_USE, "active-or-within", Days.IV_DRUG_USE),
    # v2: `recent_infection` (the widened list) is read; the v1 `systemic_infection` is not.
    # Active or resolved, as long as its onset or abatement falls within the 90 days.
    ConditionRule("recent_infection", F.RECENT_INFECTION, "within", Days.RECENT_INFECTION),
    ConditionRule("immunosuppression", F.IMMUNOSUPPRESSION, "active"),
    ConditionRule("weight_loss", F.WEIGHT_LOSS, "within", Days.WEIGHT_LOSS),
    ConditionRule("ankylosing_spondylitis", F.ANKYLOSING_SPONDYLITIS, "ever"),
    ConditionRule("osteoporosis", F.OSTEOPOROSIS, "ever"),
    ConditionRule("long_term_steroids", F.LONG_TERM_STEROIDS, "active"),
    ConditionRule("vertebral_fracture", F.VERTEBRAL_FRACTURE, "active"),
    ConditionRule("trauma", F.RECENT_TRAUMA, "within", Days.TRAUMA),
    ConditionRule("high_energy_mechanism", F.HIGH_ENERGY_TRAUMA, "within", Days.TRAUMA),
    ConditionRule("prior_lumbar_surgery", F.PRIOR_LUMBAR_SURGERY, "ever"),
    ConditionRule("pregnancy", F.PREGNANCY, "active-within", Days.PREGNANCY),
)
# Z98.1 / M96.0 (`fusion_status`) count as prior lumbar surgery only when the record places them in the
# lumbar spine: a lumbar `bodySite`, or another lumbar surgery finding (a lumbar Procedure, M96.1).
FUSION = "fusion_status"
LUMBAR_BODY_SITE = "lumbar_body_site"
# Conservative management by medication: the v2 lists, and the v1 union kept for older files.
CONSERVATIVE_MEDICATIONS = frozenset({"nsaid_medication", "muscle_relaxant_medication", "conservative_medication"})
GLUCOCORTICOIDS = "glucocorticoid_medication"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# Which concept makes a prior study of which modality (decision-rules.md "prior lumbar imaging").
STUDY_CONCEPTS: dict[str, model.Modality] = {"order_mri_lumbar": M.MRI, "order_ct_lumbar": M.CT, "order_xray_lumbar": M.XR}
# The orders reviewed: every lumbar study (v2 change 6). cards/services.toml names, per service, which
# of these concepts it reviews; this is the default when a caller gives none.
REVIEWED: tuple[str, ...] = tuple(STUDY_CONCEPTS)
REGION = "lumbar"                 # the body region of every concept above

# Immunosuppression whose history counts (decision-rules.md: transplant, HIV): ICD-10 prefixes.
IMMUNOSUPPRESSION_HISTORY_PREFIXES = ("B20", "Z21", "Z94")

FEVER_CELSIUS = 38.0              # decision-rules.md "fever": >= 38.0 °C within 14 days
AGE_FRACTURE_RISK = 70            # v2 rule 4: age over 70 (ACR V6 "elderly individual")
ONE_DAY = medication_use.ONE_DAY
AGE_CANCER_RISK = 50              # ACP-2011: age > 50 a weaker risk factor; weight loss counts at >= 50


@dataclass(frozen=True, slots=True)
class FactReads:
    """What one fact reads, for `lumbar-mri-cds rules` (a clinical reviewer's view of the model)."""

    finding: model.Finding
    resources: str             # e.g. "Condition", "Observation (body temperature)"
    concepts: tuple[str, ...]  # value-set concepts of valuesets.json
    window: str                # in words


def fact_reads() -> tuple[FactReads, ...]:
    """Every fact and what it is read from, in the order of decision-rules.md."""
    windows = {"active": "active", "ever": "active or history, at any time",
               "active-or-within": "active, or within {} days", "within": "within {} days (onset or abatement)",
               "active-within": "active, recorded within {} days"}
    reads = [FactReads(r.finding, "Condition (and the order's reasonCode)", (r.concept,), windows[r.mode].format(r.window_days))
             for r in CONDITION_RULES]
    reads += [
        FactReads(F.PRIOR_LUMBAR_SURGERY, "Condition with a lumbar bodySite, or beside a lumbar surgery", (FUSION, LUMBAR_BODY_SITE), "at any time"),
        FactReads(F.PRIOR_LUMBAR_SURGERY, "Procedure", ("prior_lumbar_surgery",), "at any time"),
        FactReads(F.FUSION_NOT_LOCATED, "Condition (fusion status the record does not place in the lumbar spine)", (FUSION,), "at any time"),
        FactReads(F.FEVER, "Observation (>= 38.0 °C; °F converted)", ("body_temperature",), f"within {Days.FEVER} days"),
        FactReads(F.LONG_TERM_STEROIDS, "MedicationRequest, MedicationStatement, MedicationDispense", (GLUCOCORTICOIDS,),
                  f">= {Days.STEROID_EXPOSURE} days of use within the last {Days.STEROID_LOOKBACK} days"),
        FactReads(F.HIGH_ENERGY_TRAUMA, "Condition on the injury's encounter", ("high_energy_mechanism",), "same encounter as the injury"),
        FactReads(F.CONSERVATIVE_CARE, "Procedure, ServiceRequest (not draft)", ("physical_therapy",),
                  f"within the {Days.CONSERVATIVE} days before the order and after the episode start"),
        FactReads(F.CONSERVATIVE_CARE, "MedicationRequest, MedicationStatement, MedicationDispense", tuple(sorted(CONSERVATIVE_MEDICATIONS)),
                  f"use within the {Days.CONSERVATIVE} days before the order and after the episode start"),
        FactReads(F.PREGNANCY, "Observation (pregnancy status = pregnant, the latest decides)", ("pregnancy_status_observation", "pregnant_value"),
                  f"within {Days.PREGNANCY} days"),
        FactReads(F.PRIOR_LUMBAR_IMAGING, "ImagingStudy, DiagnosticReport, Procedure of the ordered modality", tuple(STUDY_CONCEPTS),
                  f"within {Days.PRIOR_IMAGING} days"),
        FactReads(F.OLDER_AGE, "Patient.birthDate, gender", (), "age > 65 (men), > 75 (women), with recent trauma"),
        FactReads(F.AGE_OVER_70, "Patient.birthDate", (), f"age > {AGE_FRACTURE_RISK} on the day of the call"),
        FactReads(F.AGE_OVER_50, "Patient.birthDate", (), f"age > {AGE_CANCER_RISK} on the day of the call"),
        FactReads(F.PAIN_OVER_ONE_MONTH, "the back pain episode", (), f"{Days.ONE_MONTH} to {Days.SIX_WEEKS - 1} days"),
    ]
    order = {f: n for n, f in enumerate(model.Finding)}
    return tuple(sorted(reads, key=lambda r: order[r.finding]))


@dataclass(frozen=True, slots=True)
class Use:
    """A dated piece of evidence and the days it covers (a procedure: one day; a medication: its use)."""

    evidence: model.Evidence
    start: date
    end: date    # exclusive: the first day after the use


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientFacts:
    """The order-independent part of the facts, extracted once per hook call."""

    today: date
    age: int | None
    sex: str | None
    findings: dict[model.Finding, tuple[model.Evidence, ...]]
    episode_dates: tuple[date, ...]                      # dates of active back-pain conditions
    conservative: tuple[Use, ...]                        # PT / chiropractic / NSAID / relaxant, dated
    prior_studies: tuple[tuple[model.Modality, model.Evidence], ...] = ()  # lumbar studies in the window
    unavailable: tuple[str, ...]


def extract_patient(record: PatientRecord, vs: ValueSets, today: date) -> PatientFacts:
    """Read the patient's record once into findings."""
    found: dict[model.Finding, list[model.Evidence]] = {}
    episode_dates: list[date] = []
    context = _ConditionContext()
    for condition in record.of("Condition"):
        _read_condition(condition, vs, today, found, episode_dates, context)
    _read_observations(record.of("Observation"), vs, today, found)
    conservative, procedure_studies = _read_procedures_and_orders(record, vs, today, found)
    context.settle(found)  # after the Procedures: a lumbar procedure places a fusion status
    conservative += _read_medications(record.of("MedicationRequest", "MedicationStatement", "MedicationDispense"), vs, today, found)
    studies = _read_imaging(record, vs, today) + procedure_studies
    age, sex = _demographics(record.patient, today)
    _age_findings(record.patient, age, found)
    return PatientFacts(
        today=today,
        age=age,
        sex=sex,
        findings={k: tuple(v) for k, v in found.items()},
        episode_dates=tuple(episode_dates),
        conservative=tuple(conservative),
        prior_studies=tuple(studies),
        unavailable=record.unavailable,
    )


def _age_findings(patient: Mapping[str, Any] | None, age: int | None, found: dict[model.Finding, list[model.Evidence]]) -> None:
    """v2: age over 70 (fracture risk) and over 50 (a weaker cancer risk factor), from the birth date."""
    if age is None or patient is None:
        return
    evidence = model.Evidence(reference=_reference(patient), on=parse_date(patient.get("birthDate")), text=f"age {age}")
    if age > AGE_FRACTURE_RISK:
        found[F.AGE_OVER_70] = [evidence]
    if age > AGE_CANCER_RISK:
        found[F.AGE_OVER_50] = [evidence]


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
        display = vs.display(coding.get("system"), code) or coding.get("display")  # official display first
        text = f"{code} {display}" if isinstance(display, str) else code
    return concepts, text


def _reference(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id', '?')}"


def _add(found: dict[model.Finding, list[model.Evidence]], finding: model.Finding, evidence: model.Evidence) -> None:
    items = found.setdefault(finding, [])
    if evidence not in items:  # a code in two value sets of one finding is still one piece of evidence
        items.append(evidence)


class _ConditionContext:
    """What one Condition says about another: fusion status and the external cause of an injury."""

    def __init__(self) -> None:
        self.fusion: list[model.Evidence] = []              # Z98.1 / M96.0 not placed by their bodySite
        self.injury_encounters: set[str] = set()            # encounters of the injuries found
        self.mechanisms: list[tuple[str, model.Evidence]] = []  # (encounter, evidence) of high-energy causes

    def settle(self, found: dict[model.Finding, list[model.Evidence]]) -> None:
        """Fusion status beside another lumbar surgery finding; a cause on an injury's encounter."""
        for evidence in self.fusion:
            # Beside another lumbar surgery finding it is lumbar; otherwise it is shown, not counted.
            _add(found, F.PRIOR_LUMBAR_SURGERY if F.PRIOR_LUMBAR_SURGERY in found else F.FUSION_NOT_LOCATED, evidence)
        for encounter, evidence in self.mechanisms:
            if encounter in self.injury_encounters:
                _add(found, F.HIGH_ENERGY_TRAUMA, evidence)


def _read_condition(
    condition: Mapping[str, Any],
    vs: ValueSets,
    today: date,
    found: dict[model.Finding, list[model.Evidence]],
    episode_dates: list[date],
    context: _ConditionContext,
) -> None:
    concepts, text = concepts_of(condition.get("code"), vs)
    if not concepts or _status(condition, "verificationStatus") in NOT_TRUE:
        return
    history = _status(condition, "clinicalStatus") in HISTORY
    onset = first_date(condition, "onsetDateTime", "onsetPeriod", "recordedDate")
    # For windows, the latest thing we know: when it ended, else when it began.
    latest = first_date(condition, "abatementDateTime", "abatementPeriod") or onset
    evidence = model.Evidence(reference=_reference(condition), on=onset, text=text)
    fusion = FUSION in concepts
    if fusion:
        if _lumbar_site(condition, vs):
            _add(found, F.PRIOR_LUMBAR_SURGERY, evidence)
        else:
            context.fusion.append(evidence)
    encounter = _encounter(condition)
    for rule in CONDITION_RULES:
        if rule.concept not in concepts:
            continue
        if fusion and rule.finding is F.PRIOR_LUMBAR_SURGERY:
            continue  # placed above, or only beside another lumbar surgery finding
        if rule.finding is F.HIGH_ENERGY_TRAUMA and encounter is not None:
            context.mechanisms.append((encounter, evidence))
        if _counts(rule, history, latest, today, condition, text):
            _add(found, rule.finding, evidence)
            if rule.finding is F.BACK_PAIN and onset is not None:
                episode_dates.append(onset)
            if rule.finding is F.RECENT_TRAUMA and encounter is not None:
                context.injury_encounters.add(encounter)


def _lumbar_site(resource: Mapping[str, Any], vs: ValueSets) -> bool:
    """Whether any bodySite of the resource is a lumbar spine structure (`lumbar_body_site`)."""
    sites = resource.get("bodySite")
    return any(LUMBAR_BODY_SITE in concepts_of(site, vs)[0] for site in (sites if isinstance(sites, list) else ()))


def _encounter(resource: Mapping[str, Any]) -> str | None:
    encounter = resource.get("encounter")
    reference = encounter.get("reference") if isinstance(encounter, OBJECT) else None
    return reference if isinstance(reference, str) and reference else None


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
        if "body_temperature" in concepts and (today - on).days <= Days.FEVER:
            celsius = _celsius(obs.get("valueQuantity"))
            if celsius is not None and celsius >= FEVER_CELSIUS:
                _add(found, F.FEVER, model.Evidence(reference=_reference(obs), on=on, text=f"body temperature {celsius:.1f} °C"))
        if "pregnancy_status_observation" in concepts and (latest_pregnancy is None or on > latest_pregnancy[0]):
            latest_pregnancy = (on, obs)
    # The most recent pregnancy status decides (a later "not pregnant" supersedes).
    if latest_pregnancy is not None:
        on, obs = latest_pregnancy
        value_concepts, text = concepts_of(obs.get("valueCodeableConcept"), vs)
        if "pregnant_value" in value_concepts and (today - on).days <= Days.PREGNANCY:
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
) -> tuple[list[Use], list[tuple[model.Modality, model.Evidence]]]:
    """Conservative care (PT procedures and referrals), prior lumbar surgery, and the lumbar studies
    among the Procedures (``_read_imaging`` reads the other resource types)."""
    conservative: list[Use] = []
    studies: list[tuple[model.Modality, model.Evidence]] = []
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
        modality = _prior_study(concepts, on, today)
        if modality is not None:
            studies.append((modality, evidence))
        if "physical_therapy" in concepts and on is not None:
            period = proc.get("performedPeriod")
            end = parse_date(period.get("end")) if isinstance(period, OBJECT) else None
            conservative.append(Use(evidence, on, (end if end and end >= on else on) + ONE_DAY))
    for order in record.of("ServiceRequest"):
        # Referrals placed (not drafts): a PT referral documents a conservative trial.
        if order.get("status") in ORDER_NOT_TRUE:
            continue
        concepts, text = concepts_of(order.get("code"), vs)
        on = first_date(order, "occurrenceDateTime", "occurrencePeriod", "authoredOn")
        if "physical_therapy" in concepts and on is not None:
            conservative.append(Use(model.Evidence(reference=_reference(order), on=on, text=text), on, on + ONE_DAY))
    return conservative, studies


def _read_medications(
    medications: Iterable[Mapping[str, Any]],
    vs: ValueSets,
    today: date,
    found: dict[model.Finding, list[model.Evidence]],
) -> list[Use]:
    """NSAIDs and muscle relaxants (conservative care) and glucocorticoid days (fracture risk).

    MedicationRequest, MedicationStatement and MedicationDispense alike (decision-rules.md v2): each
    gives a period of use (``medication_use.use_period``); days of glucocorticoid use are counted inside the 365-day window,
    so use that began before it counts for its days inside it.
    """
    conservative: list[Use] = []
    steroid_days = 0
    steroid_evidence: list[model.Evidence] = []
    window_start = today - timedelta(days=Days.STEROID_LOOKBACK)
    for med in medications:
        if med.get("status") in medication_use.NOT_TAKEN:
            continue
        codeable = medication_use.medication_code(med)
        concepts, text = concepts_of(codeable, vs)
        if not concepts:
            continue
        use = medication_use.use_period(med, today)
        if use is None:
            continue
        start, end = use
        evidence = model.Evidence(reference=_reference(med), on=start, text=_medication_text(codeable, text, vs))
        if not CONSERVATIVE_MEDICATIONS.isdisjoint(concepts):
            conservative.append(Use(evidence, start, end))
        if GLUCOCORTICOIDS in concepts:
            days = (min(end, today) - max(start, window_start)).days
            if days > 0:
                steroid_days += days
                steroid_evidence.append(evidence)
    if steroid_days >= Days.STEROID_EXPOSURE:
        for evidence in steroid_evidence:
            _add(found, F.LONG_TERM_STEROIDS, evidence)
    return conservative


def _medication_text(codeable: Any, text: str, vs: ValueSets) -> str:
    """The matching coding of the medication's code, with its ingredient when it is a product-level
    RxNorm code the record does not already name by ingredient ("312617 predniSONE 20 MG Oral Tablet"
    stays as it is)."""
    for coding in _codings(codeable):
        if coding.get("system") != RXNORM:
            continue
        got = vs.ingredient(RXNORM, coding.get("code"))
        if got and got[0] != coding.get("code") and got[1].lower() not in text.lower():
            return f"{text} (ingredient: {got[1]})"
    return text


def _read_imaging(record: PatientRecord, vs: ValueSets, today: date) -> list[tuple[model.Modality, model.Evidence]]:
    """Lumbar studies of each modality in the last 365 days in ImagingStudy and DiagnosticReport
    (those among the Procedures are read with them, ``_read_procedures_and_orders``)."""
    studies: list[tuple[model.Modality, model.Evidence]] = []

    def add(resource: Mapping[str, Any], codeable: Any, on: date | None) -> bool:
        concepts, text = concepts_of(codeable, vs)
        modality = _prior_study(concepts, on, today)
        if modality is not None:
            studies.append((modality, model.Evidence(reference=_reference(resource), on=on, text=text)))
        return modality is not None

    for study in record.of("ImagingStudy"):
        if study.get("status") in REPORT_NOT_TRUE:
            continue
        codeables = study.get("procedureCode")
        on = first_date(study, "started")
        for codeable in codeables if isinstance(codeables, list) else ():
            if add(study, codeable, on):
                break
    for report in record.of("DiagnosticReport"):
        if report.get("status") not in REPORT_NOT_TRUE:
            add(report, report.get("code"), first_date(report, "effectiveDateTime", "effectivePeriod", "issued"))
    return studies


def _prior_study(concepts: AbstractSet[str], on: date | None, today: date) -> model.Modality | None:
    """The modality of a lumbar study with these concepts, done on ``on``, when it counts as prior
    imaging (within Days.PRIOR_IMAGING)."""
    if not _recent(on, today, Days.PRIOR_IMAGING):
        return None
    return next((modality for concept, modality in STUDY_CONCEPTS.items() if concept in concepts), None)


def _recent(on: date | None, today: date, days: int) -> bool:
    return on is not None and on <= today and (today - on).days <= days


def ordered_study(order: Mapping[str, Any], vs: ValueSets, reviewed: tuple[str, ...] = REVIEWED) -> model.Study | None:
    """The study a ServiceRequest orders, when it is one of the ``reviewed`` value-set concepts."""
    if order.get("resourceType") != "ServiceRequest":
        return None
    for coding in _codings(order.get("code")):
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            continue
        concepts = vs.concepts(system, code)
        for concept in reviewed:
            if concept in concepts:
                contrast = vs.contrast(system, code) or "unknown"
                display = coding.get("display")
                return model.Study(modality=STUDY_CONCEPTS[concept], contrast=model.Contrast(contrast), region=REGION,
                                   system=system, code=code, display=display if isinstance(display, str) else None)
    return None


def facts_for_order(patient: PatientFacts, order: Mapping[str, Any], vs: ValueSets, study: model.Study | None = None) -> model.Facts | None:
    """The facts for one lumbar study order: the patient's findings plus the order's own reasons."""
    study = study or ordered_study(order, vs)
    if study is None:
        return None
    today = patient.today
    found = {k: list(v) for k, v in patient.findings.items()}
    episode_dates = list(patient.episode_dates)
    has_reason = _read_order_reasons(order, vs, found)
    start = min(episode_dates) if episode_dates else None
    episode_days = max(0, (today - start).days) if start else None
    if start is not None:
        # Conservative management counts during the current episode, within the 182 days before the
        # order (v2): therapy from an earlier year does not make a new flare "persistent".
        since = max(start, today - timedelta(days=Days.CONSERVATIVE))
        during = [u.evidence for u in patient.conservative if u.end > since and u.start <= today]
        if during:
            found[F.CONSERVATIVE_CARE] = during
    if episode_days is not None and Days.ONE_MONTH <= episode_days < Days.SIX_WEEKS:
        found[F.PAIN_OVER_ONE_MONTH] = [model.Evidence(reference="episode", on=start, text=f"back pain for {episode_days} days")]
    if F.RECENT_TRAUMA in found and _older(patient):
        found[F.OLDER_AGE] = [model.Evidence(reference="Patient", on=None, text=f"age {patient.age}")]
    prior = [e for m, e in patient.prior_studies if m is study.modality]
    if prior:
        found[F.PRIOR_LUMBAR_IMAGING] = prior
    priority = order.get("priority")
    return model.Facts(
        today=today,
        age=patient.age,
        sex=patient.sex,
        order=model.Order(
            reference=_reference(order),
            resource=order,
            study=study,
            priority=priority if isinstance(priority, str) else None,
            has_reason=has_reason,
        ),
        findings={k: tuple(v) for k, v in found.items()},
        episode_start=start,
        episode_days=episode_days,
        unavailable=patient.unavailable,
    )


def _read_order_reasons(order: Mapping[str, Any], vs: ValueSets, found: dict[model.Finding, list[model.Evidence]]) -> bool:
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
            if rule.concept in concepts and not (rule.finding is F.PRIOR_LUMBAR_SURGERY and FUSION in concepts):
                _add(found, rule.finding, evidence)
    return has_reason


def _older(patient: PatientFacts) -> bool:
    """ACP-2011 fracture-risk age: > 65 for men, > 75 for women; > 65 when sex is unknown."""
    if patient.age is None:
        return False
    return patient.age > (75 if patient.sex == "female" else 65)

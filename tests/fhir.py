"""Builders of FHIR R4 JSON and sandbox-shaped hook requests, for tests and fixtures/.

`condition("M54.50", onset="2026-11-01")` returns the same JSON an EHR sends; tests build variants
from these instead of hand-editing fixture files.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

from service.facts import model
from service.facts.dates import shift_dates

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
AS_OF = date(2026, 11, 26)  # the date the fixture files are written for (fixtures/README.md)

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def system_of(code: str) -> str:
    """Guess the code system of a code written the usual way (tests only)."""
    if re.fullmatch(r"\d{5}", code):
        return CPT
    if re.fullmatch(r"\d+-\d", code):
        return LOINC
    if re.fullmatch(r"\d{6,18}", code):
        return SNOMED
    return ICD10CM


def coding(code: str, display: str | None = None, system: str | None = None) -> dict[str, Any]:
    out = {"system": system or system_of(code), "code": code}
    if display:
        out["display"] = display
    return out


def patient(pid: str = "patient-1", *, birth: str = "1974-05-02", gender: str = "male") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender,
            "name": [{"family": "Testperson", "given": ["Pat"]}]}


def condition(code: str, *, onset: str | None = None, recorded: str | None = None, clinical: str | None = "active",
              verification: str | None = "confirmed", display: str | None = None, system: str | None = None,
              pid: str = "patient-1", abatement: str | None = None, cid: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Condition", "id": cid or _id("cond"),
                           "code": {"coding": [coding(code, display, system)]},
                           "subject": {"reference": f"Patient/{pid}"}}
    if clinical:
        out["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]}
    if verification:
        out["verificationStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    if onset:
        out["onsetDateTime"] = onset
    if recorded:
        out["recordedDate"] = recorded
    if abatement:
        out["abatementDateTime"] = abatement
    return out


def temperature(value: float, unit: str = "Cel", *, on: str, status: str = "final", pid: str = "patient-1") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": _id("obs"), "status": status,
            "code": {"coding": [coding("8310-5", "Body temperature")]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": on,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def observation(code: str, *, on: str, value: float = 1.0, pid: str = "patient-1") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": _id("obs"), "status": "final",
            "code": {"coding": [coding(code)]}, "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": on, "valueQuantity": {"value": value}}


def pregnancy_status(pregnant: bool, *, on: str, pid: str = "patient-1") -> dict[str, Any]:
    value = coding("77386006", "Pregnant") if pregnant else coding("60001007", "Not pregnant")
    return {"resourceType": "Observation", "id": _id("obs"), "status": "final",
            "code": {"coding": [coding("82810-3", "Pregnancy status")]}, "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": on, "valueCodeableConcept": {"coding": [value]}}


def procedure(code: str, *, performed: str, status: str = "completed", display: str | None = None, pid: str = "patient-1") -> dict[str, Any]:
    return {"resourceType": "Procedure", "id": _id("proc"), "status": status,
            "code": {"coding": [coding(code, display)]}, "subject": {"reference": f"Patient/{pid}"},
            "performedDateTime": performed}


def medication(rxnorm: str, display: str, *, authored: str, status: str = "active", supply_days: int | None = None,
               repeats: int = 0, pid: str = "patient-1") -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "MedicationRequest", "id": _id("med"), "status": status, "intent": "order",
                           "medicationCodeableConcept": {"coding": [coding(rxnorm, display, RXNORM)]},
                           "subject": {"reference": f"Patient/{pid}"}, "authoredOn": authored}
    if supply_days:
        out["dispenseRequest"] = {"numberOfRepeatsAllowed": repeats,
                                  "expectedSupplyDuration": {"value": supply_days, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}
    return out


def medication_statement(code: str, display: str, *, start: str, end: str | None = None, status: str = "active",
                         system: str = RXNORM, pid: str = "patient-1") -> dict[str, Any]:
    """A MedicationStatement: what the patient takes (an open period runs to today while active)."""
    period = {"start": start, **({"end": end} if end else {})}
    return {"resourceType": "MedicationStatement", "id": _id("medstmt"), "status": status,
            "medicationCodeableConcept": {"coding": [coding(code, display, system)]},
            "subject": {"reference": f"Patient/{pid}"}, "effectivePeriod": period}


def medication_dispense(code: str, display: str, *, handed_over: str, days_supply: int | None = None,
                        status: str = "completed", pid: str = "patient-1") -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "MedicationDispense", "id": _id("meddisp"), "status": status,
                           "medicationCodeableConcept": {"coding": [coding(code, display, RXNORM)]},
                           "subject": {"reference": f"Patient/{pid}"}, "whenHandedOver": handed_over}
    if days_supply:
        out["daysSupply"] = {"value": days_supply, "unit": "day", "system": "http://unitsofmeasure.org", "code": "d"}
    return out


def imaging_report(code: str = "72148", *, on: str, pid: str = "patient-1", display: str = "MRI lumbar spine") -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "id": _id("report"), "status": "final",
            "code": {"coding": [coding(code, display)]}, "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": on}


def study(code: str = "72148", contrast: model.Contrast = model.Contrast.WITHOUT, modality: model.Modality = model.Modality.MRI,
          system: str = CPT) -> model.Study:
    """The study value of a lumbar order (what facts.extract.ordered_study reads from the draft)."""
    return model.Study(modality=modality, contrast=contrast, region="lumbar", system=system, code=code, display=None)


def imaging_order(code: str, **kwargs: Any) -> dict[str, Any]:
    """A draft ServiceRequest for any lumbar study (MRI, CT or radiography), as the EHR sends it."""
    return mri_order(code, **kwargs)


def mri_order(code: str = "72148", *, reasons: list[dict[str, Any]] | None = None, oid: str = "example-request-id",
              priority: str | None = None, pid: str = "patient-1", display: str | None = None,
              system: str = CPT) -> dict[str, Any]:
    """A draft ServiceRequest as the sandbox's PAMA screen sends it."""
    out: dict[str, Any] = {"resourceType": "ServiceRequest", "id": oid, "status": "draft", "intent": "plan",
                           "code": {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]},
                           "subject": {"reference": f"Patient/{pid}"}}
    if reasons is not None:
        out["reasonCode"] = [{"coding": [r]} for r in reasons]
    if priority:
        out["priority"] = priority
    return out


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources]}


def hook_request(orders: list[dict[str, Any]], *, pat: dict[str, Any] | None = None, resources: list[dict[str, Any]] = (),
                 hook: str = "order-select", selections: list[str] | None = None) -> dict[str, Any]:
    """A whole order-select/order-sign request with every prefetch key satisfied."""
    pat = pat or patient()
    pid = pat["id"]
    by_key = {"conditions": "Condition", "observations": "Observation", "procedures": "Procedure",
              "medications": "MedicationRequest", "medicationStatements": "MedicationStatement",
              "medicationDispenses": "MedicationDispense", "serviceRequests": "ServiceRequest",
              "imagingStudies": "ImagingStudy", "diagnosticReports": "DiagnosticReport"}
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": pid,
                               "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": o} for o in orders]}}
    if hook == "order-select":
        context["selections"] = selections if selections is not None else [f"{o['resourceType']}/{o['id']}" for o in orders[:1]]
    prefetch: dict[str, Any] = {"patient": pat}
    for key, kind in by_key.items():
        prefetch[key] = searchset([r for r in resources if r["resourceType"] == kind])
    return {"hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "hook": hook,
            "fhirServer": "http://localhost:8080/fhir", "context": context, "prefetch": prefetch}


def load_request(name: str, *, shift_to: date | None = None) -> dict[str, Any]:
    """A fixture request; with shift_to, every date moved so that AS_OF becomes that day."""
    data = json.loads((FIXTURES / "requests" / f"{name}.json").read_text())
    return shift_dates(data, (shift_to - AS_OF).days) if shift_to else data

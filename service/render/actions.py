"""FHIR actions: the rating systemAction and the resources behind each suggestion.

Every resource returned is a complete R4 ServiceRequest checked with fhir.resources (R4B models, the
closest to R4 that fhir.resources ships). The Argonaut "CDS Hooks for PAMA" extensions carry the
rating (decision-rules.md, "The rating the EHR records").
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from typing import Any

import pydantic
from fhir.resources.R4B.servicerequest import ServiceRequest

from service.facts.model import Order

CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"

PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
PAMA_CONSULT_ID = "http://fhir.org/argonaut/Extension/pama-rating-consult-id"
PAMA_AUC_APPLIED = "http://fhir.org/argonaut/Extension/pama-rating-auc-applied"
PAMA_URLS = (PAMA_RATING, PAMA_CONSULT_ID, PAMA_AUC_APPLIED)
# pama-rating-auc-applied: the guideline, with the rule id as fragment (decision-rules.md).
AUC_BASE = "https://acsearch.acr.org/docs/69483/Narrative/"

# The codings an add-reason suggestion writes into reasonCode (codes.json, verified "official" for
# ICD-10-CM, "corroborated-third-party" for SNOMED CT).
REASONS: dict[str, tuple[dict[str, str], ...]] = {
    "low_back_pain": (
        {"system": ICD10CM, "code": "M54.50", "display": "Low back pain, unspecified"},
        {"system": SNOMED, "code": "279039007", "display": "Low back pain (finding)"},
    ),
    "radiculopathy": ({"system": ICD10CM, "code": "M54.16", "display": "Radiculopathy, lumbar region"},),
    "cauda_equina": (
        {"system": ICD10CM, "code": "G83.4", "display": "Cauda equina syndrome"},
        {"system": SNOMED, "code": "192970008", "display": "Cauda equina syndrome (disorder)"},
    ),
    "cancer_history": (
        {"system": ICD10CM, "code": "Z85.9", "display": "Personal history of malignant neoplasm, unspecified"},
    ),
    "spinal_infection": (
        {"system": ICD10CM, "code": "M46.26", "display": "Osteomyelitis of vertebra, lumbar region"},
    ),
}

# The physical-therapy referral a "refer" suggestion creates (codes.json `physical_therapy`).
PHYSICAL_THERAPY = {"system": SNOMED, "code": "91251008", "display": "Physical therapy procedure"}
PT_NOTE = (
    "Physical therapy for low back pain. Re-evaluate at 6 weeks; consider imaging then if there is "
    "no improvement, or sooner if a red flag appears."
)


class InvalidOrder(ValueError):
    """The draft order cannot be turned into a valid R4 ServiceRequest."""


def checked(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource, checked against the R4B ServiceRequest model; InvalidOrder if it fails."""
    try:
        ServiceRequest.model_validate(resource)
    except (pydantic.ValidationError, ValueError, TypeError) as exc:
        # The messages may hold patient data: keep only the locations.
        where = sorted({".".join(str(p) for p in e["loc"]) for e in getattr(exc, "errors", lambda: [])()})
        raise InvalidOrder(f"ServiceRequest is not valid R4 at {', '.join(where) or 'its root'}") from None
    return dict(resource)


def with_rating(resource: Mapping[str, Any], rating: str, rule_id: str) -> dict[str, Any]:
    """A copy of the order with the three Argonaut PAMA extensions (replacing any earlier ones)."""
    out = copy.deepcopy(dict(resource))
    kept = [e for e in out.get("extension", []) if isinstance(e, dict) and e.get("url") not in PAMA_URLS]
    out["extension"] = kept + [
        {"url": PAMA_RATING, "valueCodeableConcept": {"coding": [{"system": PAMA_RATING_SYSTEM, "code": rating}]}},
        {"url": PAMA_CONSULT_ID, "valueUri": f"urn:uuid:{uuid.uuid4()}"},
        {"url": PAMA_AUC_APPLIED, "valueUri": f"{AUC_BASE}#{rule_id}"},
    ]
    return out


def rating_action(order: Order, rating: str, rule_id: str) -> dict[str, Any]:
    """The systemAction that records the rating on the draft order."""
    return {
        "type": "update",
        "description": f"Record the appropriate-use rating ({rating}, rule {rule_id})",
        "resource": checked(with_rating(order.resource, rating, rule_id)),
    }


def delete_order(order: Order) -> dict[str, Any]:
    """Cancel the draft order."""
    return {"type": "delete", "description": "Cancel the draft lumbar MRI order", "resourceId": order.reference}


def set_priority_stat(order: Order, rating: str | None, rule_id: str) -> dict[str, Any]:
    """The same order, priority STAT."""
    resource = _rated(dict(order.resource), rating, rule_id)
    resource["priority"] = "stat"
    return {"type": "update", "description": "Make the lumbar MRI order STAT", "resource": checked(resource)}


def replace_code(order: Order, code: str, display: str, rating: str | None, rule_id: str) -> dict[str, Any]:
    """The same order for another study (CPT code)."""
    resource = _rated(dict(order.resource), rating, rule_id)
    resource["code"] = {"coding": [{"system": CPT, "code": code, "display": display}], "text": display}
    return {"type": "update", "description": f"Order {display} (CPT {code}) instead", "resource": checked(resource)}


def add_reason(order: Order, reason: str) -> dict[str, Any]:
    """The same order with a documented indication added to reasonCode."""
    resource = copy.deepcopy(dict(order.resource))
    codings = REASONS[reason]
    reasons = [r for r in resource.get("reasonCode", []) if isinstance(r, dict) and r.get("coding")]
    resource["reasonCode"] = reasons + [{"coding": [dict(c) for c in codings], "text": codings[0]["display"]}]
    return {"type": "update", "description": f"Add the reason: {codings[0]['display']}", "resource": checked(resource)}


def refer_physical_therapy(order: Order) -> dict[str, Any]:
    """A new draft physical-therapy referral for the same patient and reasons."""
    source = order.resource
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [dict(PHYSICAL_THERAPY)], "text": "Physical therapy"},
        "subject": copy.deepcopy(source["subject"]),
        "note": [{"text": PT_NOTE}],
    }
    reasons = [r for r in source.get("reasonCode", []) if isinstance(r, dict) and r.get("coding")]
    if reasons:
        resource["reasonCode"] = copy.deepcopy(reasons)
    for key in ("encounter", "requester"):
        if isinstance(source.get(key), dict):
            resource[key] = copy.deepcopy(source[key])
    return {"type": "create", "description": "Refer to physical therapy; re-evaluate at 6 weeks", "resource": checked(resource)}


def _rated(resource: dict[str, Any], rating: str | None, rule_id: str) -> dict[str, Any]:
    return with_rating(resource, rating, rule_id) if rating else copy.deepcopy(resource)

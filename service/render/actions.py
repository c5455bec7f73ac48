"""FHIR actions: the rating systemAction and the resources behind each suggestion.

Every resource returned is a complete R4 ServiceRequest checked with fhir.resources (R4B models, the
closest to R4 that fhir.resources ships). The Argonaut "CDS Hooks for PAMA" extensions carry the
rating (decision-rules.md, "The rating the EHR records").

Resources are built from shallow copies of the draft order: an action only replaces top-level
elements, never changes nested ones, and the pipeline's ``compact`` rebuilds every object and array of
the response, so the answer never shares a container with the request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import pydantic
from fhir.resources.R4B.servicerequest import ServiceRequest

from service.facts.model import Order
from service.rules.vocabulary import CPT
from service.rules.vocabulary import REASONS
from service.rules.vocabulary import SNOMED

PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_RATING_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
PAMA_CONSULT_ID = "http://fhir.org/argonaut/Extension/pama-rating-consult-id"
PAMA_AUC_APPLIED = "http://fhir.org/argonaut/Extension/pama-rating-auc-applied"
PAMA_URLS = (PAMA_RATING, PAMA_CONSULT_ID, PAMA_AUC_APPLIED)
# pama-rating-auc-applied: the guideline, with the rule id as fragment (decision-rules.md).
AUC_BASE = "https://acsearch.acr.org/docs/69483/Narrative/"

# The physical-therapy referral a "refer" suggestion creates (codes.json `physical_therapy`).
PHYSICAL_THERAPY = {"system": SNOMED, "code": "91251008", "display": "Physical therapy procedure"}
PT_NOTE = (
    "Physical therapy for low back pain. Re-evaluate at 6 weeks; consider imaging then if there is "
    "no improvement, or sooner if a red flag appears."
)


def random_uuid() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives it.

    Cards, suggestions and consult ids take four or more per call; building a ``uuid.UUID`` object
    only to print it cost more than the random bytes themselves.
    """
    return uuid_text(os.urandom(16))


def uuid_text(raw: bytes) -> str:
    """``str(uuid.UUID(bytes=raw, version=4))``, formatted directly (tests hold the two equal)."""
    octets = bytearray(raw)
    octets[6] = octets[6] & 0x0F | 0x40  # version 4
    octets[8] = octets[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = octets.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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


def _valid(resource: Mapping[str, Any]) -> bool:
    try:
        checked(resource)
    except InvalidOrder:
        return False
    return True


# A valid ServiceRequest with nothing optional: an element is checked by adding it to this.
_MINIMAL: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/example"},
}


class Checks:
    """The elements the actions add to draft orders, each checked once per app (style.md 3.5).

    Why a resource can skip its whole-resource check: fhir.resources validates each top-level
    element of a ServiceRequest on its own; its model-level rules (required primitives `status` and
    `intent`, the choice types `occurrence[x]`, `quantity[x]`, `asNeeded[x]`, no null in a list)
    concern elements no action changes or adds. Every resource an action returns is a draft order
    with some elements replaced, or some entries of a list dropped, plus elements built from card
    content and constants alone. So if the draft order is valid (checked once per order: ``Draft``)
    and every added element is (checked here, the first time it is used, on ``_MINIMAL``), the
    result is valid. Otherwise the resource is checked whole, as before.
    """

    def __init__(self) -> None:
        # Keyed by card content and constants only (never request data), so it stays small.
        self._known: dict[tuple[str, ...], bool] = {}

    def __len__(self) -> int:
        """How many additions have been checked (start-up should leave none for the requests)."""
        return len(self._known)

    def element(self, key: tuple[str, ...], make: Callable[[], Mapping[str, Any]]) -> bool:
        """Whether the elements `make` builds, which depend on `key` alone, are valid R4."""
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = _valid({**_MINIMAL, **make()})
        return known

    def rating(self, rating: str, rule_id: str) -> bool:
        """The three PAMA extensions `with_rating` adds (the consult id is always a urn:uuid)."""
        return (
            self.element(("rating", rating), lambda: {"extension": _pama_extensions(rating, "none")[:1]})
            and self.element(("consult-id",), lambda: {"extension": _pama_extensions("none", "none")[1:2]})
            and self.element(("auc-applied", rule_id), lambda: {"extension": _pama_extensions("none", rule_id)[2:]})
        )

    def priority_stat(self) -> bool:
        """The priority `set_priority_stat` sets."""
        return self.element(("priority", "stat"), lambda: {"priority": "stat"})

    def code(self, code: str, display: str) -> bool:
        """The code `replace_code` sets."""
        return self.element(("code", code, display), lambda: {"code": _cpt_code(code, display)})

    def reason(self, reason: str) -> bool:
        """The reasonCode entry `add_reason` adds."""
        return self.element(("reason", reason), lambda: {"reasonCode": [_reason_code(reason)]})

    def physical_therapy(self) -> bool:
        """The constant elements of `refer_physical_therapy`'s referral."""
        return self.element(("physical-therapy",), lambda: {"code": _pt_code(), "note": [{"text": PT_NOTE}]})


class Draft:
    """A draft order the actions are built from; the order itself is checked at most once."""

    def __init__(self, order: Order, checks: Checks) -> None:
        self.order = order
        self.checks = checks
        self._valid: bool | None = None

    def result(self, resource: Mapping[str, Any], additions_valid: bool) -> dict[str, Any]:
        """`resource`, built from this draft plus valid-or-not additions; InvalidOrder if not R4."""
        if additions_valid:
            if self._valid is None:
                self._valid = _valid(self.order.resource)
            if self._valid:
                return dict(resource)
        return checked(resource)  # an invalid draft order, or addition: check the whole resource


def _pama_extensions(rating: str, rule_id: str) -> list[dict[str, Any]]:
    return [
        {"url": PAMA_RATING, "valueCodeableConcept": {"coding": [{"system": PAMA_RATING_SYSTEM, "code": rating}]}},
        {"url": PAMA_CONSULT_ID, "valueUri": f"urn:uuid:{random_uuid()}"},
        {"url": PAMA_AUC_APPLIED, "valueUri": f"{AUC_BASE}#{rule_id}"},
    ]


def _cpt_code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": CPT, "code": code, "display": display}], "text": display}


def _reason_code(reason: str) -> dict[str, Any]:
    codings = REASONS[reason]
    return {"coding": [dict(c) for c in codings], "text": codings[0]["display"]}


def _pt_code() -> dict[str, Any]:
    return {"coding": [dict(PHYSICAL_THERAPY)], "text": "Physical therapy"}


def with_rating(resource: Mapping[str, Any], rating: str, rule_id: str) -> dict[str, Any]:
    """A copy of the order with the three Argonaut PAMA extensions (replacing any earlier ones)."""
    out = dict(resource)
    kept = [e for e in _entries(out.get("extension")) if e.get("url") not in PAMA_URLS]
    out["extension"] = kept + _pama_extensions(rating, rule_id)
    return out


def rating_action(draft: Draft, rating: str, rule_id: str) -> dict[str, Any]:
    """The systemAction that records the rating on the draft order."""
    resource = with_rating(draft.order.resource, rating, rule_id)
    return {
        "type": "update",
        "description": f"Record the appropriate-use rating ({rating}, rule {rule_id})",
        "resource": draft.result(resource, draft.checks.rating(rating, rule_id)),
    }


def delete_order(draft: Draft) -> dict[str, Any]:
    """Cancel the draft order."""
    return {"type": "delete", "description": "Cancel the draft lumbar imaging order", "resourceId": draft.order.reference}


def set_priority_stat(draft: Draft, rating: str | None, rule_id: str) -> dict[str, Any]:
    """The same order, priority STAT."""
    resource = _rated(dict(draft.order.resource), rating, rule_id)
    resource["priority"] = "stat"
    valid = draft.checks.priority_stat() and _rating_valid(draft, rating, rule_id)
    return {"type": "update", "description": "Make the lumbar imaging order STAT", "resource": draft.result(resource, valid)}


def replace_code(draft: Draft, code: str, display: str, rating: str | None, rule_id: str) -> dict[str, Any]:
    """The same order for another study (CPT code)."""
    resource = _rated(dict(draft.order.resource), rating, rule_id)
    resource["code"] = _cpt_code(code, display)
    valid = draft.checks.code(code, display) and _rating_valid(draft, rating, rule_id)
    return {"type": "update", "description": f"Order {display} (CPT {code}) instead", "resource": draft.result(resource, valid)}


def stat_and_replace_code(draft: Draft, code: str, display: str, rating: str | None, rule_id: str) -> dict[str, Any]:
    """v2 merging: the same order for another study, made STAT, in one update."""
    resource = _rated(dict(draft.order.resource), rating, rule_id)
    resource["priority"] = "stat"
    resource["code"] = _cpt_code(code, display)
    valid = draft.checks.priority_stat() and draft.checks.code(code, display) and _rating_valid(draft, rating, rule_id)
    return {
        "type": "update",
        "description": f"Make the order STAT and order {display} (CPT {code}) instead",
        "resource": draft.result(resource, valid),
    }


def add_reason(draft: Draft, reason: str) -> dict[str, Any]:
    """The same order with a documented indication added to reasonCode."""
    resource = dict(draft.order.resource)
    codings = REASONS[reason]
    reasons = [r for r in _entries(resource.get("reasonCode")) if r.get("coding")]
    resource["reasonCode"] = reasons + [_reason_code(reason)]
    return {
        "type": "update",
        "description": f"Add the reason: {codings[0]['display']}",
        "resource": draft.result(resource, draft.checks.reason(reason)),
    }


def refer_physical_therapy(draft: Draft) -> dict[str, Any]:
    """A new draft physical-therapy referral for the same patient and reasons."""
    source = draft.order.resource
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": _pt_code(),
        "subject": source.get("subject"),
        "note": [{"text": PT_NOTE}],
    }
    reasons = [r for r in _entries(source.get("reasonCode")) if r.get("coding")]
    if reasons:
        resource["reasonCode"] = reasons
    for key in ("encounter", "requester"):
        if isinstance(source.get(key), dict):
            resource[key] = source[key]
    return {
        "type": "create",
        "description": "Refer to physical therapy; re-evaluate at 6 weeks",
        "resource": draft.result(resource, draft.checks.physical_therapy()),
    }


def _rated(resource: dict[str, Any], rating: str | None, rule_id: str) -> dict[str, Any]:
    return with_rating(resource, rating, rule_id) if rating else dict(resource)


def _rating_valid(draft: Draft, rating: str | None, rule_id: str) -> bool:
    return draft.checks.rating(rating, rule_id) if rating else True


def _entries(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON array element; a malformed element (not an array) has none."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

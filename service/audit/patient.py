"""The per-patient function both engines run: a patient's lines in, one row per audited order out.

For each lumbar imaging order of the patient authored in the window, it builds the request the EHR
would have sent at signing: an ``order-sign`` call whose draft is the order and whose ``prefetch``
holds, for every template the service advertises, a searchset Bundle of the patient's resources of
that template's type **as they stood at the order's authoredOn** (``asof``). The service's own
``Evaluator`` answers it, with ``today`` = the order's day. The key <-> resource type mapping is read
from ``Evaluator.templates`` at run time, so a prefetch key added to the service is audited too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from service.audit import asof
from service.audit.directory import Directory
from service.audit.export import EXTRA_TYPES
from service.audit.export import AuditedOrder
from service.audit.export import Reading
from service.audit.export import audited_order
from service.audit.export import has_code
from service.errors import DataUnobtainable
from service.errors import InvalidRequest
from service.intake import envelope
from service.pipeline import Evaluator
from service.security.pseudonyms import patient_hash

LOW_VALUE_RATING = "not-appropriate"  # decision-rules.md: "usually not appropriate" (ACR 1-3)
_HOOK_NAMESPACE = uuid.UUID("0b6f3c1e-55d4-4b8a-9a51-3f1c2d7e8a90")  # hookInstance = uuid5(order hash)

# The per-order row, in column order (output.py writes Parquet and CSV from this list).
COLUMNS: tuple[tuple[str, type], ...] = (
    ("order", str),              # HMAC of "ServiceRequest/<id>" with the salt: unique, not reversible
    ("patient", str),            # HMAC of the patient id with the salt (the store's patient_hash)
    ("authored_on", str),        # the order's day, YYYY-MM-DD
    ("month", str),              # YYYY-MM
    ("modality", str),           # MRI | CT | XR
    ("code_system", str),
    ("code", str),
    ("outcome", str),            # see OUTCOMES
    ("rule", str),               # the rule that rated the order ("" when none)
    ("rating", str),             # the PAMA rating the service would have recorded ("" when none)
    ("low_value", bool),         # the ordered study is usually not appropriate in the rule's variant
    ("cards", int),              # cards the clinician would have seen
    ("card_rules", str),         # their source.topic codes, ";"-separated
    ("findings", str),           # the facts present that the rules read, ";"-separated
    ("unavailable", str),        # prefetch keys with no data, ";"-separated
    ("requester", str),          # Practitioner/… (or PractitionerRole/… when no practitioner is linked)
    ("requester_name", str),
    ("organization", str),       # Organization/…: the role's organization, else the encounter's serviceProvider
    ("organization_name", str),
)
OUTCOMES = {
    "decided": "a rule of the table matched",
    "no-rule": "reviewed, no rule matched",
    "not-adult": "reviewed, but the patient was under 18 or had no birth date: no card, no rating",
    "not-reviewed": "the decision model does not review this order (e.g. a modality it does not cover)",
    "data-unobtainable": "the record lacks what the rules cannot do without (e.g. no Patient)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """One prefetch template, read: its resource type, and the codes it asks for if any."""

    kind: str
    read: bool                          # Patient/{{context.patientId}}: the resource, not a Bundle
    codes: frozenset[str] = frozenset()  # "system|code" (or "code") tokens of a `code=` parameter


def read_templates(templates: Mapping[str, str]) -> dict[str, Query]:
    """The resource type (and code filter) of each prefetch template."""
    queries = {}
    for key, template in templates.items():
        path, _, query = template.partition("?")
        params = parse_qs(query)
        codes = frozenset(c for value in params.get("code", ()) for c in value.split(",") if c)
        queries[key] = Query(kind=path.split("/", 1)[0], read="/" in path, codes=codes)
    return queries


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditContext:
    """What every worker needs besides the evaluator; picklable (sent to processes and executors)."""

    reading: Reading
    directory: Directory
    salt: str                            # patient_hash_salt


class Auditor:
    """The evaluator and the context, loaded once per worker process."""

    def __init__(self, context: AuditContext, evaluator: Evaluator) -> None:
        self.context = context
        self.evaluator = evaluator
        self.queries = read_templates(evaluator.templates)

    def audit_patient(self, patient_id: str, lines: Iterable[bytes]) -> list[dict[str, Any]]:
        """One row per audited order of this patient (lines: the patient's NDJSON lines)."""
        by_type: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            resource = orjson.loads(line)
            by_type.setdefault(resource["resourceType"], []).append(resource)
        rows = []
        for order in by_type.get("ServiceRequest", ()):
            found = audited_order(order, self.context.reading)
            if found is not None:
                rows.append(self.audit_order(patient_id, order, found, by_type))
        return rows

    def audit_order(
        self, patient_id: str, order: dict[str, Any], found: AuditedOrder, by_type: Mapping[str, list[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Evaluate one order as of its authoredOn; its row."""
        at = asof.moment(found.authored) or (found.day, None)
        order_ref = f"ServiceRequest/{order.get('id')}"
        request = self.request(patient_id, order, order_ref, at, by_type)
        row = self.base_row(patient_id, order, order_ref, found, by_type)
        try:
            evaluation = self.evaluator.evaluate(envelope.parse_request(request, hook="order-sign"), found.day)
        except (DataUnobtainable, InvalidRequest) as exc:
            row["outcome"] = "data-unobtainable"
            row["unavailable"] = exc.expression or ""
            return row
        return read_evaluation(row, evaluation)

    def request(
        self,
        patient_id: str,
        order: dict[str, Any],
        order_ref: str,
        at: asof.Moment,
        by_type: Mapping[str, list[dict[str, Any]]],
    ) -> dict[str, Any]:
        """The sandbox-shaped order-sign request the EHR would have sent when signing the order."""
        prefetch: dict[str, Any] = {}
        for key, query in self.queries.items():
            known = [r for r in by_type.get(query.kind, ())
                     if asof.known_at(r, at) and (not query.codes or has_code(r, query.codes))]
            if query.kind == "ServiceRequest":
                known = [r for r in known if r.get("id") != order.get("id")]  # the order is the draft, not yet in the record
            if query.read:
                if known:
                    prefetch[key] = known[0]
                continue
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(known),
                             "entry": [{"resource": r} for r in known]}
        draft = {**order, "status": "draft"}
        context: dict[str, Any] = {
            "patientId": patient_id,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
        }
        requester = _reference(order.get("requester"))
        if requester is not None:
            context["userId"] = requester
        return {
            "hook": "order-sign",
            "hookInstance": str(uuid.uuid5(_HOOK_NAMESPACE, order_ref)),
            "context": context,
            "prefetch": prefetch,
        }

    def base_row(
        self,
        patient_id: str,
        order: dict[str, Any],
        order_ref: str,
        found: AuditedOrder,
        by_type: Mapping[str, list[dict[str, Any]]],
    ) -> dict[str, Any]:
        """The row's columns that do not depend on the evaluation."""
        directory = self.context.directory
        requester_ref = _reference(order.get("requester"))
        practitioner, organization = directory.requester(requester_ref)
        organization = organization or _encounter_provider(order, by_type)
        requester = practitioner or requester_ref
        salt = self.context.salt
        return {
            "order": patient_hash(salt, order_ref),
            "patient": patient_hash(salt, patient_id),
            "authored_on": found.day.isoformat(),
            "month": found.day.isoformat()[:7],
            "modality": found.modality,
            "code_system": found.system,
            "code": found.code,
            "outcome": "not-reviewed",
            "rule": "",
            "rating": "",
            "low_value": False,
            "cards": 0,
            "card_rules": "",
            "findings": "",
            "unavailable": "",
            "requester": requester or "",
            "requester_name": directory.name(requester),
            "organization": organization or "",
            "organization_name": directory.name(organization),
        }


def read_evaluation(row: dict[str, Any], evaluation: Any) -> dict[str, Any]:
    """Fill the row from the evaluation: its cards' rules, rating, and the decision's rule and facts."""
    row["cards"] = len(evaluation.cards)
    row["card_rules"] = ";".join(c.rule_id for c in evaluation.cards)
    if evaluation.orders_reviewed == 0:
        return row
    row["outcome"] = "not-adult"
    if not evaluation.decisions:
        return row
    decision = evaluation.decisions[0]
    facts = decision.facts
    row["findings"] = ";".join(sorted(str(f) for f in facts.findings))
    row["unavailable"] = ";".join(facts.unavailable)
    if decision.rule is None:
        row["outcome"] = "no-rule"
        return row
    row["outcome"] = "decided"
    row["rule"] = decision.rule.id
    row["rating"] = decision.rating or "none"  # as the hook's answer records it
    # v2 change 6: the ordered study's ACR rating in the rule's variant decides (radiography, which is
    # never rated, included); a rule without a row of the rating table (9, 10) keeps its own rating.
    row["low_value"] = decision.acr == "UNA" if decision.acr is not None else decision.rule.rating == LOW_VALUE_RATING
    return row


def _reference(value: Any) -> str | None:
    target = value.get("reference") if isinstance(value, dict) else None
    return target if isinstance(target, str) and target else None


def _encounter_provider(order: Mapping[str, Any], by_type: Mapping[str, list[dict[str, Any]]]) -> str | None:
    """The serviceProvider of the order's encounter, when the export has that Encounter."""
    encounter = _reference(order.get("encounter"))
    if encounter is None:
        return None
    eid = encounter.rsplit("/", 1)[-1]
    for resource in by_type.get("Encounter", ()):
        if resource.get("id") == eid:
            return _reference(resource.get("serviceProvider"))
    return None


def reading_filters(evaluator: Evaluator) -> dict[str, frozenset[str] | None]:
    """The resource types the audit keys by patient (every template's, Patient and Encounter), each
    with the codes its templates ask for (None: every resource of the type)."""
    filters: dict[str, frozenset[str] | None] = {kind: None for kind in EXTRA_TYPES}
    queries = list(read_templates(evaluator.templates).values())
    for kind in {q.kind for q in queries}:
        of_kind = [q for q in queries if q.kind == kind]
        wanted = None if any(not q.codes for q in of_kind) else frozenset().union(*(q.codes for q in of_kind))
        filters[kind] = None if kind in EXTRA_TYPES else wanted
    return filters

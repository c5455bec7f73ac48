"""The one path from a hook request to a CDS Hooks response, used by HTTP, the CLI and benchmarks.

    orders to review -> resolve prefetch (+ FHIR fetch for gaps) -> facts -> decide -> render
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import date
from typing import Any

from service.facts import extract
from service.facts.codes import ValueSets
from service.intake import prefetch
from service.intake.envelope import HookRequest
from service.jsonutil import compact
from service.render import cards as render
from service.rules import engine
from service.rules.table import RuleTable

log = logging.getLogger(__name__)

ADULT_AGE = 18  # decision-rules.md: adults only (ACR-LBP is for adults)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    id: str
    hook: str
    title: str
    description: str


SERVICES: dict[str, ServiceSpec] = {
    spec.id: spec
    for spec in (
        ServiceSpec(
            id="order-select",
            hook="order-select",
            title="Lumbar spine MRI appropriateness (order select)",
            description=(
                "Reviews a selected lumbar spine MRI order against the ACR Appropriateness Criteria "
                "for low back pain, ACP guidance and Choosing Wisely; returns cards, one-click "
                "alternatives and a PAMA appropriateness rating."
            ),
        ),
        ServiceSpec(
            id="order-sign",
            hook="order-sign",
            title="Lumbar spine MRI appropriateness (order sign)",
            description=(
                "Reviews every draft lumbar spine MRI order at signing against the ACR "
                "Appropriateness Criteria for low back pain; returns cards and a PAMA rating."
            ),
        ),
    )
}


@dataclass(kw_only=True)
class Evaluation:
    """What one hook call produced: the response JSON and what the store and logs need."""

    response: dict[str, Any]
    cards: list[render.RenderedCard] = field(default_factory=list)
    ratings: dict[str, str] = field(default_factory=dict)    # rule id -> rating, for logs and metrics
    orders_reviewed: int = 0
    record: prefetch.PatientRecord | None = None
    decisions: list[engine.Decision] = field(default_factory=list)  # one per order reviewed (the audit reads them)


class Evaluator:
    """Value sets, rule table and card content, loaded and checked once; evaluates requests."""

    @classmethod
    def load(cls) -> Evaluator:
        """The evaluator of the shipped value sets and cards/ (read and checked once)."""
        from service.rules import table as rule_table

        return cls(ValueSets.load(), rule_table.load_table())

    def __init__(self, value_sets: ValueSets, table: RuleTable) -> None:
        self.value_sets = value_sets
        self.table = table
        self.prepared = render.prepare(table)  # also warms fhir.resources' validators
        observation_codes = value_sets.codings("body_temperature") + value_sets.codings("pregnancy_status_observation")
        self.templates = prefetch.build_templates(observation_codes)

    def orders_to_review(self, request: HookRequest) -> list[Mapping[str, Any]]:
        """The draft lumbar MRI orders this call asks about (selections for order-select)."""
        drafts = [r for r in request.draft_orders if extract.lumbar_mri(r, self.value_sets) is not None]
        if request.hook != "order-select":
            return drafts
        wanted = set(request.selections or ())
        return [r for r in drafts if f"ServiceRequest/{r.get('id')}" in wanted]

    def evaluate(self, request: HookRequest, today: date, fetcher: prefetch.Fetcher | None = None) -> Evaluation:
        """Review the call's lumbar MRI orders; 412 (DataUnobtainable) when required data is missing."""
        orders = self.orders_to_review(request)
        if not orders:
            return Evaluation(response={"cards": []})
        record = prefetch.resolve(request.prefetch, self.templates, request.patient_id, fetcher)
        patient = extract.extract_patient(record, self.value_sets, today)
        evaluation = Evaluation(response={"cards": []}, record=record, orders_reviewed=len(orders))
        if patient.age is None or patient.age < ADULT_AGE:
            return evaluation  # children, or no birth date: ACR-LBP does not apply; no card, no rating
        system_actions = []
        seen: set[str] = set()
        for order in orders:
            facts = extract.facts_for_order(patient, order, self.value_sets)
            if facts is None or facts.order.reference in seen:
                continue
            seen.add(facts.order.reference)
            decision = engine.decide(self.table, facts)
            evaluation.decisions.append(decision)
            rendered, action = render.render_decision(decision, self.table, self.prepared)
            evaluation.cards.extend(rendered)
            if decision.rule is not None:
                evaluation.ratings[decision.rule.id] = decision.rating or "none"
            if action is not None:
                system_actions.append(action)
        response: dict[str, Any] = {"cards": [c.card for c in evaluation.cards]}
        if system_actions:
            # 2.0's top-level systemActions, and the copy the sandbox's PAMA screen reads.
            response["systemActions"] = system_actions
            response["extension"] = {"systemActions": system_actions}
        evaluation.response = {"cards": [], **compact(response)}  # `cards` is required, even empty
        return evaluation

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

from service.catalogue import Catalogue
from service.catalogue import ServiceSpec
from service.catalogue import load_catalogue
from service.catalogue import service_for as first_service_for
from service.facts import extract
from service.facts import model
from service.facts.codes import ValueSets
from service.intake import prefetch
from service.intake.envelope import HookRequest
from service.jsonutil import compact
from service.render import cards as render
from service.rules import engine
from service.rules.table import RuleTable

log = logging.getLogger(__name__)

ADULT_AGE = 18  # decision-rules.md: adults only (ACR-LBP is for adults)


@dataclass(kw_only=True)
class Evaluation:
    """What one hook call produced: the response JSON and what the store and logs need."""

    response: dict[str, Any]
    cards: list[render.RenderedCard] = field(default_factory=list)
    order_ratings: list[tuple[str, str]] = field(default_factory=list)  # (rule id, rating) per order rated
    modalities: dict[str, str] = field(default_factory=dict) # card uuid -> modality of its order (store, report)
    card_ratings: dict[str, str] = field(default_factory=dict)  # card uuid -> the rating it carries (rating cards)
    orders_reviewed: int = 0
    record: prefetch.PatientRecord | None = None
    decisions: list[engine.Decision] = field(default_factory=list)  # one per order reviewed (the audit reads them)


class Evaluator:
    """Value sets, rule table, card content and the service catalogue, loaded and checked once;
    evaluates requests."""

    @classmethod
    def load(cls) -> Evaluator:
        """The evaluator of the shipped value sets and cards/ (read and checked once)."""
        from service.rules import table as rule_table

        return cls(ValueSets.load(), rule_table.load_table(), load_catalogue())

    def __init__(self, value_sets: ValueSets, table: RuleTable, catalogue: Catalogue | None = None) -> None:
        self.value_sets = value_sets
        self.table = table
        self.catalogue: Catalogue = catalogue if catalogue is not None else load_catalogue()
        self.prepared = render.prepare(table)  # also warms fhir.resources' validators
        observation_codes = value_sets.codings("body_temperature") + value_sets.codings("pregnancy_status_observation")
        self.templates = prefetch.build_templates(observation_codes)

    def service_for(self, hook: str) -> ServiceSpec | None:
        """The catalogue's service for this hook (the first one listed), if any."""
        return first_service_for(self.catalogue, hook)

    def orders_to_review(self, request: HookRequest, service: ServiceSpec | None = None) -> list[tuple[Mapping[str, Any], model.Study]]:
        """The draft orders this call asks about that the service reviews (selections for order-select),
        each with the study it orders, read once."""
        service = service or self.service_for(request.hook)
        reviews = service.reviews if service is not None else extract.REVIEWED
        drafts = []
        for resource in request.draft_orders:
            study = extract.ordered_study(resource, self.value_sets, reviews)
            if study is not None:
                drafts.append((resource, study))
        if request.hook != "order-select":
            return drafts
        wanted = set(request.selections or ())
        return [(r, s) for r, s in drafts if f"ServiceRequest/{r.get('id')}" in wanted]

    def evaluate(self, request: HookRequest, today: date, fetcher: prefetch.Fetcher | None = None,
                 service: ServiceSpec | None = None) -> Evaluation:
        """Review the call's lumbar imaging orders; 412 (DataUnobtainable) when required data is missing."""
        orders = self.orders_to_review(request, service)
        if not orders:
            return Evaluation(response={"cards": []})
        record = prefetch.resolve(request.prefetch, self.templates, request.patient_id, fetcher)
        patient = extract.extract_patient(record, self.value_sets, today)
        evaluation = Evaluation(response={"cards": []}, record=record, orders_reviewed=len(orders))
        if patient.age is None or patient.age < ADULT_AGE:
            return evaluation  # children, or no birth date: ACR-LBP does not apply; no card, no rating
        system_actions = []
        seen: set[str] = set()
        for order, study in orders:
            facts = extract.facts_for_order(patient, order, self.value_sets, study)
            if facts is None or facts.order.reference in seen:
                continue
            seen.add(facts.order.reference)
            decision = engine.decide(self.table, facts)
            evaluation.decisions.append(decision)
            rendered, action = render.render_decision(decision, self.table, self.prepared)
            evaluation.cards.extend(rendered)
            for card in rendered:
                evaluation.modalities[card.card["uuid"]] = study.modality.value
            if decision.rule is not None:
                evaluation.order_ratings.append((decision.rule.id, decision.rating or "none"))
                for card in rendered:
                    if card.rule_id == decision.rule.id:
                        evaluation.card_ratings[card.card["uuid"]] = decision.rating or "none"
            if action is not None:
                system_actions.append(action)
        response: dict[str, Any] = {"cards": [c.card for c in evaluation.cards]}
        if system_actions:
            # 2.0's top-level systemActions, and the copy the sandbox's PAMA screen reads.
            response["systemActions"] = system_actions
            response["extension"] = {"systemActions": system_actions}
        evaluation.response = {"cards": [], **compact(response)}  # `cards` is required, even empty
        return evaluation

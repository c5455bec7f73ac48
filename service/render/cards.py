"""Cards: from a ``Decision`` and the card content in ``cards/`` to CDS Hooks 2.0 card JSON.

Pure: no I/O, no clock. Optional members are left out rather than sent empty (CDS Hooks 2.0: never
`null`, `""`, `[]` or `{}`), which ``compact`` enforces on the way out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.facts.model import Evidence
from service.facts.model import Facts
from service.facts.model import Finding
from service.render import actions
from service.rules.engine import Decision
from service.rules.table import CardContent
from service.rules.table import Modifier
from service.rules.table import RuleTable
from service.rules.table import Suggestion

log = logging.getLogger(__name__)

TOPIC_SYSTEM = "urn:lumbar-mri-cds:rule"  # source.topic: the rule id, the feedback and report key
EVIDENCE_SHOWN = 3                        # evidence lines per finding before "and N more"
_FINDINGS = frozenset(f.value for f in Finding)  # the decision model's facts (findings.toml may name more)
_CODE_LABELS = {actions.CPT: "CPT", "urn:oid:2.16.840.1.113883.6.12": "CPT", "http://loinc.org": "LOINC", actions.SNOMED: "SNOMED CT"}
RATING_WORDS = {
    "appropriate": "appropriate",
    "not-appropriate": "not appropriate",
    "no-criteria-apply": "no criteria apply",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedCard:
    card: dict[str, Any]          # the card JSON
    rule_id: str
    suggestion_uuids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """What rendering takes from the rule table alone, worked out once at start-up (``prepare``).

    A card's detail lists the findings.toml labels of the facts present and the red flags absent;
    matching findings.toml keys to the model's ``Finding`` values on every card cost more than the
    rest of the text. tests/render/test_cards.py holds each field to its definition over the table.
    """

    checks: actions.Checks                             # every element the actions can add, checked
    findings: tuple[tuple[Finding, str], ...]          # (finding, label): findings.toml keys the model has, file order
    red_flags: tuple[tuple[Finding | None, str], ...]  # (finding, looked_for) of red flags; None: not in the model
    closing: Mapping[str, str]                         # card id -> the detail's last paragraph (rule id, sources)


def prepare(table: RuleTable) -> Prepared:
    """The action checks and the card text that depends on the table alone."""
    return Prepared(
        checks=prepare_checks(table),
        findings=tuple((Finding(key), label.label) for key, label in table.findings.items() if key in _FINDINGS),
        red_flags=tuple(
            (Finding(key) if key in _FINDINGS else None, label.looked_for)
            for key, label in table.findings.items()
            if label.red_flag
        ),
        closing={
            cid: "Rule `" + cid + "` · Sources: " + "; ".join(table.sources[k].label for k in content.cites)
            for cid, content in table.cards.items()
        },
    )


def prepare_checks(table: RuleTable) -> actions.Checks:
    """The action checks, with every element the card content can add checked now, at start-up."""
    checks = actions.Checks()
    ratings = {r.rating for r in table.rules} | {s.rating for c in table.cards.values() for s in c.suggestions}
    for rating in sorted(r for r in ratings if r and r not in ("none", "same-as-order")):
        checks.rating(rating, "none")
    for rule_id in sorted({r.id for r in table.rules} | {"none"}):
        checks.rating("appropriate", rule_id)
    checks.priority_stat()
    checks.physical_therapy()
    for reason in actions.REASONS:
        checks.reason(reason)
    for content in table.cards.values():
        for spec in content.suggestions:
            if spec.action == "replace-code" and spec.code:
                checks.code(spec.code, spec.display or spec.code)
    for modifier in table.modifiers:
        if modifier.replace_with:
            checks.code(modifier.replace_with, modifier.replace_display or modifier.replace_with)
    return checks


def render_decision(
    decision: Decision, table: RuleTable, prepared: Prepared
) -> tuple[list[RenderedCard], dict[str, Any] | None]:
    """The cards of one order (rating card first, then modifiers) and its rating systemAction."""
    facts = decision.facts
    draft = actions.Draft(facts.order, prepared.checks)
    rendered: list[RenderedCard] = []
    rule = decision.rule
    if rule is not None and rule.card:
        content = table.cards[rule.id]
        rendered.append(_card(content, decision, table, prepared, draft, modifier=None, rating_card=True))
    for modifier in decision.modifiers:
        content = table.cards[modifier.id]
        rendered.append(_card(content, decision, table, prepared, draft, modifier=modifier, rating_card=False))
    system_action = None
    if rule is not None and decision.rating is not None:
        try:
            system_action = actions.rating_action(draft, decision.rating, rule.id)
        except actions.InvalidOrder as exc:
            log.warning("no rating for %s: %s", facts.order.reference, exc)
    return rendered, system_action


def _card(
    content: CardContent,
    decision: Decision,
    table: RuleTable,
    prepared: Prepared,
    draft: actions.Draft,
    *,
    modifier: Modifier | None,
    rating_card: bool,
) -> RenderedCard:
    facts = decision.facts
    prior = _prior_date(facts)
    suggestions = [s for s in (_suggestion(s, decision, draft, modifier) for s in content.suggestions) if s is not None]
    lead = table.sources[content.cites[0]]
    card: dict[str, Any] = {
        "uuid": actions.random_uuid(),
        "summary": content.summary.replace("{prior_date}", prior),
        "detail": _detail(content, decision, prepared, rating_card=rating_card, prior=prior),
        "indicator": content.indicator,
        "source": {
            "label": lead.label,
            "url": lead.url,
            "topic": {"system": TOPIC_SYSTEM, "code": content.id, "display": content.id.replace("-", " ")},
        },
        "links": [{"label": table.sources[k].label, "url": table.sources[k].url, "type": "absolute"} for k in content.cites],
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    if content.override_reasons:
        card["overrideReasons"] = [{"system": r.system, "code": r.code, "display": r.display} for r in table.override_reasons]
    return RenderedCard(card=card, rule_id=content.id, suggestion_uuids=tuple(s["uuid"] for s in suggestions))


def _suggestion(spec: Suggestion, decision: Decision, draft: actions.Draft, modifier: Modifier | None) -> dict[str, Any] | None:
    facts = decision.facts
    rule_id = decision.rule.id if decision.rule else "none"
    rating = decision.rating if spec.rating == "same-as-order" else spec.rating
    try:
        match spec.action:
            case "delete-order":
                action = actions.delete_order(draft)
            case "refer-physical-therapy":
                action = actions.refer_physical_therapy(draft)
            case "set-priority-stat":
                if facts.order.priority in ("stat", "asap"):
                    return None  # already urgent (decision-rules.md rule 1)
                action = actions.set_priority_stat(draft, rating, rule_id)
            case "replace-code":
                code = (modifier.replace_with if modifier and modifier.replace_with else spec.code) or ""
                display = (modifier.replace_display if modifier and modifier.replace_with else spec.display) or code
                if code == facts.order.code:
                    return None  # already the study the card proposes
                action = actions.replace_code(draft, code, display, rating, rule_id)
            case "add-reason":
                action = actions.add_reason(draft, spec.reason or "")
            case _:
                return None
    except (actions.InvalidOrder, KeyError) as exc:
        log.warning("suggestion %s dropped for %s: %s", spec.key, facts.order.reference, exc)
        return None
    return {"label": spec.label, "uuid": actions.random_uuid(), "isRecommended": spec.recommended, "actions": [action]}


def _prior_date(facts: Facts) -> str:
    dates = [e.on for e in facts.findings.get(Finding.PRIOR_LUMBAR_MRI, ()) if e.on is not None]
    return max(dates).isoformat() if dates else "an earlier date"


def _detail(content: CardContent, decision: Decision, prepared: Prepared, *, rating_card: bool, prior: str) -> str:
    facts = decision.facts
    parts = [content.verdict.replace("{prior_date}", prior)]
    why = _why_lines(facts, prepared)
    if why:
        parts.append("**Why**\n\n" + "\n".join(why))
    if rating_card and decision.rating != "appropriate":
        absent = [looked_for for finding, looked_for in prepared.red_flags if finding not in facts.findings]
        if absent:
            parts.append("**Red flags looked for and not found:**\n\n" + "\n".join(f"- {a}" for a in absent))
    if facts.unavailable:
        parts.append(
            "**Not available:** " + ", ".join(facts.unavailable)
            + ". The verdict was reached without this data; a finding recorded there was not seen."
        )
    system = _CODE_LABELS.get(facts.order.system, facts.order.system)
    ordered = f"{facts.order.display or 'Lumbar spine MRI'} ({system} {facts.order.code})"
    rating = f" Rating recorded: **{RATING_WORDS[decision.rating]}**." if rating_card and decision.rating else ""
    parts.append(f"**Ordered study:** {ordered}.{rating}\n\n**ACR rating:** {content.acr_rating}")
    if content.advice:
        parts.append(content.advice)
    parts.append(prepared.closing[content.id])
    return "\n\n".join(parts)


def _why_lines(facts: Facts, prepared: Prepared) -> list[str]:
    lines = []
    if facts.age is not None:
        lines.append(f"- Age {facts.age}" + (f", {facts.sex}" if facts.sex else ""))
    if facts.has(Finding.BACK_PAIN):
        if facts.episode_start is not None:
            lines.append(f"- Current back pain episode since {facts.episode_start.isoformat()} ({facts.episode_days} days)")
        else:
            lines.append("- Current back pain episode of unknown duration (no dated diagnosis)")
    for finding, label in prepared.findings:
        evidence = facts.findings.get(finding)
        if evidence:
            lines.append(f"- {label}: {_evidence_text(evidence)}")
    return lines


def _evidence_text(evidence: tuple[Evidence, ...]) -> str:
    shown = [f"{e.text} ({e.reference}{', ' + e.on.isoformat() if e.on else ''})" for e in evidence[:EVIDENCE_SHOWN]]
    more = len(evidence) - EVIDENCE_SHOWN
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")

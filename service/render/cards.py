"""Cards: from a ``Decision`` and the card content in ``cards/`` to CDS Hooks 2.0 card JSON.

Pure: no I/O, no clock. Optional members are left out rather than sent empty (CDS Hooks 2.0: never
`null`, `""`, `[]` or `{}`), which ``compact`` enforces on the way out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from service.facts.model import Evidence
from service.facts.model import Facts
from service.facts.model import Finding
from service.render import actions
from service.rules import vocabulary
from service.rules.engine import PAMA_OF_ACR
from service.rules.engine import Decision
from service.rules.engine import study_rating
from service.rules.predicates import PREDICATES
from service.rules.predicates import READS
from service.rules.predicates import WEAKER_RISK_FACTORS
from service.rules.table import CardContent
from service.rules.table import Modifier
from service.rules.table import OverrideReason
from service.rules.table import RuleTable
from service.rules.table import Suggestion
from service.rules.table import Variant
from service.rules.vocabulary import REASONS

log = logging.getLogger(__name__)

TOPIC_SYSTEM = "urn:lumbar-mri-cds:rule"  # source.topic: the rule id, the feedback and report key
EVIDENCE_SHOWN = 3                        # evidence lines per finding before "and N more"
_FINDINGS = frozenset(f.value for f in Finding)  # the decision model's facts (findings.toml may name more)
_CODE_LABELS = {vocabulary.CPT: "CPT", "urn:oid:2.16.840.1.113883.6.12": "CPT", "http://loinc.org": "LOINC", vocabulary.SNOMED: "SNOMED CT"}
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

    A card's detail lists the findings.toml labels of the facts that decided it, the weaker risk
    factors found, and the red flags absent; matching findings.toml keys to the model's ``Finding``
    values on every card cost more than the rest of the text. tests/render/test_cards.py holds each
    field to its definition over the table.
    """

    checks: actions.Checks                             # every element the actions can add, checked
    findings: tuple[tuple[Finding, str], ...]          # (finding, label): findings.toml keys the model has, file order
    red_flags: tuple[tuple[Finding | None, str], ...]  # (finding, short name) of red flags; None: not in the model
    closing: Mapping[str, str]                         # card id -> the detail's last paragraph (rule id, sources)
    deciding: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # rule id -> predicates its `when` needs
    override_reasons: Mapping[str, tuple[OverrideReason, ...]] = field(default_factory=dict)  # card id -> reasons it offers


def prepare(table: RuleTable) -> Prepared:
    """The action checks and the card text that depends on the table alone."""
    return Prepared(
        checks=prepare_checks(table),
        findings=tuple((Finding(key), label.label) for key, label in table.findings.items() if key in _FINDINGS),
        red_flags=tuple(
            (Finding(key) if key in _FINDINGS else None, label.short)
            for key, label in table.findings.items()
            if label.red_flag
        ),
        closing={
            cid: "Rule `" + cid + "` · Sources: " + "; ".join(table.sources[k].label for k in content.cites)
            for cid, content in table.cards.items()
        },
        deciding={r.id: _deciding_predicates(r.id, r.when.all + r.when.any, table) for r in table.rules},
        override_reasons=_offered_reasons(table),
    )


def _offered_reasons(table: RuleTable) -> dict[str, tuple[OverrideReason, ...]]:
    """Per card id, the override-reasons.toml entries its ``override_reasons`` codes name, in its order."""
    reasons = {r.code: r for r in table.override_reasons}
    return {cid: tuple(reasons[c] for c in content.override_reasons) for cid, content in table.cards.items()}


def _deciding_predicates(rule_id: str, names: tuple[str, ...], table: RuleTable) -> tuple[str, ...]:
    """The rule's own predicates, and those its card's suggestions and wording turn on (e.g. the
    mechanism of injury that decides which study comes first)."""
    content = table.cards.get(rule_id)
    extra: list[str] = []
    if content is not None:
        extra += [name for v in content.variants for name in v.when]
        extra += [p for s in content.suggestions for p in (s.recommended_when, s.omit_when) if p]
    return tuple(dict.fromkeys(n for n in (*names, *extra) if n != "weaker_risk_factor"))


def prepare_checks(table: RuleTable) -> actions.Checks:
    """The action checks, with every element the card content can add checked now, at start-up."""
    checks = actions.Checks()
    ratings = {r.rating for r in table.rules} | {s.rating for c in table.cards.values() for s in c.suggestions}
    for rating in sorted(r for r in ratings if r and r not in ("none", "same-as-order", "as-rated")):
        checks.rating(rating, "none")
    for rule_id in sorted({r.id for r in table.rules} | {"none"}):
        checks.rating("appropriate", rule_id)
    checks.priority_stat()
    checks.physical_therapy()
    for reason in REASONS:
        checks.reason(reason)
    for content in table.cards.values():
        for spec in content.suggestions:
            if spec.action == "replace-code" and spec.code:
                checks.code(spec.code, spec.display or spec.code)
    for study in table.studies.values():  # the better study a rating card may offer
        checks.code(study.code, study.display)
    for modifier in table.modifiers:
        if modifier.replace_with:
            checks.code(modifier.replace_with, modifier.replace_display or modifier.replace_with)
    return checks


@dataclass(slots=True)
class _Offer:
    """One suggestion while a decision's cards are assembled (before merging)."""

    spec: Suggestion
    json: dict[str, Any]
    code: str | None = None      # the study a replace-code suggestion orders
    display: str | None = None
    rating: str | None = None
    stat: bool = False           # also makes the order STAT (a merged suggestion)


def render_decision(
    decision: Decision, table: RuleTable, prepared: Prepared
) -> tuple[list[RenderedCard], dict[str, Any] | None]:
    """The cards of one order (rating card first, then modifiers) and its rating systemAction.

    v2 merging ("Alternatives vs merging"): a STAT suggestion of the rating card is merged into every
    study-changing suggestion of the modifiers (one suggestion makes both changes, on the rating card,
    whose indicator is the higher); a modifier suggestion equal to one already offered is left out, and
    an info modifier left with nothing to offer is left out with it.
    """
    facts = decision.facts
    draft = actions.Draft(facts.order, prepared.checks)
    rule = decision.rule
    rule_id = rule.id if rule else "none"
    parts: list[tuple[CardContent, Modifier | None, list[_Offer]]] = []
    # v2 "Ratings by modality": an unrated study (radiography) that is usually or may be appropriate
    # in the variant gets no rating card.
    if rule is not None and rule.card and (decision.rated or decision.acr in (None, "UNA")):
        content = table.cards[rule.id]
        offers = _offers(content, decision, draft, None, table)
        _rating_extras(offers, content, decision, draft, table, rule_id)
        parts.append((content, None, offers))
    for modifier in decision.modifiers:
        content = table.cards[modifier.id]
        parts.append((content, modifier, _offers(content, decision, draft, modifier, table)))
    _merge(parts, decision, draft, rule_id)
    rendered = [
        _card(content, decision, table, prepared, offers, rating_card=modifier is None)
        for content, modifier, offers in parts
        if offers or modifier is None or content.indicator != "info" or not content.suggestions
    ]
    system_action = None
    if rule is not None and decision.rating is not None:
        try:
            system_action = actions.rating_action(draft, decision.rating, rule.id)
        except actions.InvalidOrder as exc:
            log.warning("no rating for %s: %s", facts.order.reference, exc)
    return rendered, system_action


def _merge(parts: list[tuple[CardContent, Modifier | None, list[_Offer]]], decision: Decision, draft: actions.Draft, rule_id: str) -> None:
    """Merge STAT into the modifiers' study changes; drop modifier suggestions already offered."""
    if not parts:
        return
    rating = parts[0][1] is None
    first = parts[0][2] if rating else []
    # The rating card asks for STAT (rule 1) unless the order already is: even where the plain STAT
    # suggestion is left out (the ordered study is not usually appropriate), study changes carry it.
    stat = rating and _wants_stat(parts[0][0], decision)
    offered = {(o.spec.action, o.code) for o in first}
    # When the rating card recommends cancelling the order, a modifier's change to it is still
    # offered but not recommended: the two are not to be accepted together.
    cancel = any(o.spec.action == "delete-order" and o.json["isRecommended"] for o in first)
    for _content, modifier, offers in parts:
        if modifier is None:
            continue
        for offer in offers:
            if cancel:
                offer.json["isRecommended"] = False
        for offer in list(offers):
            if (offer.spec.action, offer.code) in offered:
                offers.remove(offer)
            elif stat and offer.spec.action == "replace-code" and offer.code:
                offers.remove(offer)
                merged = _stat_and_code(offer, decision, draft, rule_id)
                if merged is not None and not any(o.stat and o.code == offer.code for o in first):
                    first.append(merged)
            offered.add((offer.spec.action, offer.code))


def _wants_stat(content: CardContent, decision: Decision) -> bool:
    """Whether the rating card asks for the order to be made STAT (rule 1, an order not yet urgent)."""
    return decision.facts.order.priority not in ("stat", "asap") and any(s.action == "set-priority-stat" for s in content.suggestions)


def _rating_extras(offers: list[_Offer], content: CardContent, decision: Decision, draft: actions.Draft,
                   table: RuleTable, rule_id: str) -> None:
    """v2 "Ratings by modality": the rating card offers the usually appropriate study when the ordered
    one is rated lower (made STAT too under rule 1), unless the card already offers it; an unrated
    study (radiography) that is usually not appropriate, with nothing better, gets a cancel."""
    better = decision.better
    if better is not None and not any(o.code == better.code for o in offers):
        rating = PAMA_OF_ACR["UA"] if better.rated else None
        stat = _wants_stat(content, decision)
        label = table.texts["suggestion"].format(better=better.display, code=better.code)
        spec = Suggestion(key=f"better-{better.column}", label=label, action="replace-code", recommended=True)
        try:
            if stat:
                action = actions.stat_and_replace_code(draft, better.code, better.display, rating, rule_id)
                label = _stat_label(better.display, better.code)
            else:
                action = actions.replace_code(draft, better.code, better.display, rating, rule_id)
        except actions.InvalidOrder as exc:
            log.warning("better study dropped for %s: %s", decision.facts.order.reference, exc)
        else:
            offers.insert(0, _Offer(spec, _suggestion_json(label, True, action), code=better.code, display=better.display,
                                    rating=rating, stat=stat))
    cancel = not decision.rated and decision.acr == "UNA" and better is None
    if cancel and not any(o.spec.action == "delete-order" for o in offers):
        spec = Suggestion(key="cancel", label=_fill(table.texts["cancel"], decision, table), action="delete-order", recommended=False)
        offers.append(_Offer(spec, _suggestion_json(spec.label, False, actions.delete_order(draft))))


def _stat_label(display: str | None, code: str | None) -> str:
    """The label of a suggestion that makes the order STAT and changes its study."""
    return f"Make STAT and change to {display} ({code})"


def _stat_and_code(offer: _Offer, decision: Decision, draft: actions.Draft, rule_id: str) -> _Offer | None:
    try:
        action = actions.stat_and_replace_code(draft, offer.code or "", offer.display or "", offer.rating, rule_id)
    except actions.InvalidOrder as exc:
        log.warning("merged suggestion dropped for %s: %s", decision.facts.order.reference, exc)
        return None
    label = _stat_label(offer.display, offer.code)
    spec = Suggestion(key=f"stat-and-{offer.spec.key}", label=label, action="replace-code", recommended=True)
    return _Offer(spec, _suggestion_json(label, True, action), code=offer.code, display=offer.display, stat=True)


def _offers(content: CardContent, decision: Decision, draft: actions.Draft, modifier: Modifier | None,
            table: RuleTable) -> list[_Offer]:
    """The card's suggestions for these facts: conditions applied, recommended ones first."""
    facts = decision.facts
    out: list[_Offer] = []
    for spec in content.suggestions:
        if spec.omit_when and PREDICATES[spec.omit_when](facts):
            continue
        recommended = spec.recommended
        if spec.recommended_when:
            recommended = PREDICATES[spec.recommended_when](facts)
        if spec.recommended_unless and PREDICATES[spec.recommended_unless](facts):
            recommended = False
        offer = _suggestion(spec, recommended, decision, draft, modifier, table)
        if offer is not None:
            out.append(offer)
    if any(s.recommended_when for s in content.suggestions):
        out.sort(key=lambda o: not o.json["isRecommended"])  # stable: the recommended alternative first
    return out


def _card(
    content: CardContent,
    decision: Decision,
    table: RuleTable,
    prepared: Prepared,
    offers: list[_Offer],
    *,
    rating_card: bool,
) -> RenderedCard:
    facts = decision.facts
    suggestions = [o.json for o in offers]
    lead = table.sources[content.cites[0]]
    variant = next((v for v in content.variants if all(PREDICATES[w](facts) for w in v.when)), None)
    summary = (variant.summary if variant and variant.summary else None) or _lower_summary(content, decision, table, rating_card) \
        or content.summary
    card: dict[str, Any] = {
        "uuid": actions.random_uuid(),
        "summary": _fill(summary, decision, table),
        "detail": _detail(content, decision, prepared, table, rating_card=rating_card, variant=variant),
        "indicator": _indicator(content, decision, rating_card),
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
        card["overrideReasons"] = [
            {"system": r.system, "code": r.code, "display": r.display} for r in prepared.override_reasons[content.id]
        ]
    return RenderedCard(card=card, rule_id=content.id, suggestion_uuids=tuple(s["uuid"] for s in suggestions))


def _indicator(content: CardContent, decision: Decision, rating_card: bool) -> str:
    """v2: a rating card's indicator follows the ordered study's rating (usually not appropriate:
    warning; usually or may be appropriate: info), rated or not; rule 1 stays critical. Modifier cards
    keep their own."""
    if not rating_card or content.indicator == "critical":
        return content.indicator
    if decision.acr is not None:
        return "info" if PAMA_OF_ACR[decision.acr] == "appropriate" else "warning"
    return {"not-appropriate": "warning", "appropriate": "info"}.get(decision.rating or "", content.indicator)


def _lower_summary(content: CardContent, decision: Decision, table: RuleTable, rating_card: bool) -> str | None:
    """The summary of a rating card whose rule supports imaging but whose ordered study is rated below
    a usually appropriate one (e.g. a CT for suspected cancer); rule 1 keeps its own."""
    row, better = decision.row, decision.better
    if not rating_card or row is None or better is None or decision.acr in (None, "UA") or content.indicator == "critical":
        return None
    if decision.rule is None or decision.rule.rating != "appropriate":
        return None
    ordered = decision.ordered
    return table.texts["summary_lower"].format(ordered=ordered.short if ordered else decision.facts.order.code,
                                               rated=table.words[decision.acr], situation=row.situation, better=better.short)


def _fill(text: str, decision: Decision, table: RuleTable) -> str:
    """The text with {Study} and {study} naming the ordered study ("Lumbar CT", "lumbar CT") and
    {prior_date} the date of the latest prior lumbar study (the placeholders of rules/table.py)."""
    if "{prior_date}" in text:
        text = text.replace("{prior_date}", _prior_date(decision.facts))
    if "tudy}" not in text:
        return text
    ordered = decision.ordered
    label = ordered.label if ordered else "Lumbar imaging"
    return text.replace("{Study}", label).replace("{study}", label[:1].lower() + label[1:])


def _suggestion(spec: Suggestion, recommended: bool, decision: Decision, draft: actions.Draft, modifier: Modifier | None,
                table: RuleTable) -> _Offer | None:
    facts = decision.facts
    rule_id = decision.rule.id if decision.rule else "none"
    rating = decision.rating if spec.rating == "same-as-order" else spec.rating
    code = display = None
    try:
        match spec.action:
            case "delete-order":
                action = actions.delete_order(draft)
            case "refer-physical-therapy":
                action = actions.refer_physical_therapy(draft)
            case "set-priority-stat":
                if facts.order.priority in ("stat", "asap"):
                    return None  # already urgent (decision-rules.md rule 1)
                if decision.acr not in (None, "UA"):
                    return None  # v2: plain STAT only for a usually appropriate study; a better one carries it
                action = actions.set_priority_stat(draft, rating, rule_id)
            case "replace-code":
                code = (modifier.replace_with if modifier and modifier.replace_with else spec.code) or ""
                display = (modifier.replace_display if modifier and modifier.replace_with else spec.display) or code
                if code == facts.order.code:
                    return None  # already the study the card proposes
                target = table.by_code.get(code)
                offered = study_rating(decision.row, target, facts) if decision.row is not None and target is not None else None
                if spec.when_usually_appropriate and offered != "UA":
                    return None  # offered only where the variant rates that study usually appropriate
                if spec.rating == "as-rated":
                    rating = PAMA_OF_ACR[offered] if offered is not None and target is not None and target.rated else None
                action = actions.replace_code(draft, code, display, rating, rule_id)
            case "add-reason":
                action = actions.add_reason(draft, spec.reason or "")
            case _:
                return None
    except (actions.InvalidOrder, KeyError) as exc:
        log.warning("suggestion %s dropped for %s: %s", spec.key, facts.order.reference, exc)
        return None
    return _Offer(spec, _suggestion_json(_fill(spec.label, decision, table), recommended, action), code=code, display=display, rating=rating)


def _suggestion_json(label: str, recommended: bool, action: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "uuid": actions.random_uuid(), "isRecommended": recommended, "actions": [action]}


def _prior_date(facts: Facts) -> str:
    dates = [e.on for e in facts.findings.get(Finding.PRIOR_LUMBAR_IMAGING, ()) if e.on is not None]
    return max(dates).isoformat() if dates else "an earlier date"


def _detail(content: CardContent, decision: Decision, prepared: Prepared, table: RuleTable, *, rating_card: bool,
            variant: Variant | None = None) -> str:
    """v2 layout: the verdict; the facts that decided it; weaker risk factors found; what was looked
    for and not found, in one line; the ordered study and rating; what to do; ACR wording and sources."""
    facts = decision.facts
    verdict = (variant.verdict if variant and variant.verdict else None) or content.verdict
    advice = (variant.advice if variant and variant.advice else None) or content.advice
    parts = [_fill(verdict, decision, table)]
    deciding = _deciding(decision, prepared) if rating_card else set()
    why = _why_lines(facts, prepared, deciding, rating_card)
    if why:
        parts.append("**Why**\n\n" + "\n".join(why))
    # The rule (the clinical situation) supports imaging, whatever the ordered study's own rating: a red
    # flag was found, so none is listed as not found (v2 change 1).
    supports = decision.rule is not None and decision.rule.rating == "appropriate"
    if rating_card and not supports:
        weaker = [(f, label) for f, label in prepared.findings if f in facts.findings and f in WEAKER and f not in deciding]
        if weaker:
            parts.append(
                "**Found, does not by itself support immediate imaging** (ACP-2011: reassess after a trial of therapy):\n\n"
                + "\n".join(f"- {label}: {_evidence_text(facts.findings[f])}" for f, label in weaker)
            )
        absent = [short for finding, short in prepared.red_flags if finding not in facts.findings]
        if absent:
            parts.append("**Not found in the coded record:** " + ", ".join(absent) + ".")
    shown_weaker = rating_card and not supports
    others = [label for f, label in prepared.findings
              if f in facts.findings and f not in deciding and f not in _EPISODE and f not in _AGES
              and not (shown_weaker and f in WEAKER) and f not in _MODIFIER_FACTS]
    if rating_card and others:
        parts.append("**Also in the record:** " + "; ".join(others) + ".")
    if facts.unavailable:
        parts.append(
            "**Not available:** " + ", ".join(facts.unavailable)
            + ". The verdict was reached without this data; a finding recorded there was not seen."
        )
    system = _CODE_LABELS.get(facts.order.system, facts.order.system)
    column = decision.ordered
    ordered = f"{facts.order.display or (column.display if column else facts.order.code)} ({system} {facts.order.code})"
    rating = ""
    if rating_card and decision.rating:
        rating = f" Rating recorded: **{RATING_WORDS[decision.rating]}**."
    elif rating_card and not decision.rated:
        rating = " " + table.texts["unrated"]
    parts.append(f"**Ordered study:** {ordered}.{rating}")
    if rating_card and decision.row is not None and decision.acr is not None:
        lines = [table.texts["ordered"].format(variant=decision.row.variant, rated=table.words[decision.acr])]
        if decision.better is not None:
            lines.append(table.texts["better"].format(better=decision.better.display, code=decision.better.code))
        parts.append(" ".join(lines))
    if advice:
        parts.append(_fill(advice, decision, table))
    parts.append(f"**ACR rating:** {_fill(content.acr_rating, decision, table)}")
    parts.append(prepared.closing[content.id])
    return "\n\n".join(parts)


def _deciding(decision: Decision, prepared: Prepared) -> set[Finding]:
    """The facts read by the predicates of the matched rule that hold (an `any` list: those that hold)."""
    if decision.rule is None:
        return set()
    out: set[Finding] = set()
    for name in prepared.deciding.get(decision.rule.id, ()):
        if PREDICATES[name](decision.facts):  # prepare() already left out weaker_risk_factor
            out.update(f for f in READS[name] if f in decision.facts.findings)
    return out


def _why_lines(facts: Facts, prepared: Prepared, deciding: set[Finding], rating_card: bool) -> list[str]:
    """The facts that decided the verdict (a modifier card: its own facts), each with its source."""
    lines = []
    if facts.age is not None and rating_card:
        lines.append(f"- Age {facts.age}" + (f", {facts.sex}" if facts.sex else ""))
    episode = facts.findings.get(Finding.BACK_PAIN) if rating_card else None
    if episode:
        if facts.episode_start is not None:
            lines.append(f"- Back pain episode since {facts.episode_start.isoformat()} ({facts.episode_days} days): {_evidence_text(episode)}")
        else:
            lines.append(f"- Back pain episode of unknown duration (no dated diagnosis): {_evidence_text(episode)}")
    for finding, label in prepared.findings:
        evidence = facts.findings.get(finding)
        if not evidence or finding in _AGES:
            continue
        if (finding in deciding and finding is not Finding.BACK_PAIN) or (not rating_card and finding in _MODIFIER_FACTS):
            lines.append(f"- {label}: {_evidence_text(evidence)}")
    return lines


def _evidence_text(evidence: tuple[Evidence, ...]) -> str:
    shown = [f"{e.text} ({e.reference}{', ' + e.on.isoformat() if e.on else ''})" for e in evidence[:EVIDENCE_SHOWN]]
    more = len(evidence) - EVIDENCE_SHOWN
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
WEAKER = frozenset(WEAKER_RISK_FACTORS)
_EPISODE = frozenset({Finding.BACK_PAIN, Finding.RADICULOPATHY})
_AGES = frozenset({Finding.AGE_OVER_50, Finding.OLDER_AGE})  # the age line says it
_MODIFIER_FACTS = frozenset({Finding.PREGNANCY, Finding.PRIOR_LUMBAR_IMAGING})

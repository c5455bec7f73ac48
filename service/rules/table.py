"""Load and check the rule table and the card content in ``cards/``, once, at start-up.

Every problem is reported with its file and key, all of them at once (as Synthea's ValidationTest
lists every message), as a ``ConfigError``; never an ``assert``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.errors import ConfigError
from service.rules.predicates import PREDICATES
from service.rules.vocabulary import ACTIONS
from service.rules.vocabulary import REASON_KEYS

RATINGS = ("appropriate", "not-appropriate", "no-criteria-apply", "none")
INDICATORS = ("info", "warning", "critical")
SUMMARY_LIMIT = 140  # CDS Hooks 2.0: summary "<140 characters"
PLACEHOLDERS = ("{prior_date}",)


def default_cards_dir() -> Path:
    """The one place the cards/ location is set: package data of ``service.cards``."""
    return Path(str(resources.files("service.cards")))


@dataclass(frozen=True, slots=True, kw_only=True)
class When:
    all: tuple[str, ...] = ()
    any: tuple[str, ...] = ()
    none: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    id: str               # = source.topic.code = the feedback and report key
    rating: str           # appropriate | not-appropriate | no-criteria-apply | none (no rating)
    card: bool            # False: no card (rule 10)
    when: When


@dataclass(frozen=True, slots=True, kw_only=True)
class Modifier:
    id: str
    when: When
    rules: tuple[str, ...] = ()       # only after these rating rules (empty: any)
    not_rules: tuple[str, ...] = ()   # never after these
    unless: tuple[str, ...] = ()      # not when these modifiers fired for the order
    replace_with: str | None = None   # CPT code for a replace-code suggestion
    replace_display: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    key: str
    label: str
    action: str
    recommended: bool
    code: str | None = None       # replace-code
    display: str | None = None    # replace-code
    reason: str | None = None     # add-reason
    rating: str | None = None     # rating carried by the updated order: a code, or "same-as-order"
    recommended_when: str | None = None   # predicate: recommended (and listed first) when it holds
    recommended_unless: str | None = None # predicate: not recommended when it holds
    omit_when: str | None = None          # predicate: left out when it holds


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    key: str
    label: str
    url: str
    citation: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """Card wording used instead of the card's own when a predicate holds (e.g. a weaker risk factor)."""

    when: str                  # predicate name
    summary: str | None = None
    verdict: str | None = None
    advice: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CardContent:
    id: str
    indicator: str
    summary: str
    verdict: str
    acr_rating: str
    advice: str | None
    cites: tuple[str, ...]
    override_reasons: tuple[str, ...]   # codes of override-reasons.toml offered on this card, in order
    suggestions: tuple[Suggestion, ...]
    variants: tuple[Variant, ...] = ()  # v2: wording for particular facts; the first whose `when` holds


@dataclass(frozen=True, slots=True, kw_only=True)
class FindingLabel:
    label: str
    looked_for: str
    red_flag: bool
    short: str = ""      # a few words, for the card's one-line "not found in the coded record"


@dataclass(frozen=True, slots=True, kw_only=True)
class OverrideReason:
    system: str
    code: str
    display: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleTable:
    rules: tuple[Rule, ...]
    modifiers: tuple[Modifier, ...]
    cards: Mapping[str, CardContent]
    sources: Mapping[str, Source]
    findings: Mapping[str, FindingLabel]
    override_reasons: tuple[OverrideReason, ...]


class _Problems:
    """Collects every problem before failing once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self, directory: Path) -> None:
        if self.items:
            raise ConfigError(f"card content in {directory} is invalid:\n  " + "\n  ".join(self.items))


def load_table(directory: Path | None = None) -> RuleTable:
    """Read cards/, check it all, and return the rule table."""
    directory = directory or default_cards_dir()
    problems = _Problems()
    raw_rules = _read(directory / "rules.toml", problems)
    rules = tuple(_rule(r, n, problems) for n, r in enumerate(_array(raw_rules, "rule", "rules.toml", problems)))
    modifiers = tuple(_modifier(m, n, problems) for n, m in enumerate(_array(raw_rules, "modifier", "rules.toml", problems)))
    sources = {k: _source(k, v, problems) for k, v in _read(directory / "sources.toml", problems).items()}
    findings = {k: _finding(k, v, problems) for k, v in _read(directory / "findings.toml", problems).items()}
    reasons = _override_reasons(_read(directory / "override-reasons.toml", problems), problems)
    card_ids = [r.id for r in rules if r.card] + list(dict.fromkeys(m.id for m in modifiers))
    codes = {r.code for r in reasons}
    cards = {cid: _card(directory / f"{cid}.toml", cid, sources, codes, problems) for cid in card_ids}
    _check_references(rules, modifiers, problems)
    problems.raise_if_any(directory)
    return RuleTable(
        rules=rules,
        modifiers=modifiers,
        cards={k: v for k, v in cards.items() if v is not None},
        sources=sources,
        findings=findings,
        override_reasons=reasons,
    )


def _read(path: Path, problems: _Problems) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.add(path.name, "file missing")
    except tomllib.TOMLDecodeError as exc:
        problems.add(path.name, f"not valid TOML: {exc}")
    return {}


def _array(raw: Mapping[str, Any], key: str, where: str, problems: _Problems) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.add(where, f"[[{key}]] must be an array of tables")
        return []
    return value


def _when(raw: Any, where: str, problems: _Problems) -> When:
    if not isinstance(raw, dict) or not raw:
        problems.add(where, "`when` must be a table with all/any/none")
        return When()
    for key, names in raw.items():
        if key not in ("all", "any", "none"):
            problems.add(where, f"`when.{key}` is not all/any/none")
        elif not isinstance(names, list):
            problems.add(where, f"`when.{key}` must be an array of predicate names")
        else:
            for name in names:
                if name not in PREDICATES:
                    problems.add(where, f"unknown predicate {name!r} in when.{key}")
    return When(**{k: tuple(v) for k, v in raw.items() if k in ("all", "any", "none") and isinstance(v, list)})


def _rule(raw: Mapping[str, Any], n: int, problems: _Problems) -> Rule:
    where = f"rules.toml rule[{n}] ({raw.get('id', '?')})"
    if raw.get("rating") not in RATINGS:
        problems.add(where, f"rating must be one of {', '.join(RATINGS)}")
    return Rule(
        id=str(raw.get("id", "")),
        rating=str(raw.get("rating", "none")),
        card=bool(raw.get("card", True)),
        when=_when(raw.get("when"), where, problems),
    )


def _modifier(raw: Mapping[str, Any], n: int, problems: _Problems) -> Modifier:
    where = f"rules.toml modifier[{n}] ({raw.get('id', '?')})"
    return Modifier(
        id=str(raw.get("id", "")),
        when=_when(raw.get("when"), where, problems),
        rules=tuple(raw.get("rules", ())),
        not_rules=tuple(raw.get("not_rules", ())),
        unless=tuple(raw.get("unless", ())),
        replace_with=raw.get("replace_with"),
        replace_display=raw.get("replace_display"),
    )


def _check_references(rules: tuple[Rule, ...], modifiers: tuple[Modifier, ...], problems: _Problems) -> None:
    rule_ids = [r.id for r in rules]
    if len(set(rule_ids)) != len(rule_ids):
        problems.add("rules.toml", "rule ids must be unique")
    modifier_ids = {m.id for m in modifiers}
    for m in modifiers:
        for rid in (*m.rules, *m.not_rules):
            if rid not in rule_ids:
                problems.add("rules.toml", f"modifier {m.id} names unknown rule {rid!r}")
        for mid in m.unless:
            if mid not in modifier_ids:
                problems.add("rules.toml", f"modifier {m.id} names unknown modifier {mid!r}")


def _source(key: str, raw: Any, problems: _Problems) -> Source:
    where = f"sources.toml [{key}]"
    if not isinstance(raw, dict):
        problems.add(where, "must be a table")
        raw = {}
    url = str(raw.get("url", ""))
    if urlsplit(url).scheme != "https" or not urlsplit(url).netloc:
        problems.add(where, f"url must be an absolute https URL, not {url!r}")
    for field in ("label", "citation"):
        if not isinstance(raw.get(field), str) or not raw[field]:
            problems.add(where, f"{field} is required")
    return Source(key=key, label=str(raw.get("label", "")), url=url, citation=str(raw.get("citation", "")))


def _finding(key: str, raw: Any, problems: _Problems) -> FindingLabel:
    if not isinstance(raw, dict) or not isinstance(raw.get("label"), str) or not isinstance(raw.get("looked_for"), str):
        problems.add(f"findings.toml [{key}]", "needs label and looked_for strings")
        raw = {}
    return FindingLabel(label=raw.get("label", key), looked_for=raw.get("looked_for", key), red_flag=bool(raw.get("red_flag", False)),
                        short=str(raw.get("short") or raw.get("label", key)))


def _override_reasons(raw: Mapping[str, Any], problems: _Problems) -> tuple[OverrideReason, ...]:
    system = raw.get("system")
    if not isinstance(system, str) or ":" not in system:
        problems.add("override-reasons.toml", "system must be a URI")
    out = []
    for n, reason in enumerate(_array(raw, "reason", "override-reasons.toml", problems)):
        if not isinstance(reason.get("code"), str) or not isinstance(reason.get("display"), str):
            problems.add(f"override-reasons.toml reason[{n}]", "needs code and display")
            continue
        out.append(OverrideReason(system=str(system), code=reason["code"], display=reason["display"]))
    if not out:
        problems.add("override-reasons.toml", "at least one [[reason]] is required")
    return tuple(out)


def _card(path: Path, card_id: str, sources: Mapping[str, Source], reasons: set[str], problems: _Problems) -> CardContent | None:
    raw = _read(path, problems)
    if not raw:
        return None
    where = path.name
    if raw.get("id") != card_id:
        problems.add(where, f"id must be {card_id!r} (the file name)")
    if raw.get("indicator") not in INDICATORS:
        problems.add(where, f"indicator must be one of {', '.join(INDICATORS)}")
    for field in ("summary", "verdict", "acr_rating"):
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            problems.add(where, f"{field} is required")
    summary = str(raw.get("summary", ""))
    longest = summary.replace("{prior_date}", "2026-12-31")
    if len(longest) >= SUMMARY_LIMIT:
        problems.add(where, f"summary has {len(longest)} characters; it must stay under {SUMMARY_LIMIT}")
    variants = tuple(_variant(v, n, where, problems) for n, v in enumerate(_array(raw, "variant", where, problems)))
    for field in ("summary", "verdict", "acr_rating", "advice"):
        text = str(raw.get(field, "")).replace("{prior_date}", "")
        if "{" in text or "}" in text:
            problems.add(where, f"{field}: the only placeholder allowed is {{prior_date}}")
    cites = raw.get("cites")
    if not isinstance(cites, list) or not cites:
        problems.add(where, "cites must name at least one source")
        cites = []
    for key in cites:
        if key not in sources:
            problems.add(where, f"cites unknown source {key!r} (not in sources.toml)")
    offered = raw.get("override_reasons", [])
    if not isinstance(offered, list) or not all(isinstance(c, str) for c in offered):
        problems.add(where, "override_reasons must be a list of reason codes")
        offered = []
    for code in offered:
        if code not in reasons:
            problems.add(where, f"override reason {code!r} is not in override-reasons.toml")
    if raw.get("indicator") == "warning" and not offered:
        problems.add(where, "a warning card needs override_reasons (decision-rules.md)")
    suggestions = tuple(_suggestion(s, n, where, problems) for n, s in enumerate(_array(raw, "suggestion", where, problems)))
    return CardContent(
        id=card_id,
        indicator=str(raw.get("indicator", "info")),
        summary=summary,
        verdict=str(raw.get("verdict", "")),
        acr_rating=str(raw.get("acr_rating", "")),
        advice=raw.get("advice") or None,
        cites=tuple(cites),
        override_reasons=tuple(offered),
        suggestions=suggestions,
        variants=variants,
    )


def _variant(raw: Mapping[str, Any], n: int, card: str, problems: _Problems) -> Variant:
    where = f"{card} variant[{n}] ({raw.get('when', '?')})"
    if raw.get("when") not in PREDICATES:
        problems.add(where, f"when names unknown predicate {raw.get('when')!r}")
    for field in ("summary", "verdict", "advice"):
        value = raw.get(field)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.add(where, f"{field} must be text")
        elif isinstance(value, str) and ("{" in value or "}" in value):
            problems.add(where, f"{field}: no placeholder is allowed in a variant")
    summary = raw.get("summary")
    if isinstance(summary, str) and len(summary) >= SUMMARY_LIMIT:
        problems.add(where, f"summary has {len(summary)} characters; it must stay under {SUMMARY_LIMIT}")
    return Variant(when=str(raw.get("when", "")), summary=raw.get("summary"), verdict=raw.get("verdict"), advice=raw.get("advice"))


def _suggestion(raw: Mapping[str, Any], n: int, card: str, problems: _Problems) -> Suggestion:
    where = f"{card} suggestion[{n}] ({raw.get('key', '?')})"
    action = raw.get("action")
    if action not in ACTIONS:
        problems.add(where, f"action must be one of {', '.join(ACTIONS)}")
    if not isinstance(raw.get("label"), str) or not raw["label"]:
        problems.add(where, "label is required")
    if action == "replace-code" and not isinstance(raw.get("code"), str):
        problems.add(where, "replace-code needs a CPT code")
    if action == "add-reason" and raw.get("reason") not in REASON_KEYS:
        problems.add(where, f"add-reason needs reason = one of {', '.join(REASON_KEYS)}")
    for field in ("recommended_when", "recommended_unless", "omit_when"):
        if raw.get(field) is not None and raw.get(field) not in PREDICATES:
            problems.add(where, f"{field} names unknown predicate {raw.get(field)!r}")
    if raw.get("rating") not in (None, "same-as-order", "appropriate", "not-appropriate", "no-criteria-apply"):
        problems.add(where, "rating must be appropriate, not-appropriate, no-criteria-apply or same-as-order")
    return Suggestion(
        key=str(raw.get("key", n)),
        label=str(raw.get("label", "")),
        action=str(action),
        recommended=bool(raw.get("recommended", False)),
        code=raw.get("code"),
        display=raw.get("display"),
        reason=raw.get("reason"),
        rating=raw.get("rating"),
        recommended_when=raw.get("recommended_when"),
        recommended_unless=raw.get("recommended_unless"),
        omit_when=raw.get("omit_when"),
    )

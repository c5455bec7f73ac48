"""Load and check the rule table and the card content in ``cards/``, once, at start-up.

Every problem is reported with its file and key, all of them at once (as Synthea's ValidationTest
lists every message), as a ``ConfigError``; never an ``assert``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
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
# Placeholders a card's text may hold: the date of the earlier study, and the ordered study
# ("Lumbar CT" at the start of a sentence, "lumbar CT" inside one).
RULES_FILE = "rules.toml"  # the rule table the service applies (every service of cards/services.toml)
PLACEHOLDERS = ("{prior_date}", "{Study}", "{study}")
PLACEHOLDER_LONGEST = {"{prior_date}": "2026-12-31", "{Study}": "Lumbar radiographs", "{study}": "lumbar radiographs"}
ACR_RATINGS = ("UA", "MBA", "UNA")  # usually appropriate, may be appropriate, usually not appropriate
RATING_RANK = {"UA": 2, "MBA": 1, "UNA": 0}
RATING_TEXTS = ("summary_lower", "ordered", "better", "unrated", "suggestion", "cancel")  # ratings.toml [text]


def default_cards_dir() -> Path:
    """The one place the cards/ location is set: package data of ``service.cards``."""
    return Path(str(resources.files("service.cards")))


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyColumn:
    """A study of the rating table (cards/ratings.toml [study.<column>])."""

    column: str            # e.g. "ct-without": model.Study.column of the orders it rates
    modality: str          # mri | ct | xr
    label: str             # "Lumbar CT": how cards name an order of this study
    code: str              # the CPT code a suggestion that offers this study orders
    display: str
    short: str = ""        # "CT without contrast": its name in a summary, after "Lumbar"
    rated: bool = True     # False: cards only, never a PAMA rating (radiography)
    pregnancy: bool = False  # the study offered instead in pregnancy (no radiation, no contrast: ACOG-723)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """The ACR rating of one study in one row: the first `choices` predicate that holds, else `otherwise`."""

    otherwise: str
    choices: tuple[tuple[str, str], ...] = ()   # (predicate name, rating)

    @property
    def ratings(self) -> set[str]:
        """Every rating the cell can give."""
        return {self.otherwise, *(r for _, r in self.choices)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RatingRow:
    """A row of "Ratings by modality": the ACR rating of every study in the variant a rule stands for."""

    rule: str
    variant: str           # the ACR variant in words, shown on the card
    situation: str         # a few words for a summary ("suspected cauda equina")
    source: str            # sources.toml key
    source_detail: str     # where in the source the row was read
    cells: Mapping[str, Cell]
    may_be_usual: tuple[StudyColumn, ...] = ()  # the studies some cell may rate UA, in the order of preference


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
    better_rated: bool = False        # only when `replace_with` is rated above the ordered study in the row


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    key: str
    label: str
    action: str
    recommended: bool
    code: str | None = None       # replace-code
    display: str | None = None    # replace-code
    reason: str | None = None     # add-reason
    rating: str | None = None     # rating carried by the updated order: a code, "same-as-order", or
                                  # "as-rated" (the offered study's rating in the row)
    recommended_when: str | None = None   # predicate: recommended (and listed first) when it holds
    recommended_unless: str | None = None # predicate: not recommended when it holds
    omit_when: str | None = None          # predicate: left out when it holds
    when_usually_appropriate: bool = False  # replace-code: offered only when the row rates its study UA


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    key: str
    label: str
    url: str
    citation: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """Card wording used instead of the card's own when a predicate holds (e.g. a weaker risk factor)."""

    when: tuple[str, ...]      # predicate names, all of which hold
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
    studies: Mapping[str, StudyColumn] = field(default_factory=dict)   # file order: the order of preference
    ratings: Mapping[str, RatingRow] = field(default_factory=dict)     # rule id -> its row
    by_code: Mapping[str, StudyColumn] = field(default_factory=dict)   # CPT code -> the study it orders
    texts: Mapping[str, str] = field(default_factory=dict)             # ratings.toml [text]
    words: Mapping[str, str] = field(default_factory=dict)             # ACR rating -> words on a card


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
    raw_rules = _read(directory / RULES_FILE, problems)
    rules = tuple(_rule(r, n, problems) for n, r in enumerate(_array(raw_rules, "rule", "rules.toml", problems)))
    modifiers = tuple(_modifier(m, n, problems) for n, m in enumerate(_array(raw_rules, "modifier", "rules.toml", problems)))
    sources = {k: _source(k, v, problems) for k, v in _read(directory / "sources.toml", problems).items()}
    findings = {k: _finding(k, v, problems) for k, v in _read(directory / "findings.toml", problems).items()}
    reasons = _override_reasons(_read(directory / "override-reasons.toml", problems), problems)
    card_ids = [r.id for r in rules if r.card] + list(dict.fromkeys(m.id for m in modifiers))
    codes = {r.code for r in reasons}
    cards = {cid: _card(directory / f"{cid}.toml", cid, sources, codes, problems) for cid in card_ids}
    _check_references(rules, modifiers, problems)
    raw_ratings = _read(directory / "ratings.toml", problems)
    studies, ratings = _rating_table(raw_ratings, [r.id for r in rules], sources, problems)
    texts = _texts(raw_ratings, "text", RATING_TEXTS, problems)
    words = _texts(raw_ratings, "words", ACR_RATINGS, problems)
    _check_summary_lower(texts, words, studies, ratings, problems)
    for m in modifiers:
        if m.better_rated and m.replace_with not in {s.code for s in studies.values()}:
            problems.add("rules.toml", f"modifier {m.id}: better_rated needs replace_with naming a study of ratings.toml")
    problems.raise_if_any(directory)
    return RuleTable(
        rules=rules,
        modifiers=modifiers,
        cards={k: v for k, v in cards.items() if v is not None},
        sources=sources,
        findings=findings,
        override_reasons=reasons,
        studies=studies,
        ratings=ratings,
        by_code={s.code: s for s in studies.values()},
        texts=texts,
        words=words,
    )


def _texts(raw: Mapping[str, Any], table: str, keys: tuple[str, ...], problems: _Problems) -> dict[str, str]:
    values = raw.get(table, {})
    out = {k: v for k, v in values.items() if isinstance(v, str) and v} if isinstance(values, dict) else {}
    for key in keys:
        if key not in out:
            problems.add(f"ratings.toml [{table}]", f"{key} is required")
    return out


def _check_summary_lower(texts: Mapping[str, str], words: Mapping[str, str], studies: Mapping[str, StudyColumn],
                         rows: Mapping[str, RatingRow], problems: _Problems) -> None:
    """The generic summary stays under the limit for every row, lower-rated study and usually appropriate one."""
    template = texts.get("summary_lower", "")
    for row in rows.values():
        for ordered in studies.values():
            for better in studies.values():
                lower = row.cells[ordered.column].ratings - {"UA"}
                if better is ordered or not lower or "UA" not in row.cells[better.column].ratings:
                    continue
                text = template.format(ordered=ordered.short, rated=max((words.get(r, "") for r in lower), key=len),
                                       situation=row.situation, better=better.short, code=better.code)
                if len(text) >= SUMMARY_LIMIT:
                    problems.add("ratings.toml [text] summary_lower", f"{len(text)} characters for {row.rule}: {text!r}")
                    return


def _rating_table(
    raw: Mapping[str, Any], rule_ids: list[str], sources: Mapping[str, Source], problems: _Problems
) -> tuple[dict[str, StudyColumn], dict[str, RatingRow]]:
    """cards/ratings.toml: the studies (columns) and one row per rating rule, every cell checked."""
    studies: dict[str, StudyColumn] = {}
    raw_studies = raw.get("study", {})
    for column, spec in (raw_studies.items() if isinstance(raw_studies, dict) else ()):
        where = f"ratings.toml [study.{column}]"
        if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) and spec[k] for k in ("modality", "label", "code", "display")):
            problems.add(where, "needs modality, label, code and display")
            continue
        studies[column] = StudyColumn(column=column, modality=spec["modality"], label=spec["label"], code=spec["code"],
                                      display=spec["display"], short=str(spec.get("short") or spec["display"]), rated=bool(spec.get("rated", True)),
                                      pregnancy=bool(spec.get("pregnancy", False)))
    if not studies:
        problems.add("ratings.toml", "at least one [study.<column>] is required")
    rows: dict[str, RatingRow] = {}
    for n, row in enumerate(_array(raw, "row", "ratings.toml", problems)):
        where = f"ratings.toml row[{n}] ({row.get('rule', '?')})"
        rule = row.get("rule")
        if rule not in rule_ids:
            problems.add(where, f"rule {rule!r} is not a rule of rules.toml")
        elif rule in rows:
            problems.add(where, "a rule has one row")
        if row.get("source") not in sources:
            problems.add(where, f"source {row.get('source')!r} is not in sources.toml")
        for key in ("variant", "situation", "source_detail"):
            if not isinstance(row.get(key), str) or not row[key]:
                problems.add(where, f"{key} is required")
        cells = {column: _cell(row.get(column), f"{where} {column}", problems) for column in studies}
        extra = set(row) - set(studies) - {"rule", "variant", "situation", "source", "source_detail"}
        if extra:
            problems.add(where, f"unknown columns {sorted(extra)} (not a [study.<column>])")
        usual = tuple(s for s in studies.values() if "UA" in cells[s.column].ratings)
        rows[str(rule)] = RatingRow(rule=str(rule), variant=str(row.get("variant", "")), situation=str(row.get("situation", "")),
                                    source=str(row.get("source", "")), source_detail=str(row.get("source_detail", "")), cells=cells,
                                    may_be_usual=usual)
    return studies, rows


def _cell(raw: Any, where: str, problems: _Problems) -> Cell:
    if isinstance(raw, str):
        if raw not in ACR_RATINGS:
            problems.add(where, f"must be one of {', '.join(ACR_RATINGS)}")
        return Cell(otherwise=raw)
    if isinstance(raw, dict) and raw.get("otherwise") in ACR_RATINGS:
        choices = tuple((k, v) for k, v in raw.items() if k != "otherwise")
        for name, rating in choices:
            if name not in PREDICATES:
                problems.add(where, f"unknown predicate {name!r}")
            if rating not in ACR_RATINGS:
                problems.add(where, f"{name} must be one of {', '.join(ACR_RATINGS)}")
        return Cell(otherwise=raw["otherwise"], choices=choices)
    problems.add(where, f"a rating ({', '.join(ACR_RATINGS)}) or a table of predicate = rating with `otherwise` is required")
    return Cell(otherwise="UNA")


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
        better_rated=bool(raw.get("better_rated", False)),
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
    for name in ("label", "citation"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            problems.add(where, f"{name} is required")
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
    for name in ("summary", "verdict", "acr_rating"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            problems.add(where, f"{name} is required")
    summary = str(raw.get("summary", ""))
    longest = _longest(summary)
    if len(longest) >= SUMMARY_LIMIT:
        problems.add(where, f"summary has {len(longest)} characters; it must stay under {SUMMARY_LIMIT}")
    variants = tuple(_variant(v, n, where, problems) for n, v in enumerate(_array(raw, "variant", where, problems)))
    for name in ("summary", "verdict", "acr_rating", "advice"):
        if not _placeholders_ok(str(raw.get(name, ""))):
            problems.add(where, f"{name}: the only placeholders allowed are {', '.join(PLACEHOLDERS)}")
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


def _longest(text: str) -> str:
    """The text with each placeholder replaced by its longest value (for the summary limit)."""
    for name, value in PLACEHOLDER_LONGEST.items():
        text = text.replace(name, value)
    return text


def _placeholders_ok(text: str) -> bool:
    for name in PLACEHOLDERS:
        text = text.replace(name, "")
    return "{" not in text and "}" not in text


def _variant(raw: Mapping[str, Any], n: int, card: str, problems: _Problems) -> Variant:
    where = f"{card} variant[{n}] ({raw.get('when', '?')})"
    when = raw.get("when")
    names = (when,) if isinstance(when, str) else tuple(when) if isinstance(when, list) else ()
    if not names or any(name not in PREDICATES for name in names):
        problems.add(where, f"when must name predicates (one, or a list that must all hold), not {when!r}")
    for name in ("summary", "verdict", "advice"):
        value = raw.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.add(where, f"{name} must be text")
        elif isinstance(value, str) and not _placeholders_ok(value.replace("{prior_date}", "{")):
            problems.add(where, f"{name}: the only placeholders allowed in a variant are {{Study}} and {{study}}")
    summary = raw.get("summary")
    if isinstance(summary, str) and len(_longest(summary)) >= SUMMARY_LIMIT:
        problems.add(where, f"summary has {len(_longest(summary))} characters; it must stay under {SUMMARY_LIMIT}")
    return Variant(when=tuple(str(n) for n in names), summary=raw.get("summary"), verdict=raw.get("verdict"), advice=raw.get("advice"))


def _suggestion(raw: Mapping[str, Any], n: int, card: str, problems: _Problems) -> Suggestion:
    where = f"{card} suggestion[{n}] ({raw.get('key', '?')})"
    action = raw.get("action")
    if action not in ACTIONS:
        problems.add(where, f"action must be one of {', '.join(ACTIONS)}")
    if not isinstance(raw.get("label"), str) or not raw["label"]:
        problems.add(where, "label is required")
    elif not _placeholders_ok(raw["label"].replace("{prior_date}", "{")):
        problems.add(where, "label: the only placeholders allowed are {Study} and {study}")
    if action == "replace-code" and not isinstance(raw.get("code"), str):
        problems.add(where, "replace-code needs a CPT code")
    if action == "add-reason" and raw.get("reason") not in REASON_KEYS:
        problems.add(where, f"add-reason needs reason = one of {', '.join(REASON_KEYS)}")
    for name in ("recommended_when", "recommended_unless", "omit_when"):
        if raw.get(name) is not None and raw.get(name) not in PREDICATES:
            problems.add(where, f"{name} names unknown predicate {raw.get(name)!r}")
    if raw.get("rating") not in (None, "same-as-order", "as-rated", "appropriate", "not-appropriate", "no-criteria-apply"):
        problems.add(where, "rating must be appropriate, not-appropriate, no-criteria-apply, same-as-order or as-rated")
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
        when_usually_appropriate=bool(raw.get("when_usually_appropriate", False)),
    )

"""Card and feedback analytics: the data behind ``lumbar-mri-cds report``.

How outcomes are counted
------------------------
- A report covers the cards *issued* in the period (``since`` and ``until`` are inclusive UTC dates)
  and whatever feedback those cards received, whenever it arrived: a cohort view, so a rule's
  ``accepted + overridden`` never exceeds its ``cards`` and the acceptance rate is a true share.
- A card counts once. When a client sends several feedback items for one card (CDS Hooks lets a card
  that was first ignored be acted on later), the latest wins: greatest ``outcomeTimestamp``, then the
  one received last. ``override_reasons`` counts the reason code of those latest ``overridden``
  outcomes; an override without a coded reason adds to ``overridden`` only.
- Every count is also given per **modality** of the ordered study (``mri``, ``ct``, ``xr``, stored
  with each card since schema 2; ``unknown`` for a card stored without it), within each rule and over
  all rules (``modalities``).
- ``feedback_total`` is the number of cards with a counted outcome (= the sum of ``accepted`` and
  ``overridden`` over all rules); ``acceptance_rate`` = accepted / (accepted + overridden), left out
  when a rule has no feedback.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from datetime import timezone
from typing import Any

import sqlalchemy as sa

from service.store import schema

NO_FEEDBACK = "none"  # the outcome of a card nobody gave feedback on (weekly chart)


# A card issued again for the same patient, rule and CDS service, by the same issuer and tenant,
# within this time of the previous one is a re-fire of the same decision, not a new one: EHRs call
# order-select again whenever the order form changes, and the CDS Hooks sandbox does so on every
# edit, each time with a new hookInstance (so hookInstance alone cannot tell re-fires apart). Ten
# minutes covers one ordering session; the same study ordered again later counts again.
# `report --dedup-minutes` changes it (0: every card counts).
DEDUP_WINDOW = timedelta(minutes=10)


@dataclass(slots=True, kw_only=True)
class Decision:
    """One decision: a card, with the re-fires of it that followed."""

    rule_id: str
    modality: str                        # of the ordered study (mri | ct | xr | unknown), from its first card
    first_issued: datetime               # when its first card was issued (the week it counts in)
    cards: int = 1                       # cards issued for it (1 + re-fires)
    outcome: str | None = None           # the latest feedback on any of its cards, if any
    override_code: str | None = None
    outcome_key: tuple[Any, ...] = ()    # (outcomeTimestamp, arrival id) of that feedback


def decisions(
    engine: sa.Engine, *, since: date | None = None, until: date | None = None, dedup: timedelta = DEDUP_WINDOW
) -> list[Decision]:
    """The decisions behind the cards issued in the period, in the order they were first issued.

    Cards of one hook call are separate decisions (one per order); a later call's cards with the
    same key join the decisions of the previous call, in order, if it came within `dedup`.
    """
    cards, latest = schema.cards, _latest_feedback()
    query = (
        sa.select(cards.c.rule_id, sa.func.coalesce(cards.c.modality, UNKNOWN_MODALITY).label("modality"), cards.c.service_id, cards.c.issuer, cards.c.tenant, cards.c.patient_hash,
                  cards.c.hook_instance, cards.c.issued_at, latest.c.outcome, latest.c.override_code,
                  latest.c.outcome_timestamp, latest.c.id)
        .select_from(cards.outerjoin(latest, latest.c.card_uuid == cards.c.card_uuid))
        .where(*_window(since, until))
        .order_by(cards.c.issued_at, cards.c.card_uuid)
    )
    found: list[Decision] = []
    chains: dict[tuple[Any, ...], _Chain] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            issued = _utc(row.issued_at)
            key = (row.rule_id, row.service_id, row.issuer, row.tenant, row.patient_hash)
            chain = chains.get(key) if row.patient_hash is not None else None  # no patient: no telling
            if chain is not None and row.hook_instance == chain.instance:
                position = chain.position  # another card of the same call: the next order's
            elif chain is not None and issued - chain.last <= dedup:
                chain.instance, position = row.hook_instance, 0  # a re-fire: its cards join in order
            else:
                chain, position = _Chain(instance=row.hook_instance, last=issued), 0
                if row.patient_hash is not None:
                    chains[key] = chain
            if position < len(chain.members):
                decision = chain.members[position]
                decision.cards += 1
            else:
                decision = Decision(rule_id=row.rule_id, modality=row.modality, first_issued=issued)
                chain.members.append(decision)
                found.append(decision)
            chain.position, chain.last = position + 1, issued
            _take_outcome(decision, row)
    return found


@dataclass(slots=True, kw_only=True)
class _Chain:
    instance: str                                           # hookInstance of the latest call
    last: datetime                                          # when its latest card was issued
    position: int = 0                                       # cards of that call seen so far
    members: list[Decision] = field(default_factory=list)   # the decisions, one per card of a call


def _take_outcome(decision: Decision, row: Any) -> None:
    if row.outcome is None:
        return
    key = (_utc(row.outcome_timestamp), row.id)
    if decision.outcome is None or key > decision.outcome_key:
        decision.outcome, decision.override_code, decision.outcome_key = row.outcome, row.override_code, key


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def build_report(
    engine: sa.Engine, *, since: date | None = None, until: date | None = None, dedup: timedelta = DEDUP_WINDOW
) -> dict[str, Any]:
    """Per rule id, and per modality of the ordered study within it and over all rules: decisions (cards,
    re-fires counted once), accepted, overridden, override reasons, acceptance rate, and the re-fires
    left out."""
    return summarize(decisions(engine, since=since, until=until, dedup=dedup))


def summarize(found: Iterable[Decision]) -> dict[str, Any]:
    """``build_report``'s counts, from decisions already read (``decisions``)."""
    rules: dict[str, dict[str, Any]] = {}
    totals: dict[str, dict[str, Any]] = {}
    for decision in found:
        rule = rules.setdefault(decision.rule_id, {**_counts(), "modalities": {}})
        for entry in (rule, rule["modalities"].setdefault(decision.modality, _counts()),
                      totals.setdefault(decision.modality, _counts())):
            _count(entry, decision)
    for entry in [*rules.values(), *(m for e in rules.values() for m in e["modalities"].values()), *totals.values()]:
        _finish(entry)
    for entry in rules.values():
        entry["modalities"] = dict(sorted(entry["modalities"].items()))
    return {
        "rules": dict(sorted(rules.items())),
        "modalities": dict(sorted(totals.items())),
        "cards_total": sum(e["cards"] for e in rules.values()),
        "refires_total": sum(e["refires"] for e in rules.values()),
        "feedback_total": sum(e["accepted"] + e["overridden"] for e in rules.values()),
    }


UNKNOWN_MODALITY = "unknown"  # a card stored without its modality (none are, once migrated to schema 2)


def _counts() -> dict[str, Any]:
    return {"cards": 0, "refires": 0, "accepted": 0, "overridden": 0, "override_reasons": {}}


def _count(entry: dict[str, Any], decision: Decision) -> None:
    """Add one decision to a counter."""
    entry["cards"] += 1
    entry["refires"] += decision.cards - 1
    if decision.outcome is not None:
        entry[decision.outcome] += 1
    if decision.outcome == "overridden" and decision.override_code is not None:
        reasons = entry["override_reasons"]
        reasons[decision.override_code] = reasons.get(decision.override_code, 0) + 1


def _finish(entry: dict[str, Any]) -> None:
    """Sort the override reasons (most frequent first) and add the acceptance rate when there is feedback."""
    entry["override_reasons"] = dict(sorted(entry["override_reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    answered = entry["accepted"] + entry["overridden"]
    if answered:
        entry["acceptance_rate"] = round(entry["accepted"] / answered, 4)


@dataclass(frozen=True, slots=True, kw_only=True)
class Week:
    start: date        # the Monday (UTC) the week begins
    accepted: int      # decisions first issued that week whose counted outcome is accepted
    overridden: int
    no_feedback: int

    @property
    def cards(self) -> int:
        return self.accepted + self.overridden + self.no_feedback


def weeks_of(found: Iterable[Decision]) -> dict[str, list[Week]]:
    """Per rule id, the outcomes of the decisions first issued each week (weeks without any included)."""
    counts: dict[str, dict[date, dict[str, int]]] = {}
    for decision in found:
        day = decision.first_issued.date()
        bucket = counts.setdefault(decision.rule_id, {}).setdefault(day - timedelta(days=day.weekday()), {})
        outcome = decision.outcome or NO_FEEDBACK
        bucket[outcome] = bucket.get(outcome, 0) + 1
    if not counts:
        return {}
    weeks = _week_range(min(min(r) for r in counts.values()), max(max(r) for r in counts.values()))
    return {
        rule_id: [
            Week(
                start=w,
                accepted=by_week.get(w, {}).get("accepted", 0),
                overridden=by_week.get(w, {}).get("overridden", 0),
                no_feedback=by_week.get(w, {}).get(NO_FEEDBACK, 0),
            )
            for w in weeks
        ]
        for rule_id, by_week in sorted(counts.items())
    }


def _latest_feedback() -> sa.Subquery:
    """One row per card: its latest feedback item (outcomeTimestamp, then arrival order)."""
    f = schema.feedback
    rank = sa.func.row_number().over(partition_by=f.c.card_uuid, order_by=(f.c.outcome_timestamp.desc(), f.c.id.desc()))
    ranked = sa.select(f.c.card_uuid, f.c.outcome, f.c.override_code, f.c.outcome_timestamp, f.c.id,
                       rank.label("rank")).subquery()
    return sa.select(ranked.c.card_uuid, ranked.c.outcome, ranked.c.override_code, ranked.c.outcome_timestamp,
                     ranked.c.id).where(ranked.c.rank == 1).subquery()


def _window(since: date | None, until: date | None) -> list[sa.ColumnElement[bool]]:
    issued_at = schema.cards.c.issued_at
    clauses = []
    if since is not None:
        clauses.append(issued_at >= datetime.combine(since, time(), timezone.utc))
    if until is not None:
        clauses.append(issued_at < datetime.combine(until + timedelta(days=1), time(), timezone.utc))
    return clauses


def _week_range(first: date, last: date) -> list[date]:
    return [first + timedelta(weeks=n) for n in range((last - first).days // 7 + 1)]


# --- what a report describes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """What a report describes, printed at its top: which store, which period, when, how counted."""

    database: str                       # the store's URL, password masked
    since: date | None = None           # first UTC day of cards issued, inclusive
    until: date | None = None           # last UTC day, inclusive
    generated_at: datetime              # when the report was made (UTC)
    dedup: timedelta = DEDUP_WINDOW     # re-fires within this count once
    labels: Mapping[str, str] = field(default_factory=dict)  # override reason code -> display

    def as_json(self) -> dict[str, Any]:
        """The scope's members of the JSON report."""
        return {
            "database": self.database,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "generated_at": self.generated_at.astimezone(timezone.utc).isoformat(timespec="seconds"),
            "dedup_minutes": self.dedup.total_seconds() / 60,
        }

    def lines(self) -> list[str]:
        """The scope as the lines heading a text report."""
        minutes = f"{self.dedup.total_seconds() / 60:g}"
        return [
            f"database:  {self.database}",
            f"period:    cards issued {_period(self.since, self.until)} (UTC days)",
            f"generated: {self.generated_at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
            f"counting:  a card re-fired for the same patient, rule and service within {minutes} minutes "
            "counts once (--dedup-minutes)",
        ]

    def label(self, code: str) -> str:
        """An override reason's display, with its code."""
        display = self.labels.get(code)
        return f"{display} ({code})" if display else code


# --- text ------------------------------------------------------------------------------------------


def render_text(report: Mapping[str, Any], scope: Scope) -> str:
    """The report as a plain-text table, headed by what it describes."""
    lines = ["lumbar-mri-cds report", *scope.lines(), ""]
    header = f"{'rule':<32} {'cards':>7} {'re-fires':>9} {'accepted':>9} {'overridden':>11}  acceptance"
    lines += [header, "-" * len(header)]
    for rule_id, entry in report["rules"].items():
        lines.append(f"{rule_id:<32} {_counts_line(entry)}")
        for code, n in entry["override_reasons"].items():
            lines.append(f"    override reason {scope.label(code)}: {n}")
        if len(entry.get("modalities", {})) > 1:
            for kind, counts in entry["modalities"].items():
                lines.append(f"    {kind:<28} {_counts_line(counts)}")
    lines.append("-" * len(header))
    for kind, counts in report.get("modalities", {}).items():
        lines.append(f"{'modality ' + kind:<32} {_counts_line(counts)}")
    lines.append(
        f"{'total':<32} {report['cards_total']:>7} {report['refires_total']:>9}   "
        f"feedback on {report['feedback_total']} of {report['cards_total']} cards"
    )
    return "\n".join(lines) + "\n"


def _counts_line(counts: Mapping[str, Any]) -> str:
    return f"{counts['cards']:>7} {counts['refires']:>9} {counts['accepted']:>9} {counts['overridden']:>11}  {_rate(counts)}"


def _period(since: date | None, until: date | None) -> str:
    if since and until:
        return f"from {since} to {until}"
    if since:
        return f"since {since}"
    if until:
        return f"until {until}"
    return "so far"


def _rate(entry: Mapping[str, Any]) -> str:
    """The acceptance rate with the counts it is made of: "43 % (3 of 7)"."""
    rate = entry.get("acceptance_rate")
    answered = entry["accepted"] + entry["overridden"]
    return "-" if rate is None else f"{rate * 100:.0f} % ({entry['accepted']} of {answered})"


# --- HTML ------------------------------------------------------------------------------------------

_COLOURS = {"accepted": "#1f77b4", "overridden": "#ff7f0e", "no feedback": "#c7c7c7"}  # colour-blind safe
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.reasons { color: #555; font-size: .9em; text-align: left; }
.legend span { display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; vertical-align: middle; }
h2 { font-size: 1.05em; margin: 1.5em 0 .2em; }
"""


def render_html(report: Mapping[str, Any], weeks: Mapping[str, list[Week]], scope: Scope) -> str:
    """A self-contained HTML page: what it describes, the table (``summarize``), weekly outcome
    charts per rule (``weeks_of``), both from the same decisions."""
    legend = "".join(f'<span style="background:{c}"></span>{html.escape(k)}' for k, c in _COLOURS.items())
    charts = "".join(
        f"<h2>{html.escape(rule_id)}</h2>\n{_svg_chart(rule_id, series)}\n" for rule_id, series in weeks.items()
    )
    title = f"lumbar-mri-cds: cards issued {_period(scope.since, scope.until)} and the feedback on them"
    about = "".join(f"<li>{html.escape(line)}</li>" for line in scope.lines())
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f'<ul class="about">{about}</ul>\n'
        f"{_html_table(report, scope)}\n"
        f'<p class="legend">Cards issued per week (Monday, UTC), by their latest outcome:{legend}</p>\n'
        f"{charts or '<p>No cards issued in this period.</p>'}"
        "</body></html>\n"
    )


def _html_table(report: Mapping[str, Any], scope: Scope) -> str:
    rows = [_html_row(rule_id, entry, scope) for rule_id, entry in report["rules"].items()]
    rows += [_html_row(f"modality {kind}", counts, scope) for kind, counts in report.get("modalities", {}).items()]
    rows.append(
        f"<tr><th>total</th><th>{report['cards_total']}</th><th>{report['refires_total']}</th>"
        f"<th colspan=\"4\" class=\"reasons\">feedback on {report['feedback_total']} of {report['cards_total']} cards</th></tr>"
    )
    head = ("<tr><th>rule</th><th>cards</th><th>re-fires</th><th>accepted</th><th>overridden</th><th>acceptance</th>"
            "<th>override reasons</th></tr>")
    return "<table>\n" + head + "\n" + "\n".join(rows) + "\n</table>"


def _html_row(label: str, counts: Mapping[str, Any], scope: Scope) -> str:
    """One row of the table: a rule's (or a modality's) counts and override reasons."""
    reasons = ", ".join(f"{html.escape(scope.label(str(code)))}: {n}" for code, n in counts["override_reasons"].items())
    return (
        f"<tr><td>{html.escape(label)}</td><td>{counts['cards']}</td><td>{counts['refires']}</td>"
        f"<td>{counts['accepted']}</td><td>{counts['overridden']}</td><td>{_rate(counts)}</td>"
        f"<td class=\"reasons\">{reasons}</td></tr>"
    )


def _svg_chart(rule_id: str, series: list[Week], *, width: int = 760, height: int = 140) -> str:
    """Stacked weekly bars: accepted, overridden, no feedback."""
    left, bottom, top = 40, 20, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    ticks = y_ticks(max((w.cards for w in series), default=0))
    peak = ticks[-1]  # the axis ends on a tick at or above the highest bar
    slot = plot_w / max(len(series), 1)
    bar = max(slot * 0.8, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="weekly outcomes of {html.escape(rule_id)}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
    ]
    for tick in ticks:
        y = top + plot_h - plot_h * tick / peak
        parts.append(f'<line class="tick" x1="{left - 3}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text class="tick" x="{left - 5}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{tick}</text>')
    for n, week in enumerate(series):
        x = left + n * slot + (slot - bar) / 2
        y = top + plot_h
        label = (
            f"week of {week.start}: {week.cards} cards, {week.accepted} accepted, "
            f"{week.overridden} overridden, {week.no_feedback} without feedback"
        )
        parts.append(f"<g><title>{html.escape(label)}</title>")
        for kind, count in (("accepted", week.accepted), ("overridden", week.overridden), ("no feedback", week.no_feedback)):
            if count:
                h = plot_h * count / peak
                y -= h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{_COLOURS[kind]}"/>')
        parts.append("</g>")
    for n, week in _tick_weeks(series):
        x = left + n * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{height - 5}" font-size="10" text-anchor="middle">{week.start}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _tick_weeks(series: list[Week], most: int = 8) -> list[tuple[int, Week]]:
    step = max(1, -(-len(series) // most))
    return [(n, w) for n, w in enumerate(series) if n % step == 0]


def y_ticks(highest: int, most: int = 6) -> list[int]:
    """Whole-number axis ticks from 0 to the first tick at or above `highest`, a 1-2-5 step apart,
    at most `most` steps: 3 gives 0, 1, 2, 3; 7 gives 0, 2, 4, 6, 8; 23 gives 0, 5, ..., 25."""
    highest = max(highest, 1)
    step = 1
    while -(-highest // step) > most:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2  # 1, 2, 5, 10, 20, 50, ...
    return list(range(0, -(-highest // step) * step + 1, step))

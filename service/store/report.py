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
- ``feedback_total`` is the number of cards with a counted outcome (= the sum of ``accepted`` and
  ``overridden`` over all rules); ``acceptance_rate`` = accepted / (accepted + overridden), left out
  when a rule has no feedback.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from datetime import timezone
from typing import Any

import sqlalchemy as sa

from service.store import schema

NO_FEEDBACK = "none"  # the outcome of a card nobody gave feedback on (weekly chart)


def build_report(engine: sa.Engine, *, since: date | None = None, until: date | None = None) -> dict[str, Any]:
    """Per rule id, and per modality of the ordered study within it and over all rules: cards issued,
    accepted, overridden, override reasons and acceptance rate."""
    cards = schema.cards
    latest = _latest_feedback()
    modality = sa.func.coalesce(cards.c.modality, UNKNOWN_MODALITY)
    issued = (
        sa.select(cards.c.rule_id, modality, sa.func.count()).where(*_window(since, until)).group_by(cards.c.rule_id, modality)
    )
    outcomes = (
        sa.select(cards.c.rule_id, modality, latest.c.outcome, latest.c.override_code, sa.func.count())
        .select_from(cards.join(latest, latest.c.card_uuid == cards.c.card_uuid))
        .where(*_window(since, until))
        .group_by(cards.c.rule_id, modality, latest.c.outcome, latest.c.override_code)
    )
    rules: dict[str, dict[str, Any]] = {}
    totals: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for rule_id, kind, n in conn.execute(issued):
            for entry in _entries(rules, totals, rule_id, kind):
                entry["cards"] += n
        for rule_id, kind, outcome, code, n in conn.execute(outcomes):
            for entry in _entries(rules, totals, rule_id, kind):
                entry[outcome] += n
                if outcome == "overridden" and code is not None:
                    entry["override_reasons"][code] = entry["override_reasons"].get(code, 0) + n
    for entry in [*rules.values(), *(m for e in rules.values() for m in e["modalities"].values()), *totals.values()]:
        _finish(entry)
    for entry in rules.values():
        entry["modalities"] = dict(sorted(entry["modalities"].items()))
    return {
        "rules": dict(sorted(rules.items())),
        "modalities": dict(sorted(totals.items())),
        "cards_total": sum(e["cards"] for e in rules.values()),
        "feedback_total": sum(e["accepted"] + e["overridden"] for e in rules.values()),
    }


UNKNOWN_MODALITY = "unknown"  # a card stored without its modality (none are, once migrated)


def _counts() -> dict[str, Any]:
    return {"cards": 0, "accepted": 0, "overridden": 0, "override_reasons": {}}


def _entries(rules: dict[str, dict[str, Any]], totals: dict[str, dict[str, Any]], rule_id: str, kind: str) -> list[dict[str, Any]]:
    """The three counters one row adds to: the rule's, the rule's for this modality, the modality's."""
    rule = rules.setdefault(rule_id, {**_counts(), "modalities": {}})
    return [rule, rule["modalities"].setdefault(kind, _counts()), totals.setdefault(kind, _counts())]


def _finish(entry: dict[str, Any]) -> None:
    """Sort the override reasons (most frequent first) and add the acceptance rate when there is feedback."""
    entry["override_reasons"] = dict(sorted(entry["override_reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    answered = entry["accepted"] + entry["overridden"]
    if answered:
        entry["acceptance_rate"] = round(entry["accepted"] / answered, 4)


@dataclass(frozen=True, slots=True, kw_only=True)
class Week:
    start: date        # the Monday (UTC) the week begins
    accepted: int      # cards issued that week whose counted outcome is accepted
    overridden: int
    no_feedback: int

    @property
    def cards(self) -> int:
        return self.accepted + self.overridden + self.no_feedback


def weekly_outcomes(
    engine: sa.Engine, *, since: date | None = None, until: date | None = None
) -> dict[str, list[Week]]:
    """Per rule id, the outcomes of the cards issued each week (weeks without cards included)."""
    cards = schema.cards
    latest = _latest_feedback()
    day = _utc_day(engine, cards.c.issued_at).label("day")
    outcome = sa.func.coalesce(latest.c.outcome, NO_FEEDBACK).label("outcome")
    query = (
        sa.select(cards.c.rule_id, day, outcome, sa.func.count())
        .select_from(cards.outerjoin(latest, latest.c.card_uuid == cards.c.card_uuid))
        .where(*_window(since, until))
        .group_by(cards.c.rule_id, day, outcome)
    )
    counts: dict[str, dict[date, dict[str, int]]] = {}
    with engine.connect() as conn:
        for rule_id, issued_on, result, n in conn.execute(query):
            issued_on = date.fromisoformat(issued_on) if isinstance(issued_on, str) else issued_on
            week = issued_on - timedelta(days=issued_on.weekday())
            bucket = counts.setdefault(rule_id, {}).setdefault(week, {})
            bucket[result] = bucket.get(result, 0) + n
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
    ranked = sa.select(f.c.card_uuid, f.c.outcome, f.c.override_code, rank.label("rank")).subquery()
    return sa.select(ranked.c.card_uuid, ranked.c.outcome, ranked.c.override_code).where(ranked.c.rank == 1).subquery()


def _window(since: date | None, until: date | None) -> list[sa.ColumnElement[bool]]:
    issued_at = schema.cards.c.issued_at
    clauses = []
    if since is not None:
        clauses.append(issued_at >= datetime.combine(since, time(), timezone.utc))
    if until is not None:
        clauses.append(issued_at < datetime.combine(until + timedelta(days=1), time(), timezone.utc))
    return clauses


def _utc_day(engine: sa.Engine, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    if engine.dialect.name == "postgresql":
        return sa.cast(sa.func.timezone("UTC", column), sa.Date)
    return sa.func.date(column)  # SQLite keeps UTC text: 'YYYY-MM-DD'


def _week_range(first: date, last: date) -> list[date]:
    return [first + timedelta(weeks=n) for n in range((last - first).days // 7 + 1)]


# --- text ------------------------------------------------------------------------------------------


def render_text(report: Mapping[str, Any], *, since: date | None = None, until: date | None = None) -> str:
    """The report as a plain-text table."""
    lines = [f"Cards issued {_period(since, until)} and the feedback on them", ""]
    header = f"{'rule':<32} {'cards':>7} {'accepted':>9} {'overridden':>11} {'acceptance':>11}"
    lines += [header, "-" * len(header)]
    for rule_id, entry in report["rules"].items():
        lines.append(
            f"{rule_id:<32} {entry['cards']:>7} {entry['accepted']:>9} {entry['overridden']:>11} {_rate(entry):>11}"
        )
        for code, n in entry["override_reasons"].items():
            lines.append(f"    override reason {code}: {n}")
        if len(entry.get("modalities", {})) > 1:
            for kind, counts in entry["modalities"].items():
                lines.append(f"    {kind:<28} {counts['cards']:>7} {counts['accepted']:>9} {counts['overridden']:>11} {_rate(counts):>11}")
    lines.append("-" * len(header))
    for kind, counts in report.get("modalities", {}).items():
        lines.append(f"{'modality ' + kind:<32} {counts['cards']:>7} {counts['accepted']:>9} {counts['overridden']:>11} {_rate(counts):>11}")
    lines.append(f"{'total':<32} {report['cards_total']:>7}   feedback on {report['feedback_total']} cards")
    return "\n".join(lines) + "\n"


def _period(since: date | None, until: date | None) -> str:
    if since and until:
        return f"from {since} to {until}"
    if since:
        return f"since {since}"
    if until:
        return f"until {until}"
    return "so far"


def _rate(entry: Mapping[str, Any]) -> str:
    rate = entry.get("acceptance_rate")
    return "-" if rate is None else f"{rate * 100:.0f} %"


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


def render_html(
    engine: sa.Engine, report: Mapping[str, Any], *, since: date | None = None, until: date | None = None
) -> str:
    """A self-contained HTML page: weekly outcome charts per rule (inline SVG) and the table."""
    weeks = weekly_outcomes(engine, since=since, until=until)
    legend = "".join(f'<span style="background:{c}"></span>{html.escape(k)}' for k, c in _COLOURS.items())
    charts = "".join(
        f"<h2>{html.escape(rule_id)}</h2>\n{_svg_chart(rule_id, series)}\n" for rule_id, series in weeks.items()
    )
    title = f"lumbar-mri-cds: cards issued {_period(since, until)} and the feedback on them"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{_html_table(report)}\n"
        f'<p class="legend">Cards issued per week (Monday, UTC), by their latest outcome:{legend}</p>\n'
        f"{charts or '<p>No cards issued in this period.</p>'}"
        "</body></html>\n"
    )


def _html_table(report: Mapping[str, Any]) -> str:
    rows = []
    for rule_id, entry in report["rules"].items():
        reasons = ", ".join(f"{html.escape(str(code))}: {n}" for code, n in entry["override_reasons"].items())
        rows.append(
            f"<tr><td>{html.escape(rule_id)}</td><td>{entry['cards']}</td><td>{entry['accepted']}</td>"
            f"<td>{entry['overridden']}</td><td>{_rate(entry)}</td><td class=\"reasons\">{reasons}</td></tr>"
        )
    for kind, counts in report.get("modalities", {}).items():
        reasons = ", ".join(f"{html.escape(str(code))}: {n}" for code, n in counts["override_reasons"].items())
        rows.append(
            f"<tr><td>modality {html.escape(kind)}</td><td>{counts['cards']}</td><td>{counts['accepted']}</td>"
            f"<td>{counts['overridden']}</td><td>{_rate(counts)}</td><td class=\"reasons\">{reasons}</td></tr>"
        )
    rows.append(
        f"<tr><th>total</th><th>{report['cards_total']}</th>"
        f"<th colspan=\"4\" class=\"reasons\">feedback on {report['feedback_total']} cards</th></tr>"
    )
    head = "<tr><th>rule</th><th>cards</th><th>accepted</th><th>overridden</th><th>acceptance</th><th>override reasons</th></tr>"
    return "<table>\n" + head + "\n" + "\n".join(rows) + "\n</table>"


def _svg_chart(rule_id: str, series: list[Week], *, width: int = 760, height: int = 140) -> str:
    """Stacked weekly bars: accepted, overridden, no feedback."""
    left, bottom, top = 40, 20, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max((w.cards for w in series), default=0) or 1
    slot = plot_w / max(len(series), 1)
    bar = max(slot * 0.8, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="weekly outcomes of {html.escape(rule_id)}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
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

"""report.html: one self-contained page (inline CSS and SVG, no script, no external resource).

Charts, drawn from summary.json: the low-value rate by month, by modality, by requester and by
organization, the orders by rule, and the projected cards per day. Every percentage has its counts
beside it ("25.0% (3 of 12)").
"""

from __future__ import annotations

from html import escape
from typing import Any

TOP = 20            # requesters and organizations shown (most orders first)
BAR_HEIGHT = 22
LABEL_WIDTH = 260
BAR_WIDTH = 360
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1000px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}
figure{margin:1rem 0}figcaption{font-weight:600;margin-bottom:.4rem}
svg text{font-size:12px;fill:#222}.bar{fill:#c0392b}.base{fill:#eee}.count{fill:#2c6fbb}
.note{color:#555;font-size:.9rem}
"""


def render(summary: dict[str, Any]) -> str:
    """The whole page."""
    window = summary["window"]
    span = f"{window['since'] or 'first order'} to {window['until'] or 'last order'}"
    sections = [
        _totals(summary),
        _rate_chart("by-month", "Low-value rate by month", summary["by_month"]),
        _rule_chart(summary),
        _rate_chart("by-modality", "Low-value rate by modality", summary["by_modality"]),
        _rate_chart("by-requester", f"Low-value rate by requester (top {TOP} by orders)", _top(summary["by_requester"])),
        _rate_chart("by-organization", f"Low-value rate by organization (top {TOP} by orders)",
                    _top(summary["by_organization"])),
        _cards_chart(summary["cards_per_day"]),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>Lumbar imaging order audit</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Lumbar imaging order audit</h1><p class=\"note\">Orders authored {escape(span)}, each judged "
        "on the record as it stood when it was written. Low-value rate = orders rated <em>not appropriate</em> "
        "over orders the decision model reviewed. Patients are pseudonymized; no name, birth date or "
        "identifier appears in this report.</p>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}% ({part} of {whole})" if whole else f"– (0 of 0)"


def _totals(summary: dict[str, Any]) -> str:
    export = summary["export"]
    rows = [
        ("Orders audited", str(summary["orders"])),
        ("Reviewed by the decision model", str(summary["reviewed"])),
        ("Low value (rated not appropriate)", _pct(summary["low_value"], summary["reviewed"])),
        ("Cards the clinicians would have seen", str(summary["cards"])),
        *((f"Outcome: {name}", str(count)) for name, count in summary["outcomes"].items() if count),
        ("Resources read", str(export.get("resources", 0))),
        ("Malformed lines skipped", str(export.get("bad_lines", 0))),
    ]
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Totals</h2><table id=\"totals\">{cells}</table>"


def _ranked(groups: dict[str, Any]) -> list[tuple[str, Any]]:
    """The groups, most orders first (ties by key)."""
    return sorted(groups.items(), key=lambda kv: (-kv[1]["orders"], kv[0]))


def _top(groups: dict[str, Any]) -> dict[str, Any]:
    return dict(_ranked(groups)[:TOP])


def _figure(name: str, title: str, svg: str) -> str:
    return (f"<figure class=\"chart\" id=\"chart-{name}\" data-chart=\"{name}\">"
            f"<figcaption>{escape(title)}</figcaption>{svg}</figure>")


def _hbars(name: str, items: list[tuple[str, float, str]], css: str) -> str:
    """Horizontal bars: (label, fraction of the full bar 0..1, text beside the bar)."""
    height = BAR_HEIGHT * max(1, len(items)) + 4
    width = LABEL_WIDTH + BAR_WIDTH + 200
    parts = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"{escape(name)}\" "
             f"width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">"]
    if not items:
        parts.append("<text x=\"0\" y=\"16\">no orders</text>")
    for n, (label, fraction, text) in enumerate(items):
        y = n * BAR_HEIGHT + 2
        bar = max(0.0, min(1.0, fraction)) * BAR_WIDTH
        parts.append(
            f"<g class=\"row\"><text x=\"0\" y=\"{y + 15}\">{escape(label[:42])}</text>"
            f"<rect class=\"base\" x=\"{LABEL_WIDTH}\" y=\"{y}\" width=\"{BAR_WIDTH}\" height=\"{BAR_HEIGHT - 6}\"/>"
            f"<rect class=\"{css}\" x=\"{LABEL_WIDTH}\" y=\"{y}\" width=\"{bar:.1f}\" height=\"{BAR_HEIGHT - 6}\"/>"
            f"<text x=\"{LABEL_WIDTH + BAR_WIDTH + 8}\" y=\"{y + 15}\">{escape(text)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _rate_chart(name: str, title: str, groups: dict[str, Any]) -> str:
    items = []
    for key, entry in groups.items():
        label = entry.get("name") or key
        rate = entry["low_value"] / entry["reviewed"] if entry["reviewed"] else 0.0
        items.append((label, rate, _pct(entry["low_value"], entry["reviewed"])))
    return _figure(name, title, _hbars(name, items, "bar"))


def _rule_chart(summary: dict[str, Any]) -> str:
    groups = summary["by_rule"]
    total = summary["orders"]
    items = [(key, entry["orders"] / total if total else 0.0, _pct(entry["orders"], total) + " of orders")
             for key, entry in _ranked(groups)]
    return _figure("by-rule", "Orders by rule (share of all orders audited)", _hbars("by-rule", items, "count"))


def _cards_chart(cards: dict[str, Any]) -> str:
    daily = cards["daily"]
    peak = max(daily.values(), default=0) or 1
    width, height, top = max(300, 2 * len(daily) + 60), 160, 20
    step = (width - 60) / max(1, len(daily))
    parts = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"cards-per-day\" "
             f"width=\"{width:.0f}\" height=\"{height + 30}\" viewBox=\"0 0 {width:.0f} {height + 30}\">",
             f"<text x=\"0\" y=\"12\">max {peak if daily else 0} cards/day</text>"]
    for n, (day, count) in enumerate(daily.items()):
        bar = (height - top) * count / peak
        parts.append(f"<rect class=\"count\" x=\"{50 + n * step:.1f}\" y=\"{height - bar:.1f}\" "
                     f"width=\"{max(step - 0.5, 0.5):.1f}\" height=\"{bar:.1f}\"><title>{day}: {count}</title></rect>")
    if daily:
        first, last = next(iter(daily)), list(daily)[-1]
        parts.append(f"<text x=\"50\" y=\"{height + 20}\">{first}</text>"
                     f"<text x=\"{width - 80:.0f}\" y=\"{height + 20}\">{last}</text>")
    parts.append("</svg>")
    mean = cards["mean"]
    caption = (f"Projected cards per day had the service been live: {mean if mean is not None else '–'} a day on "
               f"average over {cards['days']} days (max {cards['max']})")
    return _figure("cards-per-day", caption, "".join(parts))

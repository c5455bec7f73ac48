"""The audit's outputs: per-order rows as Parquet and CSV, and ``summary.json``.

Rows hold no name, birth date or identifier: the patient and the order are HMAC-SHA256 hashes keyed
by ``patient_hash_salt`` (the store's ``patient_hash``). The low-value rate of a group is its orders
rated *not appropriate* over its orders the decision model **reviewed** (outcomes ``decided``,
``no-rule`` and ``not-adult``): orders the model does not cover, or whose record lacks what the
rules need, are counted beside it but not in the rate.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from collections.abc import Iterable
from datetime import date
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from service.audit.export import Window
from service.audit.patient import COLUMNS
from service.audit.patient import OUTCOMES

REVIEWED = frozenset({"decided", "no-rule", "not-adult"})
SUMMARY_VERSION = 1


def sort_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in a fixed order (day, then order hash), whatever the engine's order."""
    return sorted(rows, key=lambda r: (r["authored_on"], r["order"]))


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as one Parquet file with the COLUMNS' types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {str: pa.string(), int: pa.int64(), bool: pa.bool_()}
    schema = pa.schema([(name, kinds[kind]) for name, kind in COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV with a header line (booleans as true/false)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _ in COLUMNS])
        for row in rows:
            writer.writerow([_cell(row[name]) for name, _ in COLUMNS])


def _cell(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def summarize(rows: list[dict[str, Any]], window: Window, export: dict[str, Any]) -> dict[str, Any]:
    """summary.json: totals, the low-value rate by month, rule, modality, requester, organization, cards per day."""
    return {
        "version": SUMMARY_VERSION,
        "window": {"since": _iso(window.since), "until": _iso(window.until)},
        "export": export,
        "orders": len(rows),
        **_counts(rows),
        "outcomes": {name: sum(r["outcome"] == name for r in rows) for name in OUTCOMES},
        "by_month": _group(rows, lambda r: r["month"]),
        "by_rule": _group(rows, lambda r: r["rule"] or f"({r['outcome']})"),
        "by_modality": _group(rows, lambda r: r["modality"]),
        "by_requester": _group(rows, lambda r: r["requester"] or "(unknown)", name="requester_name"),
        "by_organization": _group(rows, lambda r: r["organization"] or "(unknown)", name="organization_name"),
        "cards_per_day": cards_per_day(rows, window),
    }


def _counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    reviewed = sum(r["outcome"] in REVIEWED for r in rows)
    low = sum(bool(r["low_value"]) for r in rows)
    return {
        "reviewed": reviewed,
        "low_value": low,
        "low_value_rate": round(low / reviewed, 4) if reviewed else None,
        "cards": sum(r["cards"] for r in rows),
    }


def _group(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str], name: str | None = None) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    out = {}
    for label in sorted(groups):
        members = groups[label]
        entry = {"orders": len(members), **_counts(members)}
        if name is not None:
            entry["name"] = members[0][name] or label
        out[label] = entry
    return out


def cards_per_day(rows: list[dict[str, Any]], window: Window) -> dict[str, Any]:
    """Cards the clinicians would have seen each day, had the service been live, over the window.

    The days run from --since (else the first order) to --until (else the last order), every
    calendar day counted, days without an order included as zero.
    """
    by_day: dict[str, int] = {}
    for row in rows:
        by_day[row["authored_on"]] = by_day.get(row["authored_on"], 0) + row["cards"]
    if not rows and (window.since is None or window.until is None):
        return {"days": 0, "mean": None, "max": 0, "daily": {}}
    first = window.since or date.fromisoformat(min(by_day))
    last = window.until or date.fromisoformat(max(by_day))
    days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    daily = {d: by_day.get(d, 0) for d in days}
    total = sum(daily.values())
    return {"days": len(days), "mean": round(total / len(days), 3) if days else None,
            "max": max(daily.values(), default=0), "daily": daily}


def write_summary(summary: dict[str, Any], path: Path) -> None:
    """summary.json, indented, keys in a fixed order."""
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None

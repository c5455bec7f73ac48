"""Forgiving FHIR date handling: anything unreadable is ``None``, never an error (as cumulus-etl)."""

from __future__ import annotations

from collections.abc import Mapping
import re
from datetime import date
from datetime import timedelta
from typing import Any


def parse_date(value: Any) -> date | None:
    """The calendar date of a FHIR date/dateTime/instant; partial dates take their first day."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        year = int(value[0:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        return date(year, month, day)
    except ValueError:
        return None


def period_start(value: Any) -> date | None:
    """The start of a FHIR Period."""
    return parse_date(value.get("start")) if isinstance(value, Mapping) else None


def first_date(resource: Mapping[str, Any], *fields: str) -> date | None:
    """The first readable date among these fields (a `...Period` field gives its start)."""
    for name in fields:
        value = resource.get(name)
        if value is None:
            continue  # absent, the usual case for all but one of the fields
        found = period_start(value) if name.endswith("Period") else parse_date(value)
        if found is not None:
            return found
    return None


def age_on(birth_date: date, today: date) -> int:
    """Age in whole years on ``today``."""
    years = today.year - birth_date.year
    if (today.month, today.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


_LEADING_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


def shift_dates(value: Any, days: int) -> Any:
    """A copy of `value` with every YYYY-MM-DD date that starts a string moved by `days` (keeps a
    story's intervals: an episode of 14 days stays 14 days long)."""
    if isinstance(value, dict):
        return {k: shift_dates(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_dates(v, days) for v in value]
    if isinstance(value, str) and days:
        match = _LEADING_DATE.match(value)
        if match:
            try:
                moved = date(int(match[1]), int(match[2]), int(match[3])) + timedelta(days=days)
            except ValueError:
                return value
            return moved.isoformat() + value[10:]
    return value

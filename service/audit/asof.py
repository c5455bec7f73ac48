"""The as-of rule: a patient's record as it stood when an order was written.

An audited order is judged on what its author could have known: every resource recorded, begun,
issued, authored, asserted or performed *after* the order's ``authoredOn`` is dropped. For each
resource type, these are the elements that say when it entered the record or happened (a Period
gives its start); a resource is dropped when **any** of them is later than the order:

| Resource type | Elements compared with the order's authoredOn |
|---|---|
| Condition | recordedDate, onset[x] (onsetDateTime, onsetPeriod) |
| Observation | issued, effective[x] (effectiveDateTime, effectivePeriod, effectiveInstant) |
| Procedure | performed[x] (performedDateTime, performedPeriod) |
| MedicationRequest, ServiceRequest | authoredOn |
| MedicationStatement | dateAsserted, effective[x] |
| MedicationDispense | whenPrepared, whenHandedOver |
| ImagingStudy | started |
| DiagnosticReport | issued, effective[x] |
| Encounter | period (its start) |
| Patient | never dropped (the patient existed) |
| any other type | recordedDate, recorded, issued, authoredOn, dateAsserted, date, onset[x], effective[x], performed[x] |

A resource with none of its elements dated is kept, as the service keeps an undated finding. Times
are compared as instants when both sides carry a time (a missing zone is read as UTC); when either is
a bare date (or a year-month), calendar days are compared, so a resource dated the order's own day is
kept. The order itself is not part of its own record: it is the draft the hook carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from datetime import datetime
from datetime import timezone
from typing import Any

EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant")
ONSET = ("onsetDateTime", "onsetPeriod")
PERFORMED = ("performedDateTime", "performedPeriod")

AS_OF_FIELDS: Mapping[str, tuple[str, ...]] = {
    "Condition": ("recordedDate", *ONSET),
    "Observation": ("issued", *EFFECTIVE),
    "Procedure": PERFORMED,
    "MedicationRequest": ("authoredOn",),
    "ServiceRequest": ("authoredOn",),
    "MedicationStatement": ("dateAsserted", *EFFECTIVE),
    "MedicationDispense": ("whenPrepared", "whenHandedOver"),
    "ImagingStudy": ("started",),
    "DiagnosticReport": ("issued", *EFFECTIVE),
    "Encounter": ("period",),
    "Patient": (),
}
DEFAULT_FIELDS: tuple[str, ...] = (
    "recordedDate", "recorded", "issued", "authoredOn", "dateAsserted", "date", *ONSET, *EFFECTIVE, *PERFORMED,
)

Moment = tuple[date, datetime | None]  # the calendar day as written, and the instant when a time is given


def moment(value: Any) -> Moment | None:
    """A FHIR date, dateTime, instant or Period (its start) as (day, instant or None); None if unreadable."""
    if isinstance(value, dict):
        value = value.get("start")
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) <= 10:
            parts = [int(p) for p in value.split("-")]
            return date(parts[0], *(parts[1:] + [1, 1])[:2]), None
        instant = datetime.fromisoformat(value)
    except (ValueError, TypeError):
        return None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return date.fromisoformat(value[:10]), instant


def after(value: Moment, order: Moment) -> bool:
    """Whether ``value`` is later than the order: by instant when both have a time, else by day."""
    if value[1] is not None and order[1] is not None:
        return value[1] > order[1]
    return value[0] > order[0]


def known_at(resource: Mapping[str, Any], order: Moment) -> bool:
    """Whether this resource was in the record when the order was written."""
    fields = AS_OF_FIELDS.get(str(resource.get("resourceType")), DEFAULT_FIELDS)
    for name in fields:
        value = resource.get(name)
        if value is None:
            continue
        at = moment(value)
        if at is not None and after(at, order):
            return False
    return True

"""How long a medication resource says the medicine was taken (decision-rules.md v2, "Glucocorticoid
days"; README "Choices made"): MedicationRequest, MedicationStatement and MedicationDispense alike.

Pure and forgiving, as ``dates``: an unreadable period gives ``None`` or the default, never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from datetime import timedelta
from typing import Any

from service.facts.dates import first_date
from service.facts.dates import parse_date

_OBJECT = (dict, Mapping)  # dict first: isinstance's exact-type fast path
ONE_DAY = timedelta(days=1)
DEFAULT_DAYS = 30          # an order with no supply and no validity period (decision-rules.md v2)
# Statuses of the three resources that mean "not taken" (or not yet).
NOT_TAKEN = ("entered-in-error", "cancelled", "draft", "not-taken", "intended", "declined", "preparation")
OPEN_STATUSES = ("active", "on-hold")  # an open-ended use with one of these statuses runs to today


def medication_code(med: Mapping[str, Any]) -> Any:
    """medicationCodeableConcept, else the code of a contained Medication named by medicationReference."""
    codeable = med.get("medicationCodeableConcept")
    if codeable is not None:
        return codeable
    reference = med.get("medicationReference")
    target = reference.get("reference") if isinstance(reference, _OBJECT) else None
    contained = med.get("contained")
    if isinstance(target, str) and target.startswith("#") and isinstance(contained, list):
        for resource in contained:
            if isinstance(resource, _OBJECT) and resource.get("id") == target[1:]:
                return resource.get("code")
    return None


_DAYS_PER_UNIT = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30, "months": 30}


def use_period(med: Mapping[str, Any], today: date) -> tuple[date, date] | None:
    """The first day of use a medication resource records and the day after its last (README "Choices made").

    - MedicationRequest: from authoredOn (else the validity start), ``expectedSupplyDuration`` ×
      (1 + ``numberOfRepeatsAllowed``), else its ``validityPeriod`` (an open one, still active, runs to
      today), else 30 days.
    - MedicationStatement: its ``effective[x]``; an open end (or a single date) runs to today while the
      status is active, else the use lasted that one day.
    - MedicationDispense: ``whenHandedOver`` (else ``whenPrepared``) for ``daysSupply`` days, else 30.
    """
    kind = med.get("resourceType")
    open_ended = med.get("status") in OPEN_STATUSES
    if kind == "MedicationStatement":
        return _statement_period(med, today, open_ended)
    if kind == "MedicationDispense":
        return _dispense_period(med)
    return _request_period(med, today, open_ended)


def _statement_period(med: Mapping[str, Any], today: date, open_ended: bool) -> tuple[date, date] | None:
    start = first_date(med, "effectivePeriod", "effectiveDateTime", "dateAsserted")
    if start is None:
        return None
    period = med.get("effectivePeriod")
    end = parse_date(period.get("end")) if isinstance(period, _OBJECT) else None
    if end is not None and end >= start:
        return start, end + ONE_DAY
    return start, today if open_ended else start + ONE_DAY


def _dispense_period(med: Mapping[str, Any]) -> tuple[date, date] | None:
    start = first_date(med, "whenHandedOver", "whenPrepared")
    if start is None:
        return None
    return start, start + timedelta(days=_quantity_days(med.get("daysSupply")) or DEFAULT_DAYS)


def _request_period(med: Mapping[str, Any], today: date, open_ended: bool) -> tuple[date, date] | None:
    dispense = med.get("dispenseRequest")
    dispense = dispense if isinstance(dispense, _OBJECT) else {}
    validity = dispense.get("validityPeriod")
    validity = validity if isinstance(validity, _OBJECT) else {}
    start = first_date(med, "authoredOn") or parse_date(validity.get("start"))
    if start is None:
        return None
    supply = _quantity_days(dispense.get("expectedSupplyDuration"))
    if supply:
        repeats = dispense.get("numberOfRepeatsAllowed")
        fills = 1 + (repeats if isinstance(repeats, int) and not isinstance(repeats, bool) and repeats > 0 else 0)
        return start, start + timedelta(days=supply * fills)
    end = parse_date(validity.get("end"))
    if end is not None and end >= start:
        return start, end + ONE_DAY
    if validity and end is None and open_ended:
        return start, today
    return start, start + timedelta(days=DEFAULT_DAYS)


def _quantity_days(quantity: Any) -> int:
    """Days in a Duration / Quantity (d, wk, mo; a bare number is days); 0 when unreadable."""
    if not isinstance(quantity, _OBJECT):
        return 0
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return 0
    per = _DAYS_PER_UNIT.get(str(quantity.get("code") or quantity.get("unit") or "d"), 0)
    return min(int(value * per), 36_500)

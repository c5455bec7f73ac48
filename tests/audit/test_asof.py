"""The as-of rule: nothing recorded after an order's authoredOn changes its verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.audit import asof
from tests import fhir
from tests.audit.conftest import audit
from tests.audit.conftest import read_csv
from tests.audit.conftest import write_ndjson

ORDER_AT = "2025-06-10T10:00:00Z"
ORDER = asof.moment(ORDER_AT)


@pytest.mark.parametrize(("resource", "known"), [
    ({"resourceType": "Condition", "recordedDate": "2025-06-11"}, False),                      # recorded the day after
    ({"resourceType": "Condition", "recordedDate": "2025-06-10"}, True),                       # the same day: kept
    ({"resourceType": "Condition", "onsetDateTime": "2025-06-12", "recordedDate": "2025-06-01"}, False),
    ({"resourceType": "Condition", "onsetPeriod": {"start": "2025-07-01"}}, False),
    ({"resourceType": "Condition"}, True),                                                     # undated: kept
    ({"resourceType": "Observation", "effectiveDateTime": "2025-06-10T09:00:00Z"}, True),
    ({"resourceType": "Observation", "effectiveDateTime": "2025-06-10T11:00:00Z"}, False),    # an hour later
    ({"resourceType": "Observation", "effectiveDateTime": "2025-06-10T12:00:00+02:00"}, True),  # 10:00 UTC
    ({"resourceType": "Observation", "effectiveDateTime": "2025-06-09", "issued": "2025-06-11T08:00:00Z"}, False),
    ({"resourceType": "Procedure", "performedPeriod": {"start": "2025-06-20"}}, False),
    ({"resourceType": "Procedure", "performedDateTime": "2025-05"}, True),                     # year-month
    ({"resourceType": "MedicationRequest", "authoredOn": "2025-06-11"}, False),
    ({"resourceType": "MedicationStatement", "dateAsserted": "2025-06-01", "effectivePeriod": {"start": "2025-06-15"}}, False),
    ({"resourceType": "MedicationDispense", "whenHandedOver": "2025-06-11"}, False),
    ({"resourceType": "ServiceRequest", "authoredOn": "2025-06-10T10:00:01Z"}, False),
    ({"resourceType": "ImagingStudy", "started": "2025-06-09T10:00:00Z"}, True),
    ({"resourceType": "DiagnosticReport", "effectiveDateTime": "2025-06-01", "issued": "2025-06-15T00:00:00Z"}, False),
    ({"resourceType": "Encounter", "period": {"start": "2025-06-11"}}, False),
    ({"resourceType": "Patient", "birthDate": "1970-01-01"}, True),
    ({"resourceType": "AllergyIntolerance", "recordedDate": "2025-06-30"}, False),             # any other type
    ({"resourceType": "Condition", "recordedDate": "not a date"}, True),                       # unreadable: kept
])
def test_known_at(resource, known):
    assert asof.known_at(resource, ORDER) is known


def _story(folder: Path, cancer_recorded: str) -> Path:
    """A 50-year-old with 10 days of low back pain, an MRI ordered, and bone metastases recorded on a given day."""
    pid = "asof-1"
    order = fhir.mri_order("72148", oid="sr-1", pid=pid)
    order.update(status="completed", intent="order", authoredOn=ORDER_AT)
    write_ndjson(folder / "Patient.ndjson", [fhir.patient(pid, birth="1975-03-01")])
    write_ndjson(folder / "Condition.ndjson", [
        fhir.condition("M54.50", onset="2025-05-31", recorded="2025-05-31", pid=pid),
        fhir.condition("C79.51", onset=cancer_recorded, recorded=cancer_recorded, pid=pid, display="Bone metastasis"),
    ])
    write_ndjson(folder / "ServiceRequest.ndjson", [order])
    return folder


@pytest.mark.parametrize(("recorded", "rule"), [
    ("2025-06-11", "acute-uncomplicated"),          # a day after the order: not seen
    ("2025-06-10", "suspected-cancer-infection"),   # the control: the same finding known that day decides
])
def test_a_condition_recorded_after_the_order_does_not_change_its_verdict(capsys, tmp_path, recorded, rule):
    export = _story(tmp_path / "export", recorded)
    code, _ = audit(capsys, export, tmp_path / "out")
    assert code == 0
    [row] = read_csv(tmp_path / "out" / "orders.csv")
    assert row["rule"] == rule
    assert row["low_value"] == ("true" if rule == "acute-uncomplicated" else "false")
    assert ("malignancy" in row["findings"].split(";")) is (rule != "acute-uncomplicated")

"""The per-patient function: prefetch keys and types come from the service's templates at run time."""

from __future__ import annotations

import json

from service.audit import asof
from service.audit import export
from service.audit.directory import Directory
from service.audit.patient import AuditContext
from service.audit.patient import Auditor
from service.audit.patient import read_templates
from service.audit.patient import reading_filters
from service.pipeline import Evaluator
from tests import fhir

STATEMENTS = "MedicationStatement?patient={{context.patientId}}"


def _auditor(evaluator: Evaluator) -> Auditor:
    reading = export.Reading(filters=reading_filters(evaluator), window=export.Window(), value_sets=evaluator.value_sets)
    return Auditor(AuditContext(reading=reading, directory=Directory(), salt="s"), evaluator)


def test_templates_are_read_into_types_and_code_filters():
    queries = read_templates(Evaluator.load().templates)
    assert queries["patient"].read and queries["patient"].kind == "Patient"
    assert queries["conditions"].kind == "Condition" and not queries["conditions"].codes
    assert "http://loinc.org|8310-5" in queries["observations"].codes


def test_a_prefetch_key_added_to_the_service_is_audited_unchanged():
    evaluator = Evaluator.load()
    evaluator.templates = {**evaluator.templates, "medicationStatements": STATEMENTS}
    auditor = _auditor(evaluator)
    assert auditor.context.reading.filters["MedicationStatement"] is None
    before = {"resourceType": "MedicationStatement", "id": "ms-1", "status": "active", "dateAsserted": "2025-05-01",
              "subject": {"reference": "Patient/p1"}}
    after = {**before, "id": "ms-2", "dateAsserted": "2025-06-20"}
    order = {**fhir.mri_order(oid="sr-1", pid="p1"), "authoredOn": "2025-06-10T10:00:00Z", "status": "active"}
    lines = [json.dumps(r).encode() for r in (fhir.patient("p1"), before, after, order)]
    by_type = {}
    for line in lines:
        resource = json.loads(line)
        by_type.setdefault(resource["resourceType"], []).append(resource)
    request = auditor.request("p1", order, "ServiceRequest/sr-1", asof.moment(order["authoredOn"]), by_type)
    bundle = request["prefetch"]["medicationStatements"]
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["ms-1"]
    assert request["prefetch"]["serviceRequests"]["entry"] == []          # the order is the draft, not the record
    assert request["context"]["draftOrders"]["entry"][0]["resource"]["status"] == "draft"
    assert request["prefetch"]["patient"]["id"] == "p1"
    assert len(auditor.audit_patient("p1", lines)) == 1

"""Prefetch: the templates the services advertise, and turning what arrived into a PatientRecord.

A client may satisfy some, all or none of the templates; a key it has no data for is absent, `null`,
an OperationOutcome, or a searchset with a `next` link (cds-hooks-notes.md, "Request"). What is
missing is fetched from `fhirServer` by ``intake.fhir_client``; what still cannot be had is recorded
in ``PatientRecord.unavailable``, and only the keys the rules cannot do without (``REQUIRED``) make
the call fail with 412.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Protocol

from service.errors import DataUnobtainable
from service.errors import InvalidRequest

PATIENT_TOKEN = "{{context.patientId}}"

# Which prefetch keys the rules cannot do without. Age (adults only) needs the Patient; every rule
# reads Conditions (the episode and most red flags). Without Observations, Procedures, medications,
# service requests or prior imaging the rules still run: the missing data can only hide a fever, a
# conservative trial, prior surgery or a prior MRI, and the card says which data was unavailable.
REQUIRED: tuple[str, ...] = ("patient", "conditions")


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientRecord:
    patient: Mapping[str, Any] | None
    by_type: Mapping[str, tuple[Mapping[str, Any], ...]]   # resourceType -> resources, deduplicated
    unavailable: tuple[str, ...] = ()                         # prefetch keys that could not be read
    fetched_keys: tuple[str, ...] = ()                        # keys read from the FHIR server
    fhir_requests: int = 0

    def of(self, *types: str) -> tuple[Mapping[str, Any], ...]:
        """All resources of these types."""
        if len(types) == 1:
            return self.by_type.get(types[0], ())
        return tuple(r for t in types for r in self.by_type.get(t, ()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """What prefetch gave for each key, before any FHIR fetch."""

    resources: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)  # complete keys
    partial: dict[str, tuple[tuple[Mapping[str, Any], ...], str]] = field(default_factory=dict)  # key -> (so far, next URL)
    missing: list[str] = field(default_factory=list)


def build_templates(observation_codes: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The prefetch templates: one query per resource type the rules read (10 queries).

    v2: medication use is read from MedicationStatement and MedicationDispense beside MedicationRequest
    (decision-rules.md, "fracture risk" and "conservative management").
    """
    codes = ",".join(f"{system}|{code}" for system, code in observation_codes)
    return {
        "patient": f"Patient/{PATIENT_TOKEN}",
        "conditions": f"Condition?patient={PATIENT_TOKEN}",
        "observations": f"Observation?patient={PATIENT_TOKEN}&code={codes}",
        "procedures": f"Procedure?patient={PATIENT_TOKEN}",
        "medications": f"MedicationRequest?patient={PATIENT_TOKEN}",
        "medicationStatements": f"MedicationStatement?patient={PATIENT_TOKEN}",
        "medicationDispenses": f"MedicationDispense?patient={PATIENT_TOKEN}",
        "serviceRequests": f"ServiceRequest?patient={PATIENT_TOKEN}",
        "imagingStudies": f"ImagingStudy?patient={PATIENT_TOKEN}",
        "diagnosticReports": f"DiagnosticReport?patient={PATIENT_TOKEN}",
    }


def split_prefetch(prefetch: Mapping[str, Any], templates: Mapping[str, str]) -> Resolution:
    """Sort each templated key into complete, partial (paged) or missing."""
    resolution = Resolution()
    for key in templates:
        value = prefetch.get(key)
        if not isinstance(value, dict) or value.get("resourceType") in (None, "OperationOutcome"):
            resolution.missing.append(key)
        elif value.get("resourceType") == "Bundle":
            entries = _bundle_resources(value)
            next_url = _next_link(value)
            if next_url:
                resolution.partial[key] = (tuple(entries), next_url)
            else:
                resolution.resources[key] = entries
        else:
            resolution.resources[key] = [value]
    return resolution


def _bundle_resources(bundle: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
            out.append(resource)
    return out


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


class Fetcher(Protocol):
    """What reads the keys prefetch lacks (``fhir_client.CallFetcher``): queries, and paged prefetch to continue."""

    def fetch(self, queries: Mapping[str, str], continue_from: Mapping[str, tuple[tuple[Any, ...], str]]) -> Any:
        """A result with ``resources``, ``failures`` and ``requests_made`` (``fhir_client.FetchResult``)."""
        ...


def resolve(
    prefetch: Mapping[str, Any],
    templates: Mapping[str, str],
    patient_id: str,
    fetcher: Fetcher | None,
) -> PatientRecord:
    """Combine prefetch with what ``fetcher`` obtains; 412 when a required key cannot be had."""
    resolution = split_prefetch(prefetch, templates)
    resources = resolution.resources
    failures: dict[str, str] = {}
    fetched: tuple[str, ...] = ()
    requests_made = 0
    wanted = resolution.missing + list(resolution.partial)
    if wanted and fetcher is not None:
        queries = {k: templates[k].replace(PATIENT_TOKEN, patient_id) for k in wanted}
        result = fetcher.fetch(queries, resolution.partial)
        for key, got in result.resources.items():
            resources[key] = list(got)
        failures.update(result.failures)
        fetched = tuple(k for k in wanted if k in result.resources)
        requests_made = result.requests_made
    elif wanted:
        failures.update({k: "not in prefetch and no FHIR server to ask" for k in wanted})
    # A paged prefetch we could not complete still counts as unavailable: a partial list could hide
    # the one Condition that matters.
    unavailable = tuple(k for k in templates if k not in resources)
    lacking = [k for k in REQUIRED if k in unavailable]
    if lacking:
        detail = "; ".join(f"{k}: {failures.get(k, 'not available')}" for k in lacking)
        raise DataUnobtainable(f"data the rules need could not be obtained ({detail})", expression="prefetch")
    return _record(resources, patient_id, unavailable, fetched, requests_made)


def _record(
    resources: Mapping[str, list[Mapping[str, Any]]],
    patient_id: str,
    unavailable: tuple[str, ...],
    fetched: tuple[str, ...],
    requests_made: int,
) -> PatientRecord:
    by_type: dict[str, dict[str, Mapping[str, Any]]] = {}
    anonymous = 0
    for items in resources.values():
        for resource in items:
            kind = resource.get("resourceType")
            if not isinstance(kind, str):
                continue
            rid = resource.get("id")
            if not isinstance(rid, str):
                anonymous += 1
                rid = f"#anonymous-{anonymous}"
            by_type.setdefault(kind, {})[rid] = resource
    patients = list(by_type.get("Patient", {}).values())
    patient = next((p for p in patients if p.get("id") == patient_id), None)
    if patient is None and patients:
        raise InvalidRequest("prefetch.patient is not the patient named by context.patientId", expression="prefetch.patient")
    return PatientRecord(
        patient=patient,
        by_type={k: tuple(v.values()) for k, v in by_type.items()},
        unavailable=unavailable,
        fetched_keys=fetched,
        fhir_requests=requests_made,
    )

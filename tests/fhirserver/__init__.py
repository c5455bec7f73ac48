"""An in-memory FHIR R4 server (Medplum's FhirRouter + MemoryRepository on Node) for tests."""

from .runner import load_bundle
from .runner import running_fhir_server

__all__ = ["load_bundle", "running_fhir_server"]

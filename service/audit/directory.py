"""Who ordered and where: the Practitioner, PractitionerRole and Organization files of an export.

These name no patient and are small beside the clinical files (one line per clinician, role and
clinic), so both engines read them once, on the driver, into a ``Directory`` of names and links,
and hand it to every worker (Spark: a broadcast variable).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import orjson

from service.audit.export import DIRECTORY_TYPES
from service.audit.export import ExportFile
from service.audit.export import ReadStats
from service.audit.export import numbered
from service.audit.export import open_lines


@dataclass(frozen=True, slots=True, kw_only=True)
class Directory:
    names: Mapping[str, str] = field(default_factory=dict)             # "Practitioner/1" -> "Dr Ana Lopez"
    roles: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)  # role -> (practitioner, organization)

    def requester(self, reference: str | None) -> tuple[str | None, str | None]:
        """(practitioner reference, organization reference) a requester reference stands for."""
        if reference is None:
            return None, None
        if reference.startswith("PractitionerRole/"):
            return self.roles.get(reference, (None, None))
        if reference.startswith("Organization/"):
            return None, reference
        return reference, None

    def name(self, reference: str | None) -> str:
        """The display name of a directory entry, else its reference, else empty."""
        if reference is None:
            return ""
        return self.names.get(reference, reference)


def load_directory(files: Iterable[ExportFile], stats: ReadStats) -> Directory:
    """Read the directory files of an export (bad lines counted in ``stats``)."""
    names: dict[str, str] = {}
    roles: dict[str, tuple[str | None, str | None]] = {}
    for file in files:
        if file.kind not in DIRECTORY_TYPES:
            continue
        for number, line in numbered(file, open_lines(file)):
            if not line.strip():
                continue
            stats.lines += 1
            resource = _resource(line)
            if resource is None or resource.get("resourceType") not in DIRECTORY_TYPES:
                stats.bad(file.path.name, number, "not a Practitioner, PractitionerRole or Organization")
                continue
            stats.resources += 1
            reference = f"{resource['resourceType']}/{resource.get('id')}"
            if resource["resourceType"] == "PractitionerRole":
                roles[reference] = (_ref(resource.get("practitioner")), _ref(resource.get("organization")))
            else:
                names[reference] = _display(resource)
    return Directory(names=names, roles=roles)


def _resource(line: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("id"), str) else None


def _ref(value: Any) -> str | None:
    target = value.get("reference") if isinstance(value, dict) else None
    return target if isinstance(target, str) and "/" in target else None


def _display(resource: Mapping[str, Any]) -> str:
    """An Organization's name, or a Practitioner's first HumanName as "Given Family"."""
    name = resource.get("name")
    if isinstance(name, str):
        return name
    first = name[0] if isinstance(name, list) and name and isinstance(name[0], dict) else {}
    if isinstance(first.get("text"), str):
        return first["text"]
    given = first.get("given") if isinstance(first.get("given"), list) else []
    parts = [*(g for g in given if isinstance(g, str)), first.get("family")]
    text = " ".join(p for p in parts if isinstance(p, str))
    return text or f"{resource.get('resourceType')}/{resource.get('id')}"

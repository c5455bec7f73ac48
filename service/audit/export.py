"""Reading a FHIR Bulk Data export: its files, their lines, and the patient each line belongs to.

An export directory holds one or more NDJSON files per resource type, as ``$export`` writes them
(``Condition.ndjson``, ``Condition.000.ndjson.gz``, ``1.Condition.ndjson``...), optionally with the
``manifest.json`` of the kick-off. The type of a file comes from the manifest when it names the file,
else from its name; a line whose ``resourceType`` differs from its file's is still read by its own.

Both engines read lines through ``classify``, so they see the same lines the same way. A line that
is not a JSON object with a ``resourceType``, or a resource that names no patient, is a *bad line*:
counted and skipped, never fatal. A file that cannot be read at all (missing, not gzip, not UTF-8
NDJSON from its first line on) is an ``ExportError`` naming the file and line.
"""

from __future__ import annotations

import functools
import gzip
import re
import zlib
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from service.errors import ExportError
from service.facts.codes import ValueSets
from service.facts.extract import ordered_study

# Resource types that name no patient but tell who ordered and where (requester, organization).
DIRECTORY_TYPES: frozenset[str] = frozenset({"Practitioner", "PractitionerRole", "Organization"})
# Read beside the prefetch types: Encounter.serviceProvider is an order's organization.
EXTRA_TYPES: frozenset[str] = frozenset({"Patient", "Encounter"})
# An order that never was one is not audited; every other status was signed once (decision-rules.md:
# a card is shown at signing, so revoked or completed orders count).
ORDER_NOT_AUDITED = ("entered-in-error",)
MAX_BAD_EXAMPLES = 20
READ_BLOCK = 8 * 1024 * 1024  # bytes read at a time from a plain NDJSON file
_FILE_NAME = re.compile(r"\.(ndjson|jsonl)(\.gz)?$")
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{2,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportFile:
    path: Path                 # the NDJSON file, gzip when its name ends in .gz
    kind: str                  # the resource type the manifest or the file name gives

    @property
    def compressed(self) -> bool:
        return self.path.name.endswith(".gz")


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The orders to audit: authored on or between these days (inclusive), either end open."""

    since: date | None = None
    until: date | None = None

    def holds(self, day: date) -> bool:
        """Whether an order authored on this day is audited."""
        return (self.since is None or day >= self.since) and (self.until is None or day <= self.until)


@dataclass(kw_only=True)
class ReadStats:
    """What reading the export met; merged across workers, identical for both engines."""

    lines: int = 0                                        # non-blank lines read
    resources: int = 0                                    # lines kept, keyed by patient
    bad_lines: int = 0                                    # counted and skipped
    skipped_types: dict[str, int] = field(default_factory=dict)  # resource types the audit does not read
    bad_examples: list[tuple[str, int, str]] = field(default_factory=list)  # (file name, line, reason)

    def merge(self, other: ReadStats) -> None:
        """Add another worker's counts."""
        self.lines += other.lines
        self.resources += other.resources
        self.bad_lines += other.bad_lines
        for kind, n in other.skipped_types.items():
            self.skipped_types[kind] = self.skipped_types.get(kind, 0) + n
        self.bad_examples = sorted(self.bad_examples + other.bad_examples)[:MAX_BAD_EXAMPLES]

    def bad(self, file_name: str, line: int, reason: str) -> None:
        """Count a bad line, keeping the first few (file, line, reason) for the summary."""
        self.bad_lines += 1
        if len(self.bad_examples) < MAX_BAD_EXAMPLES:
            self.bad_examples.append((file_name, line, reason))

    def count_resource(self) -> None:
        """Count a line ``classify`` keyed to its patient (a resource read)."""
        self.lines += 1
        self.resources += 1

    def count(self, reason: str, file_name: str, line: int) -> None:
        """Count a line ``classify`` did not key: blank (not counted), of a type not read, or bad."""
        if not reason:
            return
        self.lines += 1
        if reason.startswith("skip:"):
            kind = reason[5:]
            self.skipped_types[kind] = self.skipped_types.get(kind, 0) + 1
        else:
            self.bad(file_name, line, reason)

    def as_json(self) -> dict[str, Any]:
        """The summary.json form."""
        return {
            "lines": self.lines,
            "resources": self.resources,
            "bad_lines": self.bad_lines,
            "bad_line_examples": [{"file": f, "line": n, "reason": r} for f, n, r in sorted(self.bad_examples)],
            "skipped_types": dict(sorted(self.skipped_types.items())),
        }


def discover(export_dir: Path) -> list[ExportFile]:
    """The NDJSON files of an export directory, sorted by name; ExportError when there are none."""
    if not export_dir.is_dir():
        raise ExportError(f"{export_dir}: the export directory does not exist")
    by_manifest = _manifest_types(export_dir)
    files = []
    for path in sorted(export_dir.iterdir()):
        if not path.is_file() or not _FILE_NAME.search(path.name):
            continue
        kind = by_manifest.get(path.name) or kind_from_name(path.name)
        if kind is None:
            raise ExportError(f"{path}: cannot tell which resource type the file holds (name it e.g. Condition.ndjson)")
        files.append(ExportFile(path=path, kind=kind))
    if not files:
        raise ExportError(f"{export_dir}: no NDJSON files (*.ndjson, *.ndjson.gz) in the export directory")
    if not any(f.kind == "Patient" for f in files):
        raise ExportError(f"{export_dir}: the export has no Patient file")
    return files


def kind_from_name(name: str) -> str | None:
    """The resource type a bulk-export file name gives: the first segment that is a type name."""
    stem = _FILE_NAME.sub("", name)
    return next((part for part in re.split(r"[._\-]", stem) if _TYPE_NAME.match(part)), None)


def _manifest_types(export_dir: Path) -> dict[str, str]:
    manifest = export_dir / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        data = orjson.loads(manifest.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ExportError(f"{manifest}: not valid JSON ({exc.msg})") from None
    outputs = data.get("output") if isinstance(data, dict) else None
    types = {}
    for item in outputs if isinstance(outputs, list) else ():
        if isinstance(item, dict) and isinstance(item.get("type"), str) and isinstance(item.get("url"), str):
            types[item["url"].rstrip("/").rsplit("/", 1)[-1]] = item["type"]
    return types


def open_lines(file: ExportFile, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The raw lines of a file (or of the byte range [start, end) of a plain file)."""
    try:
        if file.compressed:
            with gzip.open(file.path, "rb") as fh:
                yield from fh
            return
        yield from _plain_lines(file.path, start, end)
    except FileNotFoundError:
        raise ExportError(f"{file.path}: the file disappeared while being read") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ExportError(f"{file.path}: not a readable gzip file ({exc})") from None


def _plain_lines(path: Path, start: int, end: int | None) -> Iterator[bytes]:
    """Lines (without their newline) read a block at a time: fewer Python steps a line than readline."""
    with path.open("rb") as fh:
        fh.seek(start)
        remaining = None if end is None else end - start
        carry = b""
        while remaining is None or remaining > 0:
            block = fh.read(READ_BLOCK if remaining is None else min(READ_BLOCK, remaining))
            if not block:
                break
            if remaining is not None:
                remaining -= len(block)
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            yield from lines
        if carry:
            yield carry


def numbered(file: ExportFile, lines: Iterator[bytes], first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """Lines with their 1-based numbers; a gzip error names the line it was met at."""
    number = first_line - 1
    try:
        for number, line in enumerate(lines, first_line):
            yield number, line
    except ExportError as exc:
        raise ExportError(f"{exc.message} at line {number + 1}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """What ``classify`` needs: the types the audit reads (with their code filters), the window, the value sets."""

    filters: Mapping[str, frozenset[str] | None]  # resource type -> the codes any prefetch template asks for; None: all
    window: Window
    value_sets: ValueSets

    @property
    def kinds(self) -> frozenset[str]:
        """The resource types keyed by patient (prefetch types + Patient + Encounter)."""
        return frozenset(self.filters)


_NOT_READ: Any = object()


def classify(line: bytes, reading: Reading, wanted: AbstractSet[str] | None = None) -> tuple[str, bool, bool] | str:
    """(patient id, is an audited order, kept) of one line, or the reason it is bad.

    *kept* is False for a resource no prefetch template would return (an Observation whose code no
    template asks for), and for a patient not in ``wanted`` when that is given (then the line is not
    looked at further: *is an audited order* is False too); a line not kept is counted but not written
    out. A blank line gives the empty reason ``""`` (not counted); a resource of a type the audit does
    not read gives ``"skip:<type>"``.
    """
    # Runs on every line of the export: the common case first, without helper calls.
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc.msg})" if line.strip() else ""
    if type(resource) is not dict:
        return "not a JSON object"
    kind = resource.get("resourceType")
    codes = reading.filters.get(kind, _NOT_READ) if type(kind) is str else _NOT_READ
    if codes is _NOT_READ:
        return "skip:" + kind if type(kind) is str and _TYPE_NAME.match(kind) else "no resourceType"
    patient = patient_of(resource)
    if patient is None:
        return "no patient reference" if kind != "Patient" else "Patient without a valid id"
    if wanted is not None and patient not in wanted:
        return patient, False, False
    flagged = kind == "ServiceRequest" and audited_order(resource, reading) is not None
    return patient, flagged, codes is None or has_code(resource, codes)


def has_code(resource: Mapping[str, Any], codes: frozenset[str]) -> bool:
    """Whether ``resource.code`` has a coding among these tokens (``system|code``, or a bare code)."""
    code = resource.get("code")
    codings = code.get("coding") if type(code) is dict else None
    if type(codings) is not list:
        return False
    bare = _bare_codes(codes)
    for coding in codings:
        value = coding.get("code") if type(coding) is dict else None
        # Most codings of a filtered type match nothing: the bare code is looked up before a token is built.
        if type(value) is str and value in bare and (value in codes or f"{coding.get('system')}|{value}" in codes):
            return True
    return False


@functools.lru_cache(maxsize=64)
def _bare_codes(codes: frozenset[str]) -> frozenset[str]:
    return frozenset(token.rsplit("|", 1)[-1] for token in codes)


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The id of the patient a resource belongs to (its own id for a Patient)."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and _ID.match(rid) else None
    for name in ("subject", "patient"):
        ref = resource.get(name)
        target = ref.get("reference") if type(ref) is dict else None
        if type(target) is str:
            pid = _patient_id(target)
            if pid is not None:
                return pid
    return None


@functools.lru_cache(maxsize=4096)
def _patient_id(reference: str) -> str | None:
    """`Patient/123` (relative or absolute) -> `123`; cached: an export names each patient many times."""
    at = reference.rfind("Patient/")
    if at < 0:
        return None
    pid = reference[at + 8:].split("/", 1)[0]
    return pid if _ID.match(pid) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditedOrder:
    modality: str              # MRI | CT | XR
    system: str                # the coding that made it a lumbar imaging order
    code: str
    authored: str              # authoredOn as written
    day: date                  # its calendar date: the evaluation's `today`


def audited_order(resource: Mapping[str, Any], reading: Reading) -> AuditedOrder | None:
    """The lumbar imaging order this ServiceRequest is, when it is authored within the window."""
    if resource.get("status") in ORDER_NOT_AUDITED:
        return None
    authored = resource.get("authoredOn")
    day = _day(authored)
    if day is None or not reading.window.holds(day):
        return None
    study = ordered_study(resource, reading.value_sets)  # the hook's own reading of the order
    if study is None:
        return None
    return AuditedOrder(modality=study.modality.value.upper(), system=study.system, code=study.code,
                        authored=str(authored), day=day)


def _day(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None  # an order authored on an unknown day cannot be placed in a window
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None

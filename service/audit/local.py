"""The local engine: every core of one machine, memory bounded whatever the export's size.

Two passes over disk, never the whole export in memory:

1. *Partition.* The export's files are cut into chunks (a plain file at line boundaries every
   ``CHUNK_BYTES``; a gzip file whole). Worker processes read the chunks in parallel, ``classify``
   each line and append it to one of ``N`` on-disk partitions chosen by a hash of its patient id,
   prefixed with the patient id and a flag marking an audited order. The ServiceRequest files go
   first: they name the patients with an audited order, and of the other files only those patients'
   lines are written (every line is still read and counted).
2. *Audit.* Workers take one partition at a time, group its lines by patient and run
   ``Auditor.audit_patient`` on each patient with an audited order.

Memory is bounded by one partition per worker (at most ``PARTITION_BYTES`` of lines, about 48 MB,
plus the parsed resources of one patient at a time), and grows with the number of audited orders
only (the ids of their patients, about 100 bytes each; their result rows, about 1 kB each, kept to
be sorted and written), not with the export.
"""

from __future__ import annotations

import gc
import os
import re
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.audit.export import ExportFile
from service.audit.export import ReadStats
from service.audit.export import classify
from service.audit.export import numbered
from service.audit.export import open_lines
from service.audit.patient import AuditContext
from service.audit.patient import Auditor
from service.pipeline import Evaluator

CHUNK_BYTES = 32 * 1024 * 1024       # a worker's unit of pass 1 in a plain file
PARTITION_BYTES = 48 * 1024 * 1024   # the target size of a partition, what a worker holds in pass 2
GZIP_RATIO = 8                        # bytes of NDJSON per byte of gzip, to size partitions
_FLAGGED = re.compile(rb"^1([^\t\n]*)\t", re.M)
Progress = Callable[[str, int, int], None]  # (phase, units done, units in the phase)


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    index: int
    file: ExportFile
    start: int
    end: int | None            # None: to the end of the file


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkResult:
    lines_seen: int            # every line of the chunk, blank ones included (for line numbers)
    stats: ReadStats           # bad-line numbers relative to the chunk's first line
    flagged: frozenset[str]    # patients with an audited order in this chunk


# One Auditor per worker process, set by the pool's initializer: a process pool hands work to
# functions, not objects, so the per-process state lives here (as a WSGI worker holds its app).
_AUDITOR: list[Auditor] = []
_WANTED: dict[Path, frozenset[str]] = {}  # the flagged-patients file, read once per worker


def _init_worker(context: AuditContext) -> None:
    _AUDITOR[:] = [Auditor(context, Evaluator.load())]
    gc.freeze()  # the evaluator's tables live as long as the worker: keep them out of every collection


def plan_chunks(files: list[ExportFile]) -> list[Chunk]:
    """Chunks of the files, at line boundaries."""
    chunks: list[Chunk] = []
    for file in files:
        size = file.path.stat().st_size
        if file.compressed or size <= CHUNK_BYTES:
            chunks.append(Chunk(index=len(chunks), file=file, start=0, end=None))
            continue
        start = 0
        with file.path.open("rb") as fh:
            while start < size:
                fh.seek(min(start + CHUNK_BYTES, size))
                fh.readline()  # to the end of the line the cut falls in
                end = min(fh.tell(), size)
                chunks.append(Chunk(index=len(chunks), file=file, start=start, end=None if end >= size else end))
                start = end
    return chunks


def partition_count(files: list[ExportFile], workers: int) -> int:
    """Enough partitions for each to hold about PARTITION_BYTES, and a few per worker."""
    total = sum(f.path.stat().st_size * (GZIP_RATIO if f.compressed else 1) for f in files)
    return max(4 * workers, -(-total // PARTITION_BYTES))


def run(
    files: list[ExportFile], context: AuditContext, *, work_dir: Path, workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], ReadStats]:
    """Audit the patient files of an export; rows in no particular order, and the read stats."""
    workers = workers or os.cpu_count() or 1
    kept = [f for f in files if f.kind in context.reading.kinds]
    chunks = plan_chunks(kept)
    partitions = partition_count(kept, workers)
    stats = ReadStats()
    rows: list[dict[str, Any]] = []
    first = [c for c in chunks if c.file.kind == "ServiceRequest"]
    rest = [c for c in chunks if c.file.kind != "ServiceRequest"]
    wanted = work_dir / "flagged-patients"
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(context,)) as pool:
        results: list[ChunkResult] = []
        for batch, only in ((first, None), (rest, wanted)):
            for result in pool.map(_partition, batch, [work_dir] * len(batch), [partitions] * len(batch), [only] * len(batch)):
                results.append(result)
                if progress:
                    progress("partition", len(results), len(chunks))
            if only is None:
                wanted.write_text("\n".join(sorted(frozenset().union(*(r.flagged for r in results)))), "utf-8")
        _merge(stats, first + rest, results)
        for done, found in enumerate(pool.map(_audit_partition, [work_dir] * partitions, range(partitions)), 1):
            rows.extend(found)
            if progress:
                progress("audit", done, partitions)
    return rows, stats


def _merge(stats: ReadStats, chunks: list[Chunk], results: list[ChunkResult]) -> None:
    """Merge the chunks' stats, turning chunk-relative line numbers into the file's."""
    seen_in_file: dict[Path, int] = {}
    for chunk, result in zip(chunks, results, strict=True):
        offset = seen_in_file.get(chunk.file.path, 0)
        seen_in_file[chunk.file.path] = offset + result.lines_seen
        result.stats.bad_examples = [(f, n + offset, r) for f, n, r in result.stats.bad_examples]
        stats.merge(result.stats)


def _partition(chunk: Chunk, work_dir: Path, partitions: int, wanted: Path | None) -> ChunkResult:
    """Pass 1 over one chunk: classify its lines into this chunk's partition files (only the lines
    of the patients listed in ``wanted``, when given)."""
    reading = _AUDITOR[0].context.reading
    only = _wanted(wanted) if wanted is not None else None
    flagged_here: set[str] = set()
    stats = ReadStats()
    folder = work_dir / f"chunk-{chunk.index:06d}"
    folder.mkdir(parents=True)
    outputs = [(folder / f"{p:05d}.tsv").open("wb", buffering=256 * 1024) for p in range(partitions)]
    lines_seen = 0
    name = chunk.file.path.name
    try:
        for number, line in numbered(chunk.file, open_lines(chunk.file, chunk.start, chunk.end)):
            lines_seen = number
            got = classify(line, reading, only)
            if type(got) is str:
                stats.count(got, name, number)
                continue
            patient, flagged, kept = got
            stats.count_resource()
            if flagged:
                flagged_here.add(patient)
            if kept:
                key = patient.encode()
                if not line.endswith(b"\n"):
                    line += b"\n"
                outputs[zlib.crc32(key) % partitions].write((b"1" if flagged else b"0") + key + b"\t" + line)
    finally:
        for out in outputs:
            out.close()
    return ChunkResult(lines_seen=lines_seen, stats=stats, flagged=frozenset(flagged_here))


def _wanted(path: Path) -> frozenset[str]:
    if path not in _WANTED:
        _WANTED.clear()
        _WANTED[path] = frozenset(path.read_text("utf-8").split("\n"))
    return _WANTED[path]


def _audit_partition(work_dir: Path, partition: int) -> list[dict[str, Any]]:
    """Pass 2 over one partition: group the lines of patients with an audited order, audit each."""
    auditor = _AUDITOR[0]
    data = b"".join(path.read_bytes() for path in sorted(work_dir.glob(f"chunk-*/{partition:05d}.tsv")))
    # Records are `<flag><patient id>\t<line>\n`: the patients with an audited order are found by one
    # scan in C, and only their lines are kept (and parsed again).
    flagged = set(_FLAGGED.findall(data))
    grouped: dict[bytes, list[bytes]] = {}
    if flagged:
        for record in data.split(b"\n"):
            tab = record.find(b"\t")
            if tab > 0 and record[1:tab] in flagged:
                grouped.setdefault(record[1:tab], []).append(record[tab + 1:])
    del data
    rows: list[dict[str, Any]] = []
    for pid in sorted(grouped):
        rows.extend(auditor.audit_patient(pid.decode(), grouped.pop(pid)))
    return rows

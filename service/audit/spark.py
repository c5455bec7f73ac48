"""The Spark engine: the same per-patient function, run by PySpark over the same files.

Each patient file becomes an RDD of its raw lines (``textFile``, gzip read by Hadoop; numbered with
``zipWithIndex`` so a bad line is named as the local engine names it). Every line goes through the
same ``classify``; a first job over the ServiceRequest files finds the patients with an audited
order (a broadcast set), and only their lines are kept, keyed by patient id; ``groupByKey`` brings a patient's lines together on
one executor, and ``Auditor.audit_patient`` turns them into rows. Each partition's read counts travel
under a reserved key and are merged in the same job. Rows come back to the driver (one small dict
per order), where the outputs are written as for the local engine.

On a cluster (``--master spark://host:7077``, ``yarn``, ``k8s://…``) the export directory must be
readable at the same path by every executor (a shared filesystem), and every executor's Python must
have this package installed (the same version as the driver).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

from service.audit.export import ExportFile
from service.audit.export import ReadStats
from service.audit.export import classify
from service.audit.patient import AuditContext
from service.audit.patient import Auditor

STATS_KEY = "\x00stats"  # not a FHIR id (ids are [A-Za-z0-9-.])

# One Auditor per executor Python process and broadcast: Spark calls functions, and loading the
# evaluator (value sets, rule table, cards) once per process is what keeps a task cheap.
_AUDITOR: list[Auditor] = []  # at most one: that of the broadcast context last used


def run(files: list[ExportFile], context: AuditContext, *, master: str) -> tuple[list[dict[str, Any]], ReadStats]:
    """Audit the patient files of an export on Spark; rows in no particular order, and the read stats."""
    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.master(master).appName("lumbar-mri-cds audit")
               .config("spark.ui.enabled", "false"))
    if master.startswith("local"):
        # In local mode the Python workers are this interpreter, so they import this very package.
        builder = builder.config("spark.pyspark.python", sys.executable).config("spark.pyspark.driver.python", sys.executable)
    spark = builder.getOrCreate()
    try:
        return _run(spark.sparkContext, files, context)
    finally:
        spark.stop()


def _run(sc: Any, files: list[ExportFile], context: AuditContext) -> tuple[list[dict[str, Any]], ReadStats]:
    shared = sc.broadcast(context)
    kept = [f for f in files if f.kind in context.reading.kinds]
    if not kept:
        return [], ReadStats()
    # As the local engine does: the ServiceRequest files name the patients with an audited order,
    # and only those patients' lines are shuffled (every line is still read and counted).
    orders = [sc.textFile(str(f.path.resolve()), use_unicode=False) for f in kept if f.kind == "ServiceRequest"]
    flagged = sc.union(orders).flatMap(lambda line: _flagged(line, shared)).distinct().collect() if orders else []
    wanted = sc.broadcast(frozenset(flagged))
    lines = [
        sc.textFile(str(f.path.resolve()), use_unicode=False).zipWithIndex()
        .mapPartitions(lambda part, name=f.path.name: _classify_partition(part, name, shared, wanted))
        for f in kept
    ]
    results = sc.union(lines).groupByKey().flatMap(lambda group: _audit_group(group, shared)).collect()
    rows = [value for kind, value in results if kind == "row"]
    stats = ReadStats()
    for kind, value in results:
        if kind == "stats":
            stats.merge(value)
    return rows, stats


def _auditor(shared: Any) -> Auditor:
    context = shared.value  # loaded once per broadcast and worker: the same object on every call
    if not _AUDITOR or _AUDITOR[0].context is not context:
        from service.pipeline import Evaluator

        _AUDITOR[:] = [Auditor(context, Evaluator.load())]
    return _AUDITOR[0]


def _flagged(line: bytes, shared: Any) -> list[str]:
    """[patient id] when the line is an audited order, else []."""
    got = classify(line, shared.value.reading)
    return [got[0]] if type(got) is tuple and got[1] else []


def _classify_partition(
    part: Iterable[tuple[bytes, int]], name: str, shared: Any, wanted: Any
) -> Iterator[tuple[str, Any]]:
    """(patient id, (flag, line)) for each line kept of a wanted patient; then the partition's
    ReadStats under STATS_KEY."""
    reading = shared.value.reading
    patients = wanted.value
    stats = ReadStats()
    for line, index in part:
        got = classify(line, reading, patients)
        if isinstance(got, str):
            stats.count(got, name, index + 1)
            continue
        patient, _, kept = got
        stats.count_resource()
        if kept:  # only wanted patients' lines are kept, and each has its audited order among them
            yield patient, line
    yield STATS_KEY, stats


def _audit_group(group: tuple[str, Iterable[Any]], shared: Any) -> Iterator[tuple[str, Any]]:
    """("row", row) for each audited order of one patient, or ("stats", ReadStats) merged."""
    key, values = group
    if key == STATS_KEY:
        merged = ReadStats()
        for stats in values:
            merged.merge(stats)
        yield "stats", merged
        return
    for row in _auditor(shared).audit_patient(key, list(values)):
        yield "row", row

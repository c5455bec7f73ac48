"""``lumbar-mri-cds audit``: the decision model over the lumbar imaging orders of a bulk export."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from service import config
from service.audit import export
from service.errors import ExportError

DAY = click.DateTime(formats=["%Y-%m-%d"])


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r{phase:<10} [{'#' * filled}{' ' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@click.command()
@click.argument("export_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="directory for orders.parquet, orders.csv, summary.json and report.html")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help="local: all cores of this machine; spark: PySpark (--master)")
@click.option("--master", default="local[*]", show_default=True, help="Spark master URL (--engine spark)")
@click.option("--since", type=DAY, help="audit orders authored on or after this day")
@click.option("--until", type=DAY, help="audit orders authored on or before this day")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"TOML configuration file (default: ${config.CONFIG_ENV}, else the development profile)")
@click.option("--fhir-server", help="run $export on this FHIR base instead of reading EXPORT_DIR")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a file holding the bearer access token for --fhir-server")
@click.option("--workers", type=click.IntRange(1, 256), help="worker processes of the local engine (default: all cores)")
def audit(
    export_dir: Path | None, out_dir: Path, engine: str, master: str, since: Any, until: Any,
    config_file: Path | None, fhir_server: str | None, token_file: Path | None, workers: int | None,
) -> None:
    """Run the decision model over the lumbar imaging orders of a FHIR Bulk Data export, each as of
    its authoredOn; write per-order Parquet and CSV (pseudonymized), summary.json and report.html."""
    settings = config.load_settings(config_file or config.config_path(os.environ), os.environ)
    if (export_dir is None) == (fhir_server is None):
        raise click.UsageError("give either EXPORT_DIR or --fhir-server URL")
    window = export.Window(since=since.date() if since else None, until=until.date() if until else None)
    if window.since and window.until and window.since > window.until:
        raise click.UsageError("--since is after --until")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fhir_server is not None:
        from service.audit import bulk

        token = token_file.read_text("utf-8").strip() if token_file else None
        export_dir = bulk.kick_off_and_download(settings, fhir_server, token, out_dir / "export", log=_say)
    assert export_dir is not None  # exactly one of the two was given (checked above)
    started = time.monotonic()
    summary = run_audit(export_dir, out_dir, window=window, salt=settings.patient_hash_salt, engine=engine,
                        master=master, workers=workers, progress=ProgressBar(sys.stderr.isatty()))
    elapsed = time.monotonic() - started
    _say(f"{summary['orders']} orders audited in {elapsed:.1f} s ({engine} engine): "
         f"{summary['low_value']} low value of {summary['reviewed']} reviewed; "
         f"{summary['export']['bad_lines']} malformed lines skipped; results in {out_dir}")


def _say(message: str) -> None:
    click.echo(message, err=True)


def run_audit(
    export_dir: Path, out_dir: Path, *, window: export.Window, salt: str, engine: str = "local",
    master: str = "local[*]", workers: int | None = None, progress: Any = None,
) -> dict[str, Any]:
    """Audit an export into out_dir with either engine; the summary written to summary.json."""
    # Imported here: `lumbar-mri-cds --help` and the other commands need none of this.
    from service.audit import output
    from service.audit import report
    from service.audit.directory import load_directory
    from service.audit.patient import AuditContext
    from service.audit.patient import reading_filters
    from service.pipeline import Evaluator

    files = export.discover(export_dir)
    evaluator = Evaluator.load()
    reading = export.Reading(filters=reading_filters(evaluator), window=window, value_sets=evaluator.value_sets)
    stats = export.ReadStats()
    directory = load_directory(files, stats)
    context = AuditContext(reading=reading, directory=directory, salt=salt)
    if engine == "spark":
        from service.audit import spark

        rows, read = spark.run(files, context, master=master)
    else:
        from service.audit import local

        with tempfile.TemporaryDirectory(prefix=".audit-", dir=out_dir) as work:
            rows, read = local.run(files, context, work_dir=Path(work), workers=workers, progress=progress)
    stats.merge(read)
    _check_readable(stats)
    rows = output.sort_rows(rows)
    summary = output.summarize(rows, window, export_summary(files, reading, stats))
    output.write_parquet(rows, out_dir / "orders.parquet")
    output.write_csv(rows, out_dir / "orders.csv")
    output.write_summary(summary, out_dir / "summary.json")
    (out_dir / "report.html").write_text(report.render(summary), "utf-8")
    return summary


def _check_readable(stats: export.ReadStats) -> None:
    """A malformed export (not one line read as a resource) is an error naming its first bad line."""
    if stats.resources == 0 and stats.bad_examples:
        name, line, reason = sorted(stats.bad_examples)[0]
        raise ExportError(f"{name}, line {line}: {reason}; no line of the export could be read as a FHIR resource")


def export_summary(files: list[export.ExportFile], reading: export.Reading, stats: export.ReadStats) -> dict[str, Any]:
    read_types = reading.kinds | export.DIRECTORY_TYPES
    return {
        "files": [{"name": f.path.name, "type": f.kind} for f in files if f.kind in read_types],
        "skipped_files": [f.path.name for f in files if f.kind not in read_types],
        **stats.as_json(),
    }

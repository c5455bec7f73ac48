"""Helpers for the audit tests: generated exports (benchmarks/make_export.py) and the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from service import cli
from tests.fhir import ROOT

SALT = "audit-test-salt"
_spec = importlib.util.spec_from_file_location("make_export", ROOT / "benchmarks" / "make_export.py")
make_export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_export)  # type: ignore[union-attr]

SMALL_PATIENTS = 300


@pytest.fixture(scope="session")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated export of 300 patients (one plain file per type), made once per session."""
    out = tmp_path_factory.mktemp("export") / "plain"
    make_export.generate(out, SMALL_PATIENTS, seed=7)
    return out


@pytest.fixture(autouse=True)
def salted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every audit runs with a known patient_hash_salt and no configuration file."""
    monkeypatch.delenv("LUMBAR_MRI_CDS_CONFIG", raising=False)
    monkeypatch.setenv("LUMBAR_MRI_CDS_PATIENT_HASH_SALT", SALT)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`lumbar-mri-cds ARGV`: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def audit(capsys: pytest.CaptureFixture[str], export: Path, out: Path, *extra: str) -> tuple[int, str]:
    """Run the audit command; (exit code, stderr)."""
    code, _, err = run_cli(capsys, "audit", str(export), "--out", str(out), *extra)
    return code, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def write_ndjson(path: Path, resources: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in resources))

"""`lumbar-mri-cds audit` on generated exports: outputs re-read, gzip and multi-file input, bad lines,
malformed exports, the window, pseudonymization."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from service.audit import command
from service.audit import export
from service.audit.patient import COLUMNS
from tests.audit.conftest import SALT
from tests.audit.conftest import audit
from tests.audit.conftest import make_export
from tests.audit.conftest import read_csv
from tests.audit.conftest import read_summary


@pytest.fixture(scope="module")
def audited(small_export, tmp_path_factory) -> Path:
    """The small export audited once (2025 orders, local engine)."""
    out = tmp_path_factory.mktemp("audited")
    summary = command.run_audit(small_export, out, window=export.Window(since=_d("2025-01-01"), until=_d("2025-12-31")),
                                salt=SALT, workers=2)
    assert summary["orders"] > 20
    return out


def _d(text: str):
    from datetime import date

    return date.fromisoformat(text)


def test_parquet_and_csv_hold_the_same_rows_as_the_summary_counts(audited):
    table = pq.read_table(audited / "orders.parquet")
    assert table.column_names == [name for name, _ in COLUMNS]
    parquet_rows = table.to_pylist()
    csv_rows = read_csv(audited / "orders.csv")
    assert len(parquet_rows) == len(csv_rows)
    for p, c in zip(parquet_rows, csv_rows):
        assert {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in p.items()} == c
    summary = read_summary(audited)
    assert summary["orders"] == len(parquet_rows)
    assert summary["low_value"] == sum(r["low_value"] for r in parquet_rows)
    assert summary["cards"] == sum(r["cards"] for r in parquet_rows)
    assert sum(g["orders"] for g in summary["by_month"].values()) == len(parquet_rows)
    assert sum(summary["cards_per_day"]["daily"].values()) == summary["cards"]
    assert summary["cards_per_day"]["days"] == 365
    assert all("2025-01-01" <= r["authored_on"] <= "2025-12-31" for r in parquet_rows)


def test_every_rule_situation_and_modality_of_the_generator_appears(audited):
    summary = read_summary(audited)
    assert {"MRI", "CT", "XR"} <= set(summary["by_modality"])
    low = {rule for rule, g in summary["by_rule"].items() if g["low_value"]}
    assert {"acute-uncomplicated", "no-conservative-trial"} <= low
    assert {"persistent-after-conservative-care", "suspected-cancer-infection"} <= set(summary["by_rule"])
    rows = pq.read_table(audited / "orders.parquet").to_pylist()
    decided = [r for r in rows if r["outcome"] == "decided"]
    assert decided and all(r["card_rules"].split(";")[0] == r["rule"] for r in decided if r["cards"] and r["rule"] != "no-criteria-apply")
    assert all(r["organization_name"] and r["requester_name"] for r in rows)


def test_no_name_birth_date_or_identifier_leaves_the_export(small_export, audited):
    patients = [json.loads(line) for line in (small_export / "Patient.ndjson").read_text().splitlines()]
    outputs = b"".join((audited / name).read_bytes() for name in ("orders.csv", "summary.json", "report.html"))
    for patient in patients[:100]:
        for secret in (patient["id"], patient["birthDate"], patient["identifier"][0]["value"]):
            assert secret.encode() not in outputs
    hashes = {r["patient"] for r in read_csv(audited / "orders.csv")}
    expected = {hmac.new(SALT.encode(), p["id"].encode(), hashlib.sha256).hexdigest() for p in patients}
    assert hashes and hashes <= expected


def test_gzip_and_multi_file_exports_give_the_same_results(capsys, tmp_path, audited):
    make_export.generate(tmp_path / "gz", 300, seed=7, compress=True, files_per_type=3)
    assert len(list((tmp_path / "gz").glob("Condition.*.ndjson.gz"))) == 3
    code, _ = audit(capsys, tmp_path / "gz", tmp_path / "out", "--since", "2025-01-01", "--until", "2025-12-31")
    assert code == 0
    assert (tmp_path / "out" / "orders.csv").read_bytes() == (audited / "orders.csv").read_bytes()
    ours, theirs = read_summary(tmp_path / "out"), read_summary(audited)
    assert ours["export"]["files"] != theirs["export"]["files"]
    for key in ("orders", "low_value", "by_rule", "by_organization", "cards_per_day"):
        assert ours[key] == theirs[key]
    assert ours["export"]["resources"] == theirs["export"]["resources"]


def test_bad_lines_are_counted_named_and_skipped(capsys, tmp_path, small_export, audited):
    export_dir = tmp_path / "export"
    shutil.copytree(small_export, export_dir)
    conditions = export_dir / "Condition.ndjson"
    lines = conditions.read_text().splitlines()
    lines[4:4] = ['{"resourceType": "Condition", "id": "x", "subject": {"reference": "Patient/pat-0000001"}',  # truncated
                  "[1, 2]", '{"resourceType": "Condition", "id": "no-subject"}', ""]
    conditions.write_text("\n".join(lines) + "\n")
    code, err = audit(capsys, export_dir, tmp_path / "out", "--since", "2025-01-01", "--until", "2025-12-31")
    assert code == 0, err
    assert "3 malformed lines skipped" in err
    summary = read_summary(tmp_path / "out")
    assert summary["export"]["bad_lines"] == 3
    assert [(e["file"], e["line"]) for e in summary["export"]["bad_line_examples"]] == [
        ("Condition.ndjson", 5), ("Condition.ndjson", 6), ("Condition.ndjson", 7)]
    assert "not JSON" in summary["export"]["bad_line_examples"][0]["reason"]
    assert (tmp_path / "out" / "orders.csv").read_bytes() == (audited / "orders.csv").read_bytes()


def test_a_missing_export_exits_6_naming_it(capsys, tmp_path):
    code, err = audit(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert code == 6
    assert "nowhere: the export directory does not exist" in err


def test_an_export_without_ndjson_files_exits_6(capsys, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("hello")
    code, err = audit(capsys, tmp_path / "export", tmp_path / "out")
    assert code == 6
    assert "no NDJSON files" in err


def test_an_export_of_garbage_exits_6_naming_file_and_line(capsys, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "Patient.ndjson").write_text("\n<html>\n<body>oops</body>\n")
    code, err = audit(capsys, tmp_path / "export", tmp_path / "out")
    assert code == 6
    assert "Patient.ndjson, line 2: not JSON" in err


def test_a_truncated_gzip_file_exits_6_naming_file_and_line(capsys, tmp_path, small_export):
    export_dir = tmp_path / "export"
    shutil.copytree(small_export, export_dir)
    data = gzip.compress((export_dir / "Condition.ndjson").read_bytes())
    (export_dir / "Condition.ndjson").unlink()
    (export_dir / "Condition.ndjson.gz").write_bytes(data[: len(data) // 2])
    code, err = audit(capsys, export_dir, tmp_path / "out")
    assert code == 6
    assert "Condition.ndjson.gz: not a readable gzip file" in err
    assert " at line " in err


def test_since_and_until_select_the_orders(capsys, tmp_path, small_export):
    code, _ = audit(capsys, small_export, tmp_path / "out", "--since", "2025-03-01", "--until", "2025-03-31")
    assert code == 0
    rows = read_csv(tmp_path / "out" / "orders.csv")
    assert rows and {r["month"] for r in rows} == {"2025-03"}
    assert read_summary(tmp_path / "out")["cards_per_day"]["days"] == 31


def test_the_progress_bar_draws_on_a_terminal_only(capsys):
    command.ProgressBar(enabled=True)("audit", 3, 4)
    command.ProgressBar(enabled=False)("audit", 4, 4)
    err = capsys.readouterr().err
    assert err == "\raudit      [######################        ] 3/4"


@pytest.mark.parametrize(("name", "kind"), [
    ("Condition.ndjson", "Condition"), ("Condition.003.ndjson.gz", "Condition"), ("1.Observation.ndjson", "Observation"),
    ("MedicationStatement_2.jsonl", "MedicationStatement"), ("output-Patient.ndjson", "Patient"), ("1.2.ndjson", None),
])
def test_the_resource_type_of_a_file_comes_from_its_name(name, kind):
    assert export.kind_from_name(name) == kind


def test_outcomes_and_the_rate_count_only_orders_the_model_reviewed(capsys, tmp_path):
    from tests import fhir
    from tests.audit.conftest import write_ndjson

    def order(oid: str, pid: str) -> dict:
        out = fhir.mri_order("72148", oid=oid, pid=pid)
        out.update(status="active", intent="order", authoredOn="2025-04-02T09:00:00Z",
                   requester={"reference": "Practitioner/doc-1"})
        return out

    export_dir = tmp_path / "export"
    write_ndjson(export_dir / "Patient.ndjson", [fhir.patient("adult", birth="1970-01-01"),
                                                 fhir.patient("child", birth="2015-01-01")])
    write_ndjson(export_dir / "Condition.ndjson", [fhir.condition("M54.50", onset="2025-03-30", pid=p)
                                                   for p in ("adult", "child", "ghost")])
    write_ndjson(export_dir / "ServiceRequest.ndjson", [order("o1", "adult"), order("o2", "child"), order("o3", "ghost")])
    write_ndjson(export_dir / "Practitioner.ndjson", [{"resourceType": "Practitioner", "id": "doc-1",
                                                       "name": [{"given": ["Ana"], "family": "Lopez"}]}])
    code, _ = audit(capsys, export_dir, tmp_path / "out")
    assert code == 0
    rows = {r["outcome"]: r for r in read_csv(tmp_path / "out" / "orders.csv")}
    assert set(rows) == {"decided", "not-adult", "data-unobtainable"}
    assert rows["decided"]["rule"] == "acute-uncomplicated" and rows["decided"]["low_value"] == "true"
    assert rows["not-adult"]["cards"] == "0" and rows["not-adult"]["rule"] == ""
    assert rows["decided"]["requester_name"] == "Ana Lopez"
    summary = read_summary(tmp_path / "out")
    assert (summary["orders"], summary["reviewed"], summary["low_value"], summary["low_value_rate"]) == (3, 2, 1, 0.5)
    assert summary["by_requester"]["Practitioner/doc-1"]["name"] == "Ana Lopez"

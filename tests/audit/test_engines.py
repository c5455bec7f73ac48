"""The local and Spark engines give identical results on the same export (one short local-mode run)."""

from __future__ import annotations

import shutil

import pytest

from tests.audit.conftest import audit
from tests.audit.conftest import read_summary
from tests.audit.conftest import write_ndjson

pyspark = pytest.importorskip("pyspark", reason="pip install -e '.[test]' installs PySpark")


def test_local_and_spark_engines_agree(capsys, tmp_path, small_export):
    if shutil.which("java") is None:
        pytest.fail("the Spark engine needs a Java runtime (.ci/run installs default-jre-headless)")
    export_dir = tmp_path / "export"
    shutil.copytree(small_export, export_dir)
    # A second Condition file, with a resource naming no patient and a line that is not JSON: both engines must name it the same way.
    write_ndjson(export_dir / "Condition.extra.ndjson", ['{"resourceType": "Condition", "id": "c"}', "not json"])
    outputs = {}
    for engine in ("local", "spark"):
        out = tmp_path / engine
        code, err = audit(capsys, export_dir, out, "--engine", engine, "--since", "2025-01-01", "--until", "2025-12-31")
        assert code == 0, err
        outputs[engine] = out
    local, spark = outputs["local"], outputs["spark"]
    assert (local / "orders.csv").read_bytes() == (spark / "orders.csv").read_bytes()
    assert read_summary(local) == read_summary(spark)
    assert read_summary(local)["orders"] > 20
    assert read_summary(local)["export"]["bad_lines"] == 2

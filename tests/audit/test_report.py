"""report.html: self-contained, and its charts present when headless Chromium renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.audit import command
from service.audit import export
from tests.audit.conftest import SALT

CHARTS = ("by-month", "by-rule", "by-modality", "by-requester", "by-organization", "cards-per-day")


@pytest.fixture(scope="module")
def report(small_export, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    command.run_audit(small_export, out, window=export.Window(), salt=SALT, workers=1)
    return out / "report.html"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("no Chromium on this machine (.ci/run installs the distribution's chromium package)")


def test_the_report_needs_nothing_from_outside(report):
    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert "<script" not in html


def test_headless_chromium_renders_every_chart_with_counts_beside_percentages(report):
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "<title>Lumbar imaging order audit</title>" in dom
    for chart in CHARTS:
        figure = re.search(rf'<figure[^>]*data-chart="{chart}".*?</figure>', dom, re.S)
        assert figure, f"chart {chart} missing from the rendered page"
        assert "<svg" in figure.group(0) and "<rect" in figure.group(0)
    percentages = re.findall(r"\d+\.\d%(?: \(\d+ of \d+\))?", dom)
    assert percentages and all("of" in p for p in percentages)  # every percentage has its counts beside it
    by_month = re.search(r'data-chart="by-month".*?</figure>', dom, re.S).group(0)
    assert len(re.findall(r'class="row"', by_month)) >= 12

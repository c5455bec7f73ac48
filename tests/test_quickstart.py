"""The README's quick start, as a newcomer runs it: a fresh virtual environment, `pip install` of the
checkout, `serve` in the background, `call` a fixture, read the card, `report`.

The checkout is copied (the files a clone has that the package and the quick start use), so the
install builds from scratch as from a fresh clone; pip's cache is used as a user's would be.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import free_port
from tests.serving import stop
from tests.serving import wait_healthy

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = ["pyproject.toml", "README.md", "service", "cards", "fixtures"]
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    """The commands of the README's quick start block, in order."""
    block = re.search(r"## Quick start\n.*?```console\n(.*?)```", README, re.S)
    assert block, "the README has a Quick start section with a console block"
    return [line[2:].strip() for line in block[1].splitlines() if line.startswith("$ ")]


def test_the_readme_quick_start_is_the_one_this_test_runs():
    commands = quick_start_commands()
    assert commands[0] == "python -m venv .venv && . .venv/bin/activate"
    assert commands[1] == "pip install ."
    assert commands[2] == "lumbar-mri-cds serve &"
    assert commands[3] == "lumbar-mri-cds call fixtures/requests/acute-uncomplicated.json --as-of 2026-11-26"
    assert commands[4] == "lumbar-mri-cds report"


def test_quick_start_from_a_fresh_virtual_environment(tmp_path):
    checkout = tmp_path / "lumbar-mri-cds"
    checkout.mkdir()
    for name in CHECKOUT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, checkout / name)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LUMBAR_MRI_CDS_", "VIRTUAL_ENV", "PROMETHEUS"))}
    env.update({"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))})
    env.pop("XDG_RUNTIME_DIR", None)

    def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result

    run(sys.executable, "-m", "venv", ".venv")
    bin_dir = checkout / ".venv" / "bin"
    run(str(bin_dir / "pip"), "install", "--quiet", ".", timeout=300)
    cds = str(bin_dir / "lumbar-mri-cds")
    port = free_port()  # the README's serve uses 8000; a test must not take a port another may hold
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+b")
    server = subprocess.Popen([cds, "serve", "--port", str(port)], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(server, port, lambda: Path(log.name).read_text(errors="replace"), timeout=60)
        called = run(cds, "call", "fixtures/requests/acute-uncomplicated.json", "--as-of", "2026-11-26", "--url", url)
        assert "[WARNING] Lumbar MRI not recommended: acute low back pain without red flags (< 6 weeks)" in called.stdout
        assert "* suggestion: Cancel the lumbar MRI order (delete)" in called.stdout
        assert "Rating: ServiceRequest/example-request-id = not-appropriate" in called.stdout
        reported = run(cds, "report")
    finally:
        stop(server)
        log.close()
    assert re.search(r"acute-uncomplicated\s+1\b", reported.stdout), reported.stdout
    assert str(home / ".local" / "share" / "lumbar-mri-cds" / "lumbar-mri-cds.db") in reported.stdout
    assert server.returncode == 0


@pytest.fixture(autouse=True)
def _no_configuration_from_the_test_run(monkeypatch):
    monkeypatch.delenv("LUMBAR_MRI_CDS_CONFIG", raising=False)

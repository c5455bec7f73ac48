"""Run the in-memory FHIR R4 server (server.js beside this file) for a test, and load data into it."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import tempfile
import threading
from datetime import date
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

SERVER_DIR = Path(__file__).resolve().parent
STARTUP_TIMEOUT_SECONDS = 60.0   # indexing the R4 definitions takes 1-2 s; a cold CI box is slower
NPM_CI_TIMEOUT_SECONDS = 600.0
_FHIR_JSON = "application/fhir+json"


@contextlib.contextmanager
def running_fhir_server() -> Iterator[str]:
    """Start server.js on a free port; yield its base URL (``http://127.0.0.1:<port>/fhir``)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the in-memory FHIR server (tests/fhirserver) needs Node 20+")
    _install_packages()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [node, "server.js", "--port", "0", "--exit-on-stdin-close"],
            cwd=SERVER_DIR,
            # Our end of stdin closes when this process dies, so the server never outlives the tests.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            port = _wait_for_port(proc, stderr)
            yield f"http://127.0.0.1:{port}/fhir"
        finally:
            _stop(proc)


@contextlib.contextmanager
def serving_stories(names: Iterable[str]) -> Iterator[str]:
    """A running FHIR server holding these fixture patients (fixtures/patients), dates moved to today."""
    from tests import fhir

    with running_fhir_server() as base:
        for name in names:
            bundle = json.loads((fhir.FIXTURES / "patients" / f"{name}.json").read_text())
            load_bundle(base, fhir.shift_dates(bundle, (date.today() - fhir.AS_OF).days))
        yield base


def load_bundle(base: str, bundle_json: Mapping[str, Any] | str | bytes) -> list[str]:
    """PUT every entry's resource at ``{base}/{type}/{id}`` so ids are kept; return the references."""
    bundle = json.loads(bundle_json) if isinstance(bundle_json, (str, bytes)) else bundle_json
    loaded = []
    with requests.Session() as session:
        for index, entry in enumerate(bundle.get("entry") or ()):
            resource = entry.get("resource")
            if not resource:
                continue
            if not resource.get("resourceType") or not resource.get("id"):
                raise ValueError(f"Bundle.entry[{index}].resource needs resourceType and id to be PUT")
            reference = f"{resource['resourceType']}/{resource['id']}"
            response = session.put(
                f"{base.rstrip('/')}/{reference}",
                json=resource,
                headers={"Content-Type": _FHIR_JSON, "Accept": _FHIR_JSON},
                timeout=30,
            )
            if not response.ok:
                raise RuntimeError(f"PUT {reference} failed: HTTP {response.status_code} {response.text[:500]}")
            loaded.append(reference)
    return loaded


def _install_packages() -> None:
    """Run ``npm ci`` once if node_modules is missing; a file lock keeps parallel test workers apart."""
    marker = SERVER_DIR / "node_modules" / "@medplum" / "fhir-router" / "package.json"
    if marker.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot install tests/fhirserver's packages")
    lock_path = Path(tempfile.gettempdir()) / "lumbar-mri-cds-fhirserver-npm.lock"
    with open(lock_path, "w") as lock:
        _lock(lock)
        if marker.exists():  # another worker installed them while we waited
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=SERVER_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_SECONDS,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm ci in {SERVER_DIR} failed:\n{result.stderr[-3000:]}")


def _lock(file: Any) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no parallel workers to guard against there in practice
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)


def _wait_for_port(proc: subprocess.Popen[bytes], stderr: Any) -> int:
    """Read stdout until ``LISTENING <port>``; fail with the server's stderr if it dies or stalls."""
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=read, name="fhirserver-stdout", daemon=True).start()
    try:
        line = lines.get(timeout=STARTUP_TIMEOUT_SECONDS)
    except queue.Empty:
        line = b""
    words = line.decode(errors="replace").split()
    if len(words) == 2 and words[0] == "LISTENING" and words[1].isdigit():
        return int(words[1])
    _stop(proc)
    stderr.seek(0)
    detail = stderr.read().decode(errors="replace")[-3000:]
    raise RuntimeError(f"FHIR test server did not start (first line {line!r}):\n{detail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


__all__ = ["SERVER_DIR", "load_bundle", "running_fhir_server"]

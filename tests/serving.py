"""Run `lumbar-mri-cds serve` as a real process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_development_config(directory: Path) -> Path:
    """A development-profile configuration with its SQLite file in `directory` (the local issuer's
    key lives in the data directory: set XDG_DATA_HOME for the server and for `call` alike)."""
    path = directory / "development.toml"
    path.write_text('profile = "development"\ndatabase_url = "sqlite:///dev.db"\n')
    return path


def write_config(directory: Path, *, port: int, jwks_file: Path, issuer: str, database_url: str | None = None,
                 fhir_servers: tuple[str, ...] = ()) -> Path:
    """A production configuration for a local test EHR."""
    servers = ", ".join(f'"{s}"' for s in fhir_servers)
    path = directory / "config.toml"
    path.write_text(
        'profile = "production"\n'
        f'public_base_url = "http://127.0.0.1:{port}"\n'
        f'database_url = "{database_url or "sqlite:///" + str(directory / "serve.db")}"\n'
        "[cors]\nallow_origins = [\"https://sandbox.cds-hooks.org\"]\n"
        "[[issuers]]\n"
        f'iss = "{issuer}"\n'
        f'jwks_file = "{jwks_file}"\n'
        f"fhir_servers = [{servers}]\n"
    )
    return path


def serve_command(config: Path, port: int, workers: int, extra: list[str] | None = None) -> list[str]:
    """The `lumbar-mri-cds serve` command line (as a module, so no installed script is needed)."""
    return [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", str(workers),
            "--config", str(config), *(extra or [])]


def wait_healthy(process: subprocess.Popen, port: int, output: Callable[[], str], timeout: float = 30) -> None:
    """Wait until /healthz answers; RuntimeError with the tail of `output()` if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {output()[-2000:]}")
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port}: /healthz did not answer within {timeout:.0f} s")
        time.sleep(0.1)


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers: the children of the master process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == master:
                    pids.append(int(entry.name))
    return sorted(pids)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (gunicorn's graceful shutdown); kill after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serving(config: Path, port: int, *, workers: int = 2, env: dict[str, str | None] | None = None,
            extra: list[str] | None = None) -> Iterator[subprocess.Popen]:
    """Start the service, wait until /healthz answers, stop it with SIGTERM afterwards.

    Afterwards ``process.captured`` holds everything the server wrote (stdout and stderr).
    """
    # Output goes to a file, not a pipe nobody reads: a pipe fills after ~80 logged calls and stalls the workers.
    output = tempfile.TemporaryFile()

    def written() -> str:
        output.seek(0)
        return output.read().decode(errors="replace")

    environment = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset
    process = subprocess.Popen(serve_command(config, port, workers, extra), stdout=output, stderr=subprocess.STDOUT,
                               env=environment)
    process.output = written  # what the server has written so far
    try:
        wait_healthy(process, port, written)
        yield process
    finally:
        stop(process)
        output.seek(0)
        process.captured = output.read()  # what the server wrote (stdout and stderr), for the tests
        output.close()

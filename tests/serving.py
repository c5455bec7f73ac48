"""Run `lumbar-mri-cds serve` as a real process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@contextmanager
def serving(config: Path, port: int, *, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Start the service, wait until /healthz answers, stop it with SIGTERM afterwards.

    Afterwards ``process.captured`` holds everything the server wrote (stdout and stderr).
    """
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", str(workers), "--config", str(config)]
    # Output goes to a file, not a pipe nobody reads: a pipe fills after ~80 logged calls and stalls the workers.
    output = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                output.seek(0)
                raise RuntimeError(f"serve exited with {process.returncode}: {output.read().decode()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer /healthz within 30 s")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        output.seek(0)
        process.captured = output.read()  # what the server wrote (stdout and stderr), for the tests
        output.close()

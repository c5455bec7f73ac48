"""The two databases the store is tested against: a temporary SQLite file and a real PostgreSQL.

PostgreSQL is the server these machines and CI run at 127.0.0.1:5432 (trust auth, database `test`;
``LUMBAR_MRI_CDS_TEST_POSTGRES`` names another). Each use gets a fresh schema, reached through the
URL's ``search_path``, dropped afterwards, so parallel runs and other suites never see each other's
rows. Tests are skipped only when no server answers.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

POSTGRES_URL = os.environ.get("LUMBAR_MRI_CDS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
KINDS = ("sqlite", "postgresql")


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A database_url for an empty database of this kind."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with postgres_schema() as url:
        yield url


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections live in a new, empty schema; the schema is dropped on exit."""
    where = urlsplit(POSTGRES_URL)
    try:
        admin = psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError:
        pytest.skip(f"PostgreSQL not reachable at {where.hostname}:{where.port or 5432}: skipping")
    name = f"lmc_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
        try:
            separator = "&" if where.query else "?"
            yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{name}"
        finally:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')


class Forwarder:
    """A TCP forwarder to a database server that can start refusing connections, the way a
    PostgreSQL that was stopped (or restarted) does; real bytes, real server behind it."""

    def __init__(self, host: str, port: int) -> None:
        import socket
        import threading

        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[Any] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        """Keep every connection open but pass nothing on, the way a server whose process stopped
        (or whose disk stalled) does: the kernel still takes the bytes, no answer comes back."""
        self._flowing.clear()

    def resume(self) -> None:
        """Pass on what was held, and everything after it."""
        self._flowing.set()

    def refuse(self) -> None:
        """Close the port and every forwarded connection: new connects are refused."""
        import socket

        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._flowing.set()  # a pump held by stall() ends with its closed sockets

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: Any, sink: Any) -> None:
        import socket

        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        # One side closed (a client process killed, say): close the other, as the network would,
        # so the server ends that session and rolls back what it left open.
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def forwarded(url: str) -> Iterator[tuple[str, Forwarder]]:
    """The PostgreSQL ``url`` reached through a ``Forwarder``: (its URL, the forwarder)."""
    parts = urlsplit(url)
    forwarder = Forwarder(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or "",
                                  f"127.0.0.1:{forwarder.port}")
    try:
        yield parts._replace(netloc=netloc).geturl(), forwarder
    finally:
        forwarder.refuse()


def within(seconds: float, function: Any, *args: Any) -> Any:
    """function(*args), failing the test (instead of hanging it) when it has not returned in time:
    for calls made while a ``Forwarder`` stalls, which code without a bound would wait on for good."""
    import threading

    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"no answer within {seconds} s"
    return result[0]


@contextlib.contextmanager
def sqlite_write_locked(path: str | Path) -> Iterator[None]:
    """Another connection's transaction holding a SQLite file's write lock (a stuck writer)."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()

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

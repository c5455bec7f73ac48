"""The `jti` values already seen, so a captured token cannot be played again.

Every gunicorn worker has its own app, so the set lives in the store, not in memory (style.md 3.5).
The primary key (iss, jti) makes the check atomic across processes: the first worker to insert a pair
wins, any other gets an integrity error, which means a replay. A row is kept until the token it
belongs to has expired (its ``exp`` plus the clock leeway), after which the token fails its ``exp``
check anyway; such rows are deleted every ``PRUNE_EVERY`` calls.

The `jti` is stored as its SHA-256, so the key has a fixed size whatever the EHR sends.

Its writes do not wait for the disk (``schema.create_engine(power_safe=False)``): an fsync per call
would be the largest part of a worker's time (benchmarks/README.md). A row survives a crash of the process or the
worker; only a power loss or an OS crash can drop the last moments' rows, after which a token
captured in those seconds could be replayed once within its lifetime (5 minutes for the sandbox,
1 hour at most here). Feedback and cards stay fully durable.

With SQLite the table lives in a file of its own beside the store (``cds.db`` -> ``cds.replay.db``,
``replay_database_url``): SQLite has one writer at a time per file, and a token check waiting behind
the card writer's or a feedback transaction (each ends with an fsync) was the slowest hundredth of
hook calls. PostgreSQL locks rows, so there the table stays in the one database.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service import errors
from service.store import schema

log = logging.getLogger(__name__)

PRUNE_EVERY = 1000  # calls between deletions of expired rows (per worker)

seen_tokens = sa.Table(
    "seen_tokens",
    schema.metadata,
    sa.Column("iss", sa.String(500), primary_key=True),       # the configured issuer
    sa.Column("jti_sha256", sa.String(64), primary_key=True),  # hex SHA-256 of the token's jti
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),  # epoch s: exp + leeway
)

_INSERT = sa.insert(seen_tokens)  # all three columns; compiled once per cache for its database


def replay_database_url(store: sa.URL) -> sa.URL:
    """Where the seen tokens are kept for a store at this URL: a SQLite file's sibling
    (``name.replay.db``), or the store itself (PostgreSQL, in-memory SQLite)."""
    if store.get_backend_name() != "sqlite" or store.database in (None, "", ":memory:") or store.database.startswith("file:"):
        return store
    path = Path(store.database)
    return store.set(database=str(path.with_name(f"{path.stem}.replay{path.suffix}")))


class ReplayCache:
    """Remembers (iss, jti) pairs until their tokens expire, in the shared store."""

    def __init__(self, engine: sa.Engine, *, clock: Callable[[], float] = time.time) -> None:
        """A cache beside the store of ``engine``, with an engine of its own whose commits do not
        wait for the disk (see above); creates its table when missing, wherever it lives."""
        url = replay_database_url(engine.url)
        self._engine = schema.create_engine(url.render_as_string(hide_password=False), power_safe=False)
        schema.create_schema(self._engine, tables=(seen_tokens,))
        compiled = _INSERT.compile(dialect=self._engine.dialect)
        self._insert_sql = str(compiled)
        self._order = compiled.positiontup  # parameter names, for drivers taking them by position
        dbapi = self._engine.dialect.loaded_dbapi
        self._integrity_error = dbapi.IntegrityError
        self._driver_error = dbapi.Error
        self._clock = clock
        self._calls = itertools.count(1)

    def check_and_remember(self, iss: str, jti: str, expires_at: int) -> bool:
        """True when this (iss, jti) is new (and now remembered), False when it was seen before."""
        digest = hashlib.sha256(jti.encode("utf-8")).hexdigest()
        if next(self._calls) % PRUNE_EVERY == 0:
            self.prune()
        try:
            if self._insert(iss, digest, expires_at):
                return True
            # Seen: but a row whose token has expired is only waiting to be pruned, so a token
            # reusing that jti is new. Delete it and try once more; a concurrent worker doing
            # the same gets the integrity error again.
            if self._delete_expired(iss, digest):
                return self._insert(iss, digest, expires_at)
            return False
        except sa.exc.SQLAlchemyError as exc:
            raise errors.StoreUnavailable(f"replay cache: {type(exc).__name__}") from exc

    def close(self) -> None:
        """Release the cache's own connections."""
        self._engine.dispose()

    def prune(self) -> int:
        """Delete the rows of expired tokens; the number deleted."""
        try:
            with self._engine.begin() as conn:
                result = conn.execute(sa.delete(seen_tokens).where(seen_tokens.c.expires_at < self._now()))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("replay cache: pruning failed: %s", type(exc).__name__)
            return 0
        log.debug("replay cache: %d expired rows pruned", result.rowcount)
        return result.rowcount

    def _insert(self, iss: str, digest: str, expires_at: int) -> bool:
        # Straight through the driver, past SQLAlchemy's execution layer, which costs more than the
        # INSERT itself (benchmarks/README.md). The statement is compiled once, in the database's own paramstyle.
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._insert_sql, self._parameters(iss, digest, expires_at))
                connection.commit()
            except self._integrity_error:
                connection.rollback()
                return False
            finally:
                cursor.close()
        except self._driver_error as exc:
            raise errors.StoreUnavailable(f"replay cache: {type(exc).__name__}") from exc
        finally:
            connection.close()  # back to the pool
        return True

    def _parameters(self, iss: str, digest: str, expires_at: int) -> tuple[Any, ...] | dict[str, Any]:
        values = {"iss": iss, "jti_sha256": digest, "expires_at": expires_at}
        return tuple(values[name] for name in self._order) if self._order else values

    def _delete_expired(self, iss: str, digest: str) -> bool:
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.delete(seen_tokens).where(
                    seen_tokens.c.iss == iss,
                    seen_tokens.c.jti_sha256 == digest,
                    seen_tokens.c.expires_at < self._now(),
                )
            )
        return result.rowcount > 0

    def _now(self) -> int:
        return int(self._clock())

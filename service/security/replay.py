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

Where a Redis server is configured (``[replay] url``), ``RedisReplayCache`` keeps the ids there
instead: one ``SET key NX EXAT <expiry>`` per call, atomic across workers and replicas, expired by
Redis itself. Whichever store is used, ``GuardedReplay`` decides what a call does while it is down
(``[replay] when_down``): refuse with 503 (``StoreUnavailable``), or remember the ids in this worker's
memory for as long as the store stays down. After a failure the store is left alone for
``PROBE_SECONDS``, so a sick store costs one call its lock timeout, not every call.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import Protocol

import sqlalchemy as sa

from service import errors
from service.config import ReplaySettings
from service.config import ReplayWhenDown
from service.store import schema
from service.store import bounded

log = logging.getLogger(__name__)

PRUNE_EVERY = 1000  # calls between deletions of expired rows (per worker)
PROBE_SECONDS = 2.0  # after the store failed, calls skip it this long (and say Retry-After this long)
MEMORY_MAX_IDS = 100_000  # per worker, while the store is down (when_down = "memory")
REDIS_TIMEOUT_SECONDS = 1.0  # connect and each command
# A database check that has not answered by then is given up (store/bounded.py): a backend that hangs
# on a live connection trips no timeout of the driver. Above the store's 1 s lock, statement and pool
# waits, below the call's deadline.
CHECK_WAIT_SECONDS = 2.0
CHECK_THREADS = 32  # per worker: more than its request threads, so a few hung checks leave room
REDIS_PREFIX = "lumbar-mri-cds:jti:"

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


class ReplayStore(Protocol):
    """Where seen token ids are kept."""

    may_hang: bool  # whether a check can wait without end (a database); GuardedReplay bounds those

    def check_and_remember(self, iss: str, jti: str, expires_at: int) -> bool:
        """True when this (iss, jti) is new (and now remembered), False when it was seen before;
        StoreUnavailable when the store cannot say."""

    def close(self) -> None:
        """Release connections."""


def build_replay(settings: ReplaySettings, engine: sa.Engine) -> GuardedReplay:
    """The configured replay store (Redis, else the database), guarded by its when-down setting."""
    store: ReplayStore = RedisReplayCache(settings.url) if settings.url else ReplayCache(engine)
    return GuardedReplay(store, when_down=settings.when_down)


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
        self.may_hang = schema.may_hang(url)  # GuardedReplay bounds the wait

    def check_and_remember(self, iss: str, jti: str, expires_at: int) -> bool:
        """True when this (iss, jti) is new (and now remembered), False when it was seen before."""
        digest = _digest(jti)
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
        try:
            connection = self._engine.raw_connection()  # refused or timed out: StoreUnavailable too
        except (self._driver_error, sa.exc.SQLAlchemyError) as exc:
            raise errors.StoreUnavailable(f"replay cache: {type(exc).__name__}") from exc
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


def _digest(value: str) -> str:
    """Hex SHA-256 of a token id or issuer: a fixed-size key whatever the EHR sends."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class RedisReplayCache:
    """Remembers (iss, jti) pairs in Redis: ``SET NX`` with the token's expiry (``EXAT``)."""

    may_hang = False  # every command has a socket timeout (REDIS_TIMEOUT_SECONDS)

    def __init__(self, url: str) -> None:
        import redis  # only where configured

        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_keepalive=True, health_check_interval=30,
        )
        self._error = redis.RedisError

    def check_and_remember(self, iss: str, jti: str, expires_at: int) -> bool:
        """True when new (and now remembered until ``expires_at``), False when seen before."""
        key = f"{REDIS_PREFIX}{_digest(iss)}:{_digest(jti)}"
        try:
            return bool(self._client.set(key, b"1", nx=True, exat=expires_at))
        except self._error as exc:
            raise errors.StoreUnavailable(f"replay cache: {type(exc).__name__}") from exc

    def close(self) -> None:
        self._client.close()


class GuardedReplay:
    """A replay store, and what happens while it is down (``ReplayWhenDown``); thread-safe."""

    def __init__(self, store: ReplayStore, *, when_down: ReplayWhenDown,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._when_down = when_down
        self._clock = clock
        self._wall_clock = wall_clock
        self._down_until = 0.0
        self._memory: dict[tuple[str, str], int] = {}  # (iss, jti digest) -> expires_at, while down
        self._lock = threading.Lock()
        # Redis has socket timeouts of its own; a database is waited for at most CHECK_WAIT_SECONDS.
        self._run = bounded.runner("replay-check", CHECK_WAIT_SECONDS, threads=CHECK_THREADS,
                                   bounded=getattr(store, "may_hang", False))  # a test's store may not say

    def check_and_remember(self, iss: str, jti: str, expires_at: int) -> bool:
        """As ``ReplayStore``; while the store is down, refuse (503) or use this worker's memory."""
        if self._memory and self._remembered((iss, _digest(jti))):
            return False  # accepted while the store was down: a replay, even now it is back
        if self._clock() >= self._down_until:
            try:
                return self._run(self.store.check_and_remember, iss, jti, expires_at)
            except errors.StoreUnavailable as exc:
                self._down_until = self._clock() + PROBE_SECONDS
                log.warning("replay store unavailable (%s); for %.0f s: %s", exc.message, PROBE_SECONDS,
                            "refusing calls" if self._when_down is ReplayWhenDown.REFUSE else "remembering in memory")
        if self._when_down is ReplayWhenDown.REFUSE:
            raise errors.StoreUnavailable("the replay store is unavailable; retry later")
        return self._remember((iss, _digest(jti)), expires_at)

    def close(self) -> None:
        self.store.close()

    def _remembered(self, key: tuple[str, str]) -> bool:
        with self._lock:
            expires_at = self._memory.get(key)
            return expires_at is not None and expires_at >= self._wall_clock()

    def _remember(self, key: tuple[str, str], expires_at: int) -> bool:
        with self._lock:
            if len(self._memory) >= MEMORY_MAX_IDS:
                now = self._wall_clock()
                self._memory = {k: v for k, v in self._memory.items() if v >= now}
                if len(self._memory) >= MEMORY_MAX_IDS:
                    raise errors.StoreUnavailable("the replay store is unavailable and this worker's memory is full")
            if key in self._memory:
                return False
            self._memory[key] = expires_at
            return True

"""ReplayCache: a jti is accepted once per issuer, across workers, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid

import psycopg
import pytest
import sqlalchemy as sa

from service import config
from service import errors
from service.security import replay
from service.security.replay import ReplayCache
from service.security.replay import replay_database_url
from service.security.replay import seen_tokens
from service.store import schema


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# The test PostgreSQL, as in tests/store/: trust auth at 127.0.0.1:5432, database `test`.
POSTGRES_URL = os.environ.get("LUMBAR_MRI_CDS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh SQLite file, or a fresh schema on the test PostgreSQL (skipped if none answers)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'replay.db'}"
        return
    try:
        admin = psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL not reachable (set LUMBAR_MRI_CDS_TEST_POSTGRES)")
    name = f"lmc_replay_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
        try:
            separator = "&" if "?" in POSTGRES_URL else "?"
            yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{name}"
        finally:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def make_cache(database_url):
    engines = []

    def make(clock=None) -> ReplayCache:
        engine = schema.create_engine(database_url)
        schema.create_schema(engine)
        engines.append(engine)
        return ReplayCache(engine, clock=clock) if clock else ReplayCache(engine)

    yield make
    for engine in engines:
        engine.dispose()


def rows(cache: ReplayCache) -> int:
    with cache._engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(seen_tokens)).scalar_one()


def test_new_then_seen(make_cache):
    cache = make_cache()
    exp = 2_000_000_000
    assert cache.check_and_remember("https://ehr.example.org", "a", exp) is True
    assert cache.check_and_remember("https://ehr.example.org", "a", exp) is False
    assert cache.check_and_remember("https://ehr.example.org", "b", exp) is True
    assert cache.check_and_remember("https://other.example.org", "a", exp) is True


def test_two_workers_share_what_they_have_seen(make_cache):
    first, second = make_cache(), make_cache()
    assert first.check_and_remember("iss", "jti-1", 2_000_000_000) is True
    assert second.check_and_remember("iss", "jti-1", 2_000_000_000) is False


def test_long_and_odd_jti_values(make_cache):
    cache = make_cache()
    for jti in ("x" * 10_000, "ünïcödé", "'; DROP TABLE seen_tokens; --", " "):
        assert cache.check_and_remember("iss", jti, 2_000_000_000) is True
        assert cache.check_and_remember("iss", jti, 2_000_000_000) is False


def test_expired_row_does_not_block_a_new_token(make_cache):
    clock = Clock()
    cache = make_cache(clock)
    assert cache.check_and_remember("iss", "j", int(clock.now) + 300) is True
    clock.now += 301
    assert cache.check_and_remember("iss", "j", int(clock.now) + 300) is True
    assert cache.check_and_remember("iss", "j", int(clock.now) + 300) is False


def test_prune_deletes_expired_rows_only(make_cache):
    clock = Clock()
    cache = make_cache(clock)
    now = int(clock.now)
    for n, exp in enumerate([now - 10, now - 1, now + 1, now + 300]):
        cache.check_and_remember("iss", f"j{n}", exp)
    assert cache.prune() == 2
    assert rows(cache) == 2


def test_prunes_every_so_many_calls(make_cache, monkeypatch):
    monkeypatch.setattr(replay, "PRUNE_EVERY", 5)
    clock = Clock()
    cache = make_cache(clock)
    for n in range(4):
        cache.check_and_remember("iss", f"old{n}", int(clock.now) + 10)
    clock.now += 60
    assert rows(cache) == 4
    cache.check_and_remember("iss", "new", int(clock.now) + 10)  # the 5th call prunes first
    assert rows(cache) == 1


def test_store_failure_is_store_unavailable(make_cache):
    cache = make_cache()
    with cache._engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE seen_tokens"))  # the database breaks under a running service
    with pytest.raises(errors.StoreUnavailable, match="replay cache"):
        cache.check_and_remember("iss", "j", 2_000_000_000)


def test_sqlite_keeps_seen_tokens_in_a_file_of_its_own(tmp_path):
    """A token check never waits behind the store's own writes (one writer per SQLite file)."""
    engine = schema.create_engine(f"sqlite:///{tmp_path / 'cds.db'}")
    schema.create_schema(engine)
    cache = ReplayCache(engine)
    try:
        assert cache.check_and_remember("iss", "jti-1", 2_000_000_000)
        with engine.begin() as conn:  # the store's write lock, held as the card writer holds it
            conn.execute(sa.text("UPDATE schema_version SET version = version"))
            assert cache.check_and_remember("iss", "jti-2", 2_000_000_000)  # does not wait for it
        assert (tmp_path / "cds.replay.db").exists()
        assert rows(cache) == 2
    finally:
        cache.close()
        engine.dispose()


@pytest.mark.parametrize(("store", "replay"), [
    ("sqlite:////var/lib/lumbar/cds.db", "sqlite:////var/lib/lumbar/cds.replay.db"),
    ("sqlite:///relative/store.sqlite3", "sqlite:///relative/store.replay.sqlite3"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("sqlite://", "sqlite://"),
    ("postgresql+psycopg://u@db:5432/cds", "postgresql+psycopg://u@db:5432/cds"),
])
def test_replay_database_url(store, replay):
    assert replay_database_url(sa.make_url(store)) == sa.make_url(replay)


def _race(url: str, jtis: list[str], results) -> None:
    engine = schema.create_engine(url)
    cache = ReplayCache(engine)
    results.put(sum(cache.check_and_remember("iss", jti, 2_000_000_000) for jti in jtis))
    engine.dispose()


def test_concurrent_worker_processes_accept_each_jti_once(database_url, make_cache):
    make_cache()  # creates the schema
    jtis = [f"race-{n}" for n in range(50)]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_race, args=(database_url, jtis, results)) for _ in range(4)]
    for w in workers:
        w.start()
    accepted = sum(results.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert accepted == len(jtis)


def test_only_the_replay_cache_skips_the_disk_wait(tmp_path):
    """Feedback and cards commit with synchronous=FULL; the replay cache with NORMAL (WAL)."""
    import sqlalchemy as sa

    from service.security.replay import ReplayCache
    from service.store import schema as store_schema

    engine = store_schema.create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    store_schema.create_schema(engine)
    cache = ReplayCache(engine)
    try:
        assert cache.check_and_remember("https://ehr", "jti-1", 2**40)
        with engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar() == 2  # FULL
        with cache._engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar() == 1  # NORMAL
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        cache.close()
        engine.dispose()


# --- issue 15: a sick store costs a call about a second, never a 500 ------------------------------


def test_postgresql_refusing_connections_is_store_unavailable():
    from tests.store.databases import forwarded
    from tests.store.databases import postgres_schema

    with postgres_schema() as url, forwarded(url) as (via, forwarder):
        engine = schema.create_engine(via)
        schema.create_schema(engine)
        cache = ReplayCache(engine)
        try:
            assert cache.check_and_remember("iss", "before", 2_000_000_000)
            forwarder.refuse()  # PostgreSQL stopped: existing connections drop, new ones are refused
            for jti in ("after-1", "after-2"):
                with pytest.raises(errors.StoreUnavailable, match="replay cache"):
                    cache.check_and_remember("iss", jti, 2_000_000_000)
        finally:
            cache.close()
            engine.dispose()


def _hold_lock(database_url: str, replay_file: bool):
    """Another connection holding the write lock of the seen-tokens table (SQLite: its file)."""
    if database_url.startswith("sqlite"):
        import sqlite3

        url = replay_database_url(sa.make_url(database_url)) if replay_file else sa.make_url(database_url)
        conn = sqlite3.connect(url.database, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        return conn
    conn = psycopg.connect(database_url.replace("postgresql://", "postgresql://", 1))
    conn.execute("LOCK TABLE seen_tokens IN ACCESS EXCLUSIVE MODE")
    return conn


def test_a_locked_store_costs_about_a_second(make_cache, database_url):
    cache = make_cache()
    holder = _hold_lock(database_url, replay_file=True)
    try:
        started = time.monotonic()
        with pytest.raises(errors.StoreUnavailable, match="replay cache"):
            cache.check_and_remember("iss", "waits", 2_000_000_000)
        assert time.monotonic() - started < 2.5  # the lock timeout (~1 s), not 30 s or forever
    finally:
        holder.rollback()
        holder.close()
    assert cache.check_and_remember("iss", "waits", 2_000_000_000)  # and it works again at once


# --- Redis ----------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("LUMBAR_MRI_CDS_TEST_REDIS", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_cache():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"Redis not reachable at {REDIS_URL} (set LUMBAR_MRI_CDS_TEST_REDIS)")
    cache = replay.RedisReplayCache(REDIS_URL)
    yield cache, client
    cache.close()
    client.close()


def test_redis_new_then_seen_until_expiry(redis_cache):
    cache, client = redis_cache
    iss, jti = "https://ehr.example.org", f"jti-{uuid.uuid4()}"
    expires_at = int(time.time()) + 120
    assert cache.check_and_remember(iss, jti, expires_at) is True
    assert cache.check_and_remember(iss, jti, expires_at) is False
    assert cache.check_and_remember("https://other.example.org", jti, expires_at) is True
    keys = client.keys(f"{replay.REDIS_PREFIX}*")
    mine = [k for k in keys if client.expiretime(k) == expires_at]
    assert len(mine) == 2  # one key per (iss, jti), expiring with the token: Redis prunes
    assert all(jti.encode() not in k for k in keys)  # hashed, like the database rows
    client.delete(*mine)


def test_redis_down_is_store_unavailable_quickly():
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = replay.RedisReplayCache(f"redis://127.0.0.1:{port}/0")
    started = time.monotonic()
    with pytest.raises(errors.StoreUnavailable, match="replay cache"):
        cache.check_and_remember("iss", "j", int(time.time()) + 60)
    assert time.monotonic() - started < 1.5
    cache.close()


# --- when the store is down ------------------------------------------------------------------------


class DownStore:
    """A store that is down until told otherwise (a stand-in for the store's outcome, not the product)."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.seen: set[tuple[str, str]] = set()

    def check_and_remember(self, iss, jti, expires_at):
        self.calls += 1
        if self.down:
            raise errors.StoreUnavailable("replay cache: OperationalError")
        if (iss, jti) in self.seen:
            return False
        self.seen.add((iss, jti))
        return True

    def close(self):
        pass


def test_when_down_refuse_is_a_503_and_spares_the_store():
    store, clock = DownStore(), Clock()
    guarded = replay.GuardedReplay(store, when_down=config.ReplayWhenDown.REFUSE, clock=clock)
    for jti in ("a", "b", "c"):
        with pytest.raises(errors.StoreUnavailable) as caught:
            guarded.check_and_remember("iss", jti, 2_000_000_000)
        assert caught.value.status == 503 and caught.value.retry_after
    assert store.calls == 1  # asked once, then left alone for PROBE_SECONDS
    clock.now += replay.PROBE_SECONDS
    store.down = False
    assert guarded.check_and_remember("iss", "d", 2_000_000_000) is True


def test_when_down_memory_accepts_each_id_once_per_worker():
    store, clock = DownStore(), Clock()
    guarded = replay.GuardedReplay(store, when_down=config.ReplayWhenDown.MEMORY, clock=clock)
    expires = int(time.time()) + 60
    assert guarded.check_and_remember("iss", "a", expires) is True
    assert guarded.check_and_remember("iss", "a", expires) is False
    assert guarded.check_and_remember("iss", "b", expires) is True
    clock.now += replay.PROBE_SECONDS
    store.down = False
    assert guarded.check_and_remember("iss", "a", expires) is False  # accepted while down: still a replay
    assert guarded.check_and_remember("iss", "c", expires) is True
    assert store.seen == {("iss", "c")}


def test_build_replay_picks_redis_when_configured(tmp_path):
    engine = schema.create_engine(f"sqlite:///{tmp_path / 'cds.db'}")
    schema.create_schema(engine)
    guarded = replay.build_replay(config.ReplaySettings(url=REDIS_URL), engine)
    assert isinstance(guarded.store, replay.RedisReplayCache)
    guarded.close()
    guarded = replay.build_replay(config.ReplaySettings(), engine)
    assert isinstance(guarded.store, ReplayCache)
    guarded.close()
    engine.dispose()

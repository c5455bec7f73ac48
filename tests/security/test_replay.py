"""ReplayCache: a jti is accepted once per issuer, across workers, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import uuid

import psycopg
import pytest
import sqlalchemy as sa

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

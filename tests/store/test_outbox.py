"""The card outbox (store/outbox.py): cards answered by a worker that is killed before its writer
commits them are recovered by another worker, on SQLite and PostgreSQL; a real process, a real kill."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import uuid

import orjson
import psycopg
import pytest
import sqlalchemy as sa

from service.store import card_store as feedback
from service.store import outbox
from service.store import schema
from tests.store import databases


@pytest.fixture(params=databases.KINDS)
def database_url(request, tmp_path):
    with databases.database(request.param, tmp_path) as url:
        engine = schema.create_engine(url)
        schema.create_schema(engine)
        engine.dispose()
        yield url


@contextlib.contextmanager
def cards_locked(database_url):
    """Another connection holding the cards table's write lock: the card writer cannot commit."""
    if database_url.startswith("sqlite"):
        with databases.sqlite_write_locked(sa.make_url(database_url).database):
            yield
        return
    with psycopg.connect(schema.sa.make_url(database_url).render_as_string(hide_password=False)
                         .replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute("LOCK TABLE cards IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def card(n):
    return feedback.IssuedCard(
        card_uuid=str(uuid.uuid4()), suggestion_uuids=(str(uuid.uuid4()),), service_id="order-select",
        rule_id="acute-uncomplicated", indicator="warning", rating="not-appropriate",
        hook_instance=f"hook-{n}", issuer="https://ehr.example.org", tenant=None, patient_id=f"pat-{n}",
    )


def _worker(database_url, directory, uuids, ready):
    """A worker: records its cards (the answers went out), then waits to be killed."""
    engine = schema.create_engine(database_url)
    store = feedback.CardStore(engine, salt="s", outbox_dir=directory)
    for n, uuid_ in enumerate(uuids):
        store.record_cards([_with_uuid(card(n), uuid_)])
    ready.set()
    time.sleep(60)


def _with_uuid(issued, uuid_):
    from dataclasses import replace

    return replace(issued, card_uuid=uuid_)


def stored(database_url, uuids):
    engine = schema.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(schema.cards.c.card_uuid).where(schema.cards.c.card_uuid.in_(uuids))).scalars())
    finally:
        engine.dispose()


def test_cards_of_a_killed_worker_are_recovered(database_url, tmp_path):
    directory = tmp_path / "outbox"
    uuids = [str(uuid.uuid4()) for _ in range(20)]
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    with cards_locked(database_url):
        child = context.Process(target=_worker, args=(database_url, directory, uuids, ready))
        child.start()
        assert ready.wait(20)
        time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)  # before its writer could commit: the cards table is locked
        child.join(10)
    assert stored(database_url, uuids) == set()  # nothing reached the database
    engine = schema.create_engine(database_url)
    survivor = feedback.CardStore(engine, salt="s", outbox_dir=directory)  # another worker, or the replacement
    try:
        deadline = time.monotonic() + 10
        while stored(database_url, uuids) != set(uuids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored(database_url, uuids) == set(uuids)
        own = survivor._writer._outbox._id
        assert [p.name for p in directory.iterdir() if not p.name.startswith(own)] == []  # the dead one's files are gone
    finally:
        survivor.close()
        engine.dispose()


def test_a_living_workers_outbox_is_left_alone_and_emptied_as_it_commits(tmp_path):
    url = f"sqlite:///{tmp_path / 'cds.db'}"
    engine = schema.create_engine(url)
    schema.create_schema(engine)
    first = feedback.CardStore(engine, salt="s", outbox_dir=tmp_path / "outbox")
    second = feedback.CardStore(engine, salt="s", outbox_dir=tmp_path / "outbox")
    try:
        with cards_locked(url):
            first.record_cards([card(1)])
            time.sleep(0.3)
            assert second._writer._outbox.recover(lambda *_: pytest.fail("took a living worker's cards")) == 0
        first.flush()
        assert all(p.stat().st_size == 0 for p in (tmp_path / "outbox").glob("*.jsonl"))
    finally:
        first.close()
        second.close()
        engine.dispose()
    assert list((tmp_path / "outbox").iterdir()) == []  # a clean stop leaves nothing behind


def test_outbox_directory():
    assert outbox.directory_for(None, "sqlite:////var/lib/cds/cds.db") == outbox.Path("/var/lib/cds/cds.outbox")
    assert outbox.directory_for(None, "postgresql://db/cds") is None
    assert outbox.directory_for(outbox.Path("/x"), "postgresql://db/cds") == outbox.Path("/x")


def test_an_unusable_outbox_directory_is_a_configuration_error(tmp_path):
    from service.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="outbox_dir .* cannot be used"):
        outbox.Outbox(blocker / "outbox")


def test_rows_journalled_before_schema_2_are_read_without_a_modality(tmp_path):
    """A worker of the version before issue 13 journalled card rows without `modality`; the new
    version's writer inserts them with none (the report counts them as `unknown`)."""
    path = tmp_path / "w1.00000001.jsonl"
    row = {"card_uuid": "c-1", "service_id": "order-select", "rule_id": "acute-uncomplicated", "indicator": "warning",
           "rating": "not-appropriate", "hook_instance": "h", "issuer": "i", "tenant": None, "patient_hash": None,
           "issued_at": "2026-11-26T10:00:00+00:00"}
    path.write_bytes(orjson.dumps({"cards": [row], "suggestions": []}) + b"\n")
    cards, suggestions = outbox.read_rows(path)
    assert cards[0]["modality"] is None and suggestions == []
    assert set(cards[0]) == {c.name for c in schema.cards.columns}

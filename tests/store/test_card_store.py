"""service/store/card_store.py and card_writer.py, the feedback items they store, and the store's schema, on SQLite and on PostgreSQL."""

import contextlib
import logging
import statistics
import threading
import time
import uuid
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import sqlalchemy as sa

from service import errors
from service.security.pseudonyms import patient_hash
from service.store import card_store
from service.store import report
from service.store import schema
from tests.store import databases
from tests.store.recording import record_feedback

NO_DEDUP = timedelta(0)  # every card its own decision: these tests are about feedback, not re-fires (test_report.py)


@pytest.fixture(params=databases.KINDS)
def database_url(request, tmp_path):
    with databases.database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url):
    engine = schema.create_engine(database_url)
    schema.create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine):
    # A short lookup wait keeps the unknown-card cases quick; test_feedback_waits_for_another_worker
    # uses the real one.
    store = card_store.CardStore(engine, salt="test-salt", lookup_wait=0.2)
    yield store
    store.close()


def at_once(target, calls):
    """Run target(*args) for each args of ``calls``, each on a thread of its own, all released
    together; the exceptions they raised (repr), in no particular order."""
    start = threading.Barrier(len(calls))
    failures = []

    def run(*args):
        start.wait()
        try:
            target(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            failures.append(repr(exc))

    workers = [threading.Thread(target=run, args=args) for args in calls]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return failures


def issue(store, *, rule_id="acute-uncomplicated", service_id="order-select", suggestions=1, **extra):
    card = card_store.IssuedCard(
        card_uuid=str(uuid.uuid4()),
        suggestion_uuids=tuple(str(uuid.uuid4()) for _ in range(suggestions)),
        service_id=service_id,
        rule_id=rule_id,
        indicator="warning",
        rating="not-appropriate",
        hook_instance=str(uuid.uuid4()),
        issuer=extra.pop("issuer", "https://ehr.example.org"),
        tenant=extra.pop("tenant", None),
        patient_id=extra.pop("patient_id", "pat-1"),
        modality=extra.pop("modality", "mri"),
    )
    store.record_cards([card])
    return card


def accepted(card, at="2025-03-03T10:00:00Z"):
    return {"card": card.card_uuid, "outcome": "accepted",
            "acceptedSuggestions": [{"id": card.suggestion_uuids[0]}], "outcomeTimestamp": at}


def overridden(card, code="patient-preference", comment=None, at="2025-03-03T10:00:00Z"):
    reason = {"reason": {"system": "http://example.org/override", "code": code, "display": code}}
    if comment is not None:
        reason["userComment"] = comment
    return {"card": card.card_uuid, "outcome": "overridden", "overrideReason": reason, "outcomeTimestamp": at}


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@contextlib.contextmanager
def writes_blocked(engine, seconds):
    """Hold a lock that makes inserts into `cards` wait (reads still pass) for `seconds`."""
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the one write lock of the database file
    else:
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("LOCK TABLE cards IN SHARE ROW EXCLUSIVE MODE")
    release = threading.Timer(seconds, lambda: (conn.rollback(), conn.close()))
    release.start()
    try:
        yield
    finally:
        release.join()


# --- round trip -------------------------------------------------------------------------------------


def test_round_trip(engine, store):
    a, b, c = issue(store), issue(store, modality="ct"), issue(store, rule_id="no-indication")
    stored = record_feedback(store, "order-select", {"feedback": [accepted(a), overridden(b), overridden(c, comment="ok")]})
    assert stored == 3
    mri_accepted = {"cards": 1, "refires": 0, "accepted": 1, "overridden": 0, "override_reasons": {}, "acceptance_rate": 1.0}
    overridden_once = {"cards": 1, "refires": 0, "accepted": 0, "overridden": 1, "override_reasons": {"patient-preference": 1},
                       "acceptance_rate": 0.0}
    assert report.build_report(engine, dedup=NO_DEDUP) == {
        "rules": {
            "acute-uncomplicated": {"cards": 2, "refires": 0, "accepted": 1, "overridden": 1,
                                    "override_reasons": {"patient-preference": 1}, "acceptance_rate": 0.5,
                                    "modalities": {"ct": overridden_once, "mri": mri_accepted}},
            "no-indication": {**overridden_once, "modalities": {"mri": overridden_once}},
        },
        "modalities": {
            "ct": overridden_once,
            "mri": {"cards": 2, "refires": 0, "accepted": 1, "overridden": 1, "override_reasons": {"patient-preference": 1},
                    "acceptance_rate": 0.5},
        },
        "cards_total": 3,
        "refires_total": 0,
        "feedback_total": 3,
    }


def test_stored_rows_keep_no_patient_id(engine, store):
    card = issue(store, patient_id="PATIENT-4711")
    store.flush()
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.cards)).mappings().one()
    assert "PATIENT-4711" not in str(dict(row))
    assert row["patient_hash"] == patient_hash("test-salt", "PATIENT-4711")
    assert row["patient_hash"] != patient_hash("other-salt", "PATIENT-4711")
    assert row["card_uuid"] == card.card_uuid and row["rule_id"] == "acute-uncomplicated"


def test_feedback_fields_are_stored(engine, store):
    card = issue(store)
    item = overridden(card, code="already-imaged", comment="seen last week")
    item["outcomeTimestamp"] = "2025-03-03T12:00:00.123456789+02:00"
    item["extension"] = {"com.example.unknown": True}  # unknown elements are ignored
    record_feedback(store, "order-select", {"feedback": [item], "unknownTopLevel": 1})
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.feedback)).mappings().one()
    assert (row["card_uuid"], row["service_id"], row["outcome"]) == (card.card_uuid, "order-select", "overridden")
    assert (row["override_system"], row["override_code"], row["override_display"]) == (
        "http://example.org/override", "already-imaged", "already-imaged")
    assert row["user_comment"] == "seen last week"
    stamp = row["outcome_timestamp"].replace(tzinfo=timezone.utc) if row["outcome_timestamp"].tzinfo is None \
        else row["outcome_timestamp"]
    assert stamp == datetime(2025, 3, 3, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert len(row["dedup_key"]) == 64


# --- what is refused --------------------------------------------------------------------------------

BAD_ITEMS = {
    "missing outcome": (lambda c, o: {k: v for k, v in accepted(c).items() if k != "outcome"}, "feedback[1].outcome"),
    "outcome maybe": (lambda c, o: {**accepted(c), "outcome": "maybe"}, "feedback[1].outcome"),
    "unknown card": (lambda c, o: {**accepted(c), "card": str(uuid.uuid4())}, "feedback[1].card"),
    # CDS Hooks 2.0: acceptedSuggestions is "Required for `accepted` outcomes"
    "accepted without suggestions": (lambda c, o: {k: v for k, v in accepted(c).items() if k != "acceptedSuggestions"},
                                     "feedback[1].acceptedSuggestions"),
    "accepted with no suggestion": (lambda c, o: {**accepted(c), "acceptedSuggestions": []},
                                    "feedback[1].acceptedSuggestions"),
    "card of another service": (lambda c, o: accepted(o), "feedback[1].card"),
    "suggestion of another card": (
        lambda c, o: {**accepted(c), "acceptedSuggestions": [{"id": str(uuid.uuid4())}]},
        "feedback[1].acceptedSuggestions"),
    "suggestion without id": (lambda c, o: {**accepted(c), "acceptedSuggestions": [{}]},
                              "feedback[1].acceptedSuggestions[0].id"),
    "date only": (lambda c, o: accepted(c, at="2025-03-03"), "feedback[1].outcomeTimestamp"),
    "no time zone": (lambda c, o: accepted(c, at="2025-03-03T10:00:00"), "feedback[1].outcomeTimestamp"),
    "month 13": (lambda c, o: accepted(c, at="2025-13-03T10:00:00Z"), "feedback[1].outcomeTimestamp"),
    "not a date": (lambda c, o: accepted(c, at="yesterday"), "feedback[1].outcomeTimestamp"),
    "number timestamp": (lambda c, o: accepted(c, at=1741000000), "feedback[1].outcomeTimestamp"),
    "missing timestamp": (lambda c, o: {k: v for k, v in accepted(c).items() if k != "outcomeTimestamp"},
                          "feedback[1].outcomeTimestamp"),
    "comment too long": (lambda c, o: overridden(c, comment="x" * 2001), "feedback[1].overrideReason.userComment"),
    "reason not a Coding": (lambda c, o: {**overridden(c), "overrideReason": {"reason": "because"}},
                            "feedback[1].overrideReason.reason"),
    "reason without code": (lambda c, o: {**overridden(c), "overrideReason": {"reason": {"system": "s"}}},
                            "feedback[1].overrideReason.reason.code"),
    "override reason on acceptance": (lambda c, o: {**accepted(c), "overrideReason": overridden(c)["overrideReason"]},
                                      "feedback[1].overrideReason"),
    "accepted suggestions on override": (
        lambda c, o: {**overridden(c), "acceptedSuggestions": accepted(c)["acceptedSuggestions"]},
        "feedback[1].acceptedSuggestions"),
    "item not an object": (lambda c, o: "accepted", "feedback[1]"),
}


@pytest.mark.parametrize("name", BAD_ITEMS)
def test_bad_item_is_refused_and_nothing_stored(engine, store, name):
    make, where = BAD_ITEMS[name]
    good, card, other_service = issue(store), issue(store), issue(store, service_id="order-sign")
    body = {"feedback": [accepted(good), make(card, other_service)]}
    with pytest.raises(errors.InvalidRequest) as caught:
        record_feedback(store, "order-select", body)
    assert caught.value.expression == where
    assert where in caught.value.message
    assert count(engine, schema.feedback) == 0


@pytest.mark.parametrize(
    "body",
    [{"feedback": {"card": "x"}}, {"feedback": []}, {"feedback": None}, {}, [], "feedback", None,
     {"feedback": [{}] * 101}],
    ids=["not an array", "empty", "null", "missing", "body an array", "body a string", "body null", "too many"],
)
def test_bad_body_is_refused(engine, store, body):
    with pytest.raises(errors.InvalidRequest) as caught:
        record_feedback(store, "order-select", body)
    assert caught.value.expression == "feedback"
    assert count(engine, schema.feedback) == 0


def test_every_bad_item_is_named(store):
    with pytest.raises(errors.InvalidRequest) as caught:
        record_feedback(store, "order-select", {"feedback": [{"outcome": "maybe"}, 7]})
    message = caught.value.message
    for where in ("feedback[0].card", "feedback[0].outcome", "feedback[0].outcomeTimestamp", "feedback[1]"):
        assert where in message


def test_longest_comment_and_bare_override_are_accepted(store):
    card = issue(store)
    bare = {"card": card.card_uuid, "outcome": "overridden", "outcomeTimestamp": "2025-03-03T10:00:00+01:00"}
    assert record_feedback(store, "order-select", {"feedback": [overridden(card, comment="é" * 2000), bare]}) == 2


def test_feedback_from_another_issuer_or_tenant_is_refused(engine, store):
    card = issue(store, issuer="https://ehr.example.org", tenant="north")
    body = {"feedback": [accepted(card)]}
    for issuer, tenant in (("https://other.example.org", "north"), ("https://ehr.example.org", "south"),
                           ("https://ehr.example.org", None)):
        with pytest.raises(errors.InvalidRequest, match="unknown card"):
            record_feedback(store, "order-select", body, issuer=issuer, tenant=tenant)
    assert record_feedback(store, "order-select", body, issuer="https://ehr.example.org", tenant="north") == 1


# --- duplicates, concurrency, restarts --------------------------------------------------------------


def test_identical_feedback_is_stored_once(engine, store):
    card = issue(store)
    body = {"feedback": [overridden(card, comment="same")]}
    assert record_feedback(store, "order-select", body) == 1
    assert record_feedback(store, "order-select", body) == 0  # a client retry
    assert record_feedback(store, "order-select", {"feedback": [overridden(card, comment="same")] * 2}) == 0
    assert count(engine, schema.feedback) == 1
    # Anything different is new feedback.
    assert record_feedback(store, "order-select", {"feedback": [overridden(card, comment="other")]}) == 1
    assert record_feedback(store, "order-select", {"feedback": [overridden(card, at="2025-03-04T10:00:00Z")]}) == 1
    assert count(engine, schema.feedback) == 3


def test_same_instant_in_another_offset_is_a_duplicate(engine, store):
    card = issue(store)
    record_feedback(store, "order-select", {"feedback": [accepted(card, at="2025-03-03T10:00:00Z")]})
    assert record_feedback(store, "order-select", {"feedback": [accepted(card, at="2025-03-03T11:00:00+01:00")]}) == 0


def test_concurrent_feedback_is_all_counted(engine, store):
    threads, posts = 20, 25
    cards = [[issue(store, rule_id=f"rule-{t % 4}") for _ in range(posts)] for t in range(threads)]
    store.flush()  # this test is about counting; test_feedback_waits_for_another_worker about waiting

    def post(mine):
        for n, card in enumerate(mine):
            item = accepted(card) if n % 2 == 0 else overridden(card, code=f"code-{n % 3}")
            assert record_feedback(store, "order-select", {"feedback": [item]}) == 1

    assert at_once(post, [(mine,) for mine in cards]) == []
    assert count(engine, schema.feedback) == threads * posts
    result = report.build_report(engine, dedup=NO_DEDUP)
    assert result["cards_total"] == result["feedback_total"] == threads * posts
    assert sum(r["accepted"] for r in result["rules"].values()) == threads * 13
    assert sum(r["overridden"] for r in result["rules"].values()) == threads * 12
    assert sum(sum(r["override_reasons"].values()) for r in result["rules"].values()) == threads * 12


def test_concurrent_duplicates_are_stored_once(engine, store):
    card = issue(store)
    body = {"feedback": [overridden(card, comment="retry storm")]}
    results = []
    workers = [threading.Thread(target=lambda: results.append(record_feedback(store, "order-select", body)))
               for _ in range(10)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(results) == [0] * 9 + [1]
    assert count(engine, schema.feedback) == 1


def test_restart_loses_nothing(database_url):
    engine = schema.create_engine(database_url)
    schema.create_schema(engine)
    first = card_store.CardStore(engine, salt="s")
    cards = [issue(first) for _ in range(5)]
    record_feedback(first, "order-select", {"feedback": [accepted(c) for c in cards[:3]]})
    first.close()  # writes the pending cards, as a worker does on a graceful stop
    engine.dispose()

    engine = schema.create_engine(database_url)
    schema.create_schema(engine)  # a second start on an existing schema changes nothing
    second = card_store.CardStore(engine, salt="s")
    try:
        result = report.build_report(engine, dedup=NO_DEDUP)
        assert (result["cards_total"], result["feedback_total"]) == (5, 3)
        # Cards issued before the restart still take feedback.
        assert record_feedback(second, "order-select", {"feedback": [overridden(cards[4])]}) == 1
        with engine.connect() as conn:
            assert conn.execute(sa.select(schema.schema_version.c.version)).scalars().all() == [schema.SCHEMA_VERSION]
    finally:
        second.close()
        engine.dispose()


def test_pending_cards_are_written_on_close(engine):
    store = card_store.CardStore(engine, salt="s")
    for _ in range(50):
        issue(store)
    store.close()
    assert count(engine, schema.cards) == 50
    issue(store)  # a store keeps working after close: the writer starts again
    store.flush()
    assert count(engine, schema.cards) == 51
    store.close()


def test_queued_cards_are_written_without_a_flush_and_batched(engine, store):
    """The writer wakes on its own schedule (put never wakes it) and writes what queued meanwhile
    in one transaction."""
    transactions = []
    sa.event.listen(engine, "commit", lambda conn: transactions.append(1))
    for _ in range(20):
        issue(store)
    deadline = time.monotonic() + 2
    while count(engine, schema.cards) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert count(engine, schema.cards) == 20
    assert len(transactions) <= 2  # 20 calls' cards in one (or two, across a tick) commits


def test_a_card_the_database_refuses_does_not_block_the_others(engine, store):
    good = [card_store.IssuedCard(
        card_uuid=str(uuid.uuid4()), suggestion_uuids=(str(uuid.uuid4()),), service_id="order-select",
        rule_id="acute-uncomplicated", indicator="warning", rating=None, hook_instance="h",
        issuer="https://ehr.example.org", tenant=None, patient_id=None) for _ in range(2)]
    bad = card_store.IssuedCard(
        card_uuid=str(uuid.uuid4()), suggestion_uuids=(), service_id="order-select", rule_id=None,
        indicator="warning", rating=None, hook_instance="h", issuer="https://ehr.example.org", tenant=None,
        patient_id=None)
    store.record_cards([good[0], bad, good[1]])
    store.flush()
    assert count(engine, schema.cards) == 2
    issue(store)  # and the writer goes on
    store.flush()
    assert count(engine, schema.cards) == 3


# --- the hook path and the other workers ------------------------------------------------------------


def test_record_cards_costs_well_under_a_millisecond(store):
    issue(store)  # starts the writer thread
    store.flush()
    durations = []
    for _ in range(500):
        card = card_store.IssuedCard(
            card_uuid=str(uuid.uuid4()), suggestion_uuids=(str(uuid.uuid4()),), service_id="order-select",
            rule_id="acute-uncomplicated", indicator="warning", rating=None, hook_instance="h",
            issuer="https://ehr.example.org", tenant=None, patient_id="p")
        started = time.perf_counter()
        store.record_cards([card])
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < 0.001
    store.flush()


def test_record_cards_does_not_wait_for_the_database(engine, store):
    issue(store)
    store.flush()
    with writes_blocked(engine, 0.5):
        started = time.perf_counter()
        card = issue(store)
        assert time.perf_counter() - started < 0.05
    store.flush()
    assert record_feedback(store, "order-select", {"feedback": [accepted(card)]}) == 1


def test_feedback_waits_for_another_worker(engine):
    issuing = card_store.CardStore(engine, salt="s")   # the worker that answered the hook call
    receiving = card_store.CardStore(engine, salt="s")  # the worker the feedback lands on
    try:
        with writes_blocked(engine, 0.3):  # the issuing worker's write is still on its way
            card = issue(issuing)
            started = time.perf_counter()
            assert record_feedback(receiving, "order-select", {"feedback": [accepted(card)]}) == 1
        assert time.perf_counter() - started >= 0.2  # it found the card only after a retry
    finally:
        issuing.close()
        receiving.close()


def test_feedback_waits_for_a_pooled_connection(engine, store):
    # A burst of requests holds every pooled connection for longer than the pool timeout: the
    # feedback waits for one to come free (about a second more) instead of answering 503.
    card = issue(store)
    store.flush()
    held = []
    with pytest.raises(sa.exc.TimeoutError):
        for _ in range(100):  # the pool refuses after its size and overflow
            held.append(engine.connect())
    release = threading.Timer(schema.POOL_TIMEOUT_SECONDS * 1.5, lambda: [c.close() for c in held])
    release.start()
    try:
        started = time.perf_counter()
        assert record_feedback(store, "order-select", {"feedback": [accepted(card)]}) == 1
        assert time.perf_counter() - started >= schema.POOL_TIMEOUT_SECONDS
    finally:
        release.join()
    assert count(engine, schema.feedback) == 1


def test_feedback_on_a_database_that_stops_answering_is_store_unavailable_within_the_bound():
    # PostgreSQL keeps the connection open and answers nothing (no driver timeout fires): the
    # feedback call gives up after its bound instead of holding a request thread until it answers.
    with databases.postgres_schema() as url, databases.forwarded(url) as (via, forwarder):
        engine = schema.create_engine(via)
        schema.create_schema(engine)
        store = card_store.CardStore(engine, salt="s", feedback_wait=1.0)
        try:
            card = issue(store)
            store.flush()
            forwarder.stall()
            started = time.perf_counter()
            with pytest.raises(errors.StoreUnavailable, match="did not answer within 1 s"):
                record_feedback(store, "order-select", {"feedback": [accepted(card)]})
            assert 1.0 <= time.perf_counter() - started < 2.0
            forwarder.resume()
            # The EHR sends it again: stored once, whether or not the first attempt got through.
            record_feedback(store, "order-select", {"feedback": [accepted(card)]})
            assert count(engine, schema.feedback) == 1
        finally:
            forwarder.resume()
            store.close()
            engine.dispose()


def test_a_writer_gone_mid_transaction_holds_its_locks_for_seconds_only():
    # A worker's host vanishes while its card writer has a transaction open (nothing reaches the
    # server again: no FIN, no RST). The server ends that session after IDLE_IN_TRANSACTION_MS, so
    # another worker writing the same card (the outbox's retry) gets through in seconds, not hours.
    with databases.postgres_schema() as url, databases.forwarded(url) as (via, forwarder):
        gone = schema.create_engine(via)
        schema.create_schema(gone)
        other = schema.create_engine(url)
        store = card_store.CardStore(other, salt="s")
        card = card_store.IssuedCard(
            card_uuid=str(uuid.uuid4()), suggestion_uuids=(), service_id="order-select", rule_id="acute-uncomplicated",
            indicator="warning", rating="not-appropriate", hook_instance="h", issuer="https://ehr.example.org",
            tenant=None, patient_id=None)
        conn = gone.connect()
        try:
            conn.execute(sa.insert(schema.cards), [{
                "card_uuid": card.card_uuid, "service_id": card.service_id, "rule_id": card.rule_id,
                "indicator": card.indicator, "rating": card.rating, "hook_instance": "h", "issuer": card.issuer,
                "issued_at": datetime.now(timezone.utc)}])  # not committed: the row stays locked
            forwarder.stall()
            started = time.perf_counter()
            store.record_cards([card])
            while count(other, schema.cards) == 0 and time.perf_counter() - started < 15:
                time.sleep(0.2)
            assert count(other, schema.cards) == 1
            assert time.perf_counter() - started < schema.IDLE_IN_TRANSACTION_MS / 1000 + 4
        finally:
            forwarder.resume()
            store.close()
            conn.invalidate()
            gone.dispose()
            other.dispose()


def test_unknown_card_waits_about_a_second(engine):
    store = card_store.CardStore(engine, salt="s")
    try:
        started = time.perf_counter()
        with pytest.raises(errors.InvalidRequest, match="unknown card"):
            record_feedback(store, "order-select", {"feedback": [
                {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2025-03-03T10:00:00Z"}]})
        assert 0.9 <= time.perf_counter() - started < 3
    finally:
        store.close()


# --- failures and privacy ---------------------------------------------------------------------------


def test_database_failure_is_store_unavailable(engine, store):
    card = issue(store)
    store.flush()
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE feedback"))
    with pytest.raises(errors.StoreUnavailable):
        record_feedback(store, "order-select", {"feedback": [accepted(card)]})


def test_logs_hold_no_comment_or_patient_id(engine, store, caplog):
    caplog.set_level(logging.DEBUG)
    card = issue(store, patient_id="PATIENT-4711")
    record_feedback(store, "order-select", {"feedback": [overridden(card, comment="SECRET-COMMENT")]})
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE feedback"))
    with pytest.raises(errors.StoreUnavailable) as caught:
        record_feedback(store, "order-select", {"feedback": [overridden(card, comment="SECRET-COMMENT-2")]})
    assert "SECRET-COMMENT" not in str(caught.value.__cause__)  # the engine hides SQL parameters
    assert "SECRET-COMMENT" not in caplog.text and "PATIENT-4711" not in caplog.text


# --- the schema -------------------------------------------------------------------------------------


def test_workers_starting_at_once_create_the_schema_once(database_url):
    n = 8
    engines = [schema.create_engine(database_url) for _ in range(n)]
    failures = at_once(schema.create_schema, [(e,) for e in engines])
    try:
        assert failures == []
        with engines[0].connect() as conn:
            assert conn.execute(sa.select(schema.schema_version.c.version)).scalars().all() == [schema.SCHEMA_VERSION]
        assert {"cards", "card_suggestions", "feedback"} <= set(sa.inspect(engines[0]).get_table_names())
    finally:
        for e in engines:
            e.dispose()


# --- schema 2 (issue 13): cards.modality, added to an older database -------------------------------


SCHEMA_1_CARDS = """CREATE TABLE cards (
    card_uuid VARCHAR(64) PRIMARY KEY, service_id VARCHAR(64) NOT NULL, rule_id VARCHAR(128) NOT NULL,
    indicator VARCHAR(16) NOT NULL, rating VARCHAR(64), hook_instance TEXT NOT NULL, issuer TEXT NOT NULL,
    tenant TEXT, patient_hash VARCHAR(64), issued_at TIMESTAMP NOT NULL)"""


def test_a_schema_1_database_is_migrated_and_stays_readable(database_url):
    """A database written before issue 13 (no modality column) gains the column at start-up; its cards,
    all about MRI orders then, count as MRI in the report, and new cards store their modality."""
    engine = schema.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(SCHEMA_1_CARDS)
            conn.exec_driver_sql(
                "INSERT INTO cards (card_uuid, service_id, rule_id, indicator, rating, hook_instance, issuer, issued_at) "
                "VALUES ('old-card', 'order-select', 'acute-uncomplicated', 'warning', 'not-appropriate', 'h', 'i', "
                "'2025-03-03 10:00:00')")
        schema.create_schema(engine)
        schema.create_schema(engine)  # idempotent: a second start finds the column there
        with engine.connect() as conn:
            assert conn.execute(sa.select(schema.cards.c.modality)).scalars().all() == ["mri"]
        store = card_store.CardStore(engine, salt="test-salt", lookup_wait=0.2)
        try:
            issue(store, modality="xr")
            store.flush()
        finally:
            store.close()
        result = report.build_report(engine)
        assert {k: v["cards"] for k, v in result["modalities"].items()} == {"mri": 1, "xr": 1}
        assert result["rules"]["acute-uncomplicated"]["cards"] == 2
    finally:
        engine.dispose()

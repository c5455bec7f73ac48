"""Cards issued and feedback received: the store behind the feedback endpoint and the report.

Two paths with different needs:

- ``record_cards`` runs on the hook request path, which must answer fast. It appends the rows to
  this worker's card outbox on local disk (store/outbox.py: one write, no fsync) and hands them to a
  background writer thread (one per ``CardStore``, started lazily) that inserts them in batches, so
  the hook answer never waits on a database fsync. If the process dies before a batch commits, the
  next worker to look (at its start, and every few seconds) recovers the rows from the outbox: cards
  clinicians saw are never unknown to the feedback endpoint for longer than that.
- ``record_feedback`` is the feedback endpoint's: validate every item, check each card was issued
  by this service, then store all items in one transaction. It returns only after the commit, so an
  HTTP 200 means the feedback is durable (CDS Hooks 2.0 feedback; interface.md).

Nothing here logs a user comment, a patient id or SQL parameters.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from service.errors import InvalidRequest
from service.errors import StoreUnavailable
from service.store import outbox as outbox_mod
from service.store import schema

log = logging.getLogger(__name__)

MAX_ITEMS = 100               # feedback items per request
MAX_SUGGESTIONS = 100         # acceptedSuggestions per item
MAX_COMMENT_CHARS = 2000      # overrideReason.userComment
MAX_ID_CHARS = 64             # card and suggestion uuids (a uuid is 36)
MAX_CODE_CHARS = 256          # Coding.code
MAX_TEXT_CHARS = 1024         # Coding.system, Coding.display
LOCK_ATTEMPTS = 3             # feedback transactions tried when the lock timeout (schema.LOCK_TIMEOUT_MS) passes
LOOKUP_WAIT_SECONDS = 1.0     # how long to wait for a card another worker may just have issued
# The writer thread looks for queued cards this often and writes them in one transaction (one
# fsync): the fsync per hook call was a fifth of a worker's time, and waking the thread on each call
# cost the request thread a GIL hand-off (benchmarks/README.md). A flush does not wait.
COMMIT_INTERVAL_SECONDS = 0.05
RETRY_SECONDS = 0.1           # the first wait after a database error; doubles up to 5 s
MAX_PENDING_CARDS = 10_000    # in memory; beyond this (database down for long) the oldest rows wait on disk only
RECOVER_EVERY_SECONDS = 2.0   # how often the writer looks for the outbox files of workers that died


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCard:
    card_uuid: str                      # the card's `uuid` as sent to the EHR
    suggestion_uuids: tuple[str, ...]   # `uuid` of each of its suggestions
    service_id: str                     # order-select | order-sign
    rule_id: str                        # = source.topic.code
    indicator: str                      # info | warning | critical
    rating: str | None                  # the appropriateness rating the card carries, if any
    hook_instance: str                  # the request's hookInstance
    issuer: str                         # JWT `iss` of the hook call
    tenant: str | None                  # JWT `tenant`, if any
    patient_id: str | None              # hashed with the salt before it is stored; never stored as is


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackItem:
    """One validated, normalized feedback entry."""

    card_uuid: str
    outcome: Outcome
    accepted_suggestions: tuple[str, ...]  # sorted, without repeats
    override_code: str | None
    override_system: str | None
    override_display: str | None
    user_comment: str | None               # free text: stored, never logged
    outcome_timestamp: datetime            # aware, UTC

    def dedup_key(self, service_id: str) -> str:
        """SHA-256 of the normalized item: identical feedback gets the same key."""
        canonical = json.dumps(
            [
                service_id,
                self.card_uuid,
                self.outcome.value,
                list(self.accepted_suggestions),
                self.override_system,
                self.override_code,
                self.override_display,
                self.user_comment,
                self.outcome_timestamp.isoformat(),
            ],
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def patient_hash(salt: str, patient_id: str) -> str:
    """The salted SHA-256 (HMAC-SHA256 keyed by the salt) of a patient id, as hex."""
    return hmac.new(salt.encode(), patient_id.encode(), hashlib.sha256).hexdigest()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CardStore:
    """Records the cards the service issues and the feedback clinicians give on them."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        salt: str,
        clock: Callable[[], datetime] = utcnow,
        lookup_wait: float = LOOKUP_WAIT_SECONDS,
        outbox_dir: Path | None = None,
    ) -> None:
        self._engine = engine
        self._salt = salt
        self._clock = clock            # tests pass a fixed clock; times are stored in UTC
        self._lookup_wait = lookup_wait
        self._writer = _CardWriter(engine, outbox_dir)
        if outbox_dir is not None:
            self._writer.start()  # at once: it recovers what a worker that died left in the outbox

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Queue the cards of one hook answer for writing; returns at once (no database I/O)."""
        if not cards:
            return
        issued_at = self._clock().astimezone(timezone.utc)
        card_rows = [self._card_row(card, issued_at) for card in cards]
        suggestion_rows = [
            {"card_uuid": card.card_uuid, "suggestion_uuid": s} for card in cards for s in set(card.suggestion_uuids)
        ]
        self._writer.put(card_rows, suggestion_rows)

    def record_feedback(
        self, service_id: str, body: Any, *, issuer: str | None = None, tenant: str | None = None
    ) -> int:
        """Validate and durably store a feedback body; returns the number of new items stored.

        ``issuer`` / ``tenant`` (the caller's token claims), when given, restrict the cards one may
        give feedback on to those issued to that issuer and tenant. Raises InvalidRequest (nothing
        stored) for any bad item, StoreUnavailable when the database fails.
        """
        items = parse_feedback(body)
        try:
            for attempt in range(1, LOCK_ATTEMPTS + 1):
                try:
                    with self._engine.connect() as conn:
                        self._check_cards(conn, service_id, items, issuer, tenant)
                        conn.commit()  # end the read transaction; the writes get their own
                        return self._insert(conn, service_id, items)
                except sa.exc.OperationalError as exc:
                    # Another writer held the lock past the lock timeout (about a second): try
                    # again, a bounded number of times (a busy SQLite file, not a broken one).
                    if attempt == LOCK_ATTEMPTS or not schema.is_lock_timeout(exc):
                        raise
            raise AssertionError("unreachable")
        except sa.exc.SQLAlchemyError as exc:
            # The engine hides SQL parameters (schema.create_engine), so the class name is safe.
            log.error("feedback not stored: database error %s", type(exc).__name__)
            raise StoreUnavailable("the feedback store is unavailable; retry later") from exc

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every card queued so far is written (or the timeout passes)."""
        self._writer.flush(timeout)

    def close(self) -> None:
        """Write what is pending and stop the writer thread."""
        self._writer.close()

    def _card_row(self, card: IssuedCard, issued_at: datetime) -> dict[str, Any]:
        return {
            "card_uuid": card.card_uuid,
            "service_id": card.service_id,
            "rule_id": card.rule_id,
            "indicator": card.indicator,
            "rating": card.rating,
            "hook_instance": card.hook_instance,
            "issuer": card.issuer,
            "tenant": card.tenant,
            "patient_hash": patient_hash(self._salt, card.patient_id) if card.patient_id else None,
            "issued_at": issued_at,
        }

    def _check_cards(
        self,
        conn: sa.Connection,
        service_id: str,
        items: Sequence[FeedbackItem],
        issuer: str | None,
        tenant: str | None,
    ) -> None:
        wanted = {item.card_uuid for item in items}
        known = self._lookup(conn, service_id, wanted, issuer, tenant)
        if wanted - known.keys():
            # Another worker (or our own writer thread) may have issued the card moments ago.
            deadline = time.monotonic() + self._lookup_wait
            self._writer.flush(self._lookup_wait)
            while True:
                conn.commit()  # a fresh snapshot: see what other workers committed since
                known |= self._lookup(conn, service_id, wanted - known.keys(), issuer, tenant)
                if not wanted - known.keys() or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        errors = []
        for n, item in enumerate(items):
            suggestions = known.get(item.card_uuid)
            if suggestions is None:
                errors.append((f"feedback[{n}].card", f"unknown card for service {service_id!r}"))
                continue
            for s in item.accepted_suggestions:
                if s not in suggestions:
                    errors.append((f"feedback[{n}].acceptedSuggestions", f"{s!r} is not a suggestion of that card"))
        _raise_if(errors)

    def _lookup(
        self, conn: sa.Connection, service_id: str, uuids: Iterable[str], issuer: str | None, tenant: str | None
    ) -> dict[str, frozenset[str]]:
        """Card uuid → its suggestion uuids, for the cards of this service among ``uuids``."""
        uuids = list(uuids)
        if not uuids:
            return {}
        cards, suggestions = schema.cards, schema.card_suggestions
        query = (
            sa.select(cards.c.card_uuid, suggestions.c.suggestion_uuid)
            .select_from(cards.outerjoin(suggestions, suggestions.c.card_uuid == cards.c.card_uuid))
            .where(cards.c.card_uuid.in_(uuids), cards.c.service_id == service_id)
        )
        if issuer is not None:
            query = query.where(cards.c.issuer == issuer)
            query = query.where(cards.c.tenant == tenant if tenant is not None else cards.c.tenant.is_(None))
        found: dict[str, set[str]] = {}
        for card_uuid, suggestion_uuid in conn.execute(query):
            found.setdefault(card_uuid, set())
            if suggestion_uuid is not None:
                found[card_uuid].add(suggestion_uuid)
        return {k: frozenset(v) for k, v in found.items()}

    def _insert(self, conn: sa.Connection, service_id: str, items: Sequence[FeedbackItem]) -> int:
        received_at = self._clock().astimezone(timezone.utc)
        stored = 0
        # One transaction: all items or none. A repeat of an already stored item (a client retry)
        # hits the unique dedup_key and is skipped, not an error.
        with conn.begin():
            for item in items:
                row = _feedback_row(service_id, item, received_at)
                insert = _insert_ignore(conn, schema.feedback).values(**row).returning(schema.feedback.c.id)
                stored += len(conn.execute(insert).all())  # no row back: a duplicate, skipped
        log.info("feedback stored: service=%s items=%d new=%d", service_id, len(items), stored)
        return stored


def _feedback_row(service_id: str, item: FeedbackItem, received_at: datetime) -> dict[str, Any]:
    return {
        "card_uuid": item.card_uuid,
        "service_id": service_id,
        "outcome": item.outcome.value,
        "accepted_suggestions": json.dumps(list(item.accepted_suggestions)),
        "override_code": item.override_code,
        "override_system": item.override_system,
        "override_display": item.override_display,
        "user_comment": item.user_comment,
        "outcome_timestamp": item.outcome_timestamp,
        "received_at": received_at,
        "dedup_key": item.dedup_key(service_id),
    }


def _insert_ignore(conn: sa.Connection, table: sa.Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise StoreUnavailable(f"unsupported database: {conn.dialect.name}")


# --- the feedback body ----------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?(?P<offset>[Zz]|[+-]\d{2}:\d{2})"
)

_Errors = list[tuple[str, str]]  # (where, what), e.g. ("feedback[1].outcome", "must be …")


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Check a feedback request body; every problem is reported in one InvalidRequest."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the body must be a JSON object with a `feedback` array", expression="feedback")
    entries = body.get("feedback")
    if not isinstance(entries, list):
        raise InvalidRequest("feedback must be an array of feedback items", expression="feedback")
    if not entries:
        raise InvalidRequest("feedback must not be empty", expression="feedback")
    if len(entries) > MAX_ITEMS:
        raise InvalidRequest(f"feedback holds {len(entries)} items; at most {MAX_ITEMS} per request", expression="feedback")
    errors: _Errors = []
    items = [_parse_item(entry, f"feedback[{n}]", errors) for n, entry in enumerate(entries)]
    _raise_if(errors)
    return [item for item in items if item is not None]


def _raise_if(errors: _Errors) -> None:
    if errors:
        shown = "; ".join(f"{where}: {what}" for where, what in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise InvalidRequest(shown + more, expression=errors[0][0])


def _parse_item(entry: Any, at: str, errors: _Errors) -> FeedbackItem | None:
    if not isinstance(entry, Mapping):
        errors.append((at, "must be an object"))
        return None
    before = len(errors)
    card = _string(entry.get("card"), f"{at}.card", MAX_ID_CHARS, errors, required=True)
    outcome = entry.get("outcome")
    if outcome not in (Outcome.ACCEPTED.value, Outcome.OVERRIDDEN.value):
        what = "is required" if outcome is None else "must be 'accepted' or 'overridden'"
        errors.append((f"{at}.outcome", what))
    suggestions = _accepted_suggestions(entry.get("acceptedSuggestions"), f"{at}.acceptedSuggestions", errors)
    if suggestions and outcome == Outcome.OVERRIDDEN.value:
        errors.append((f"{at}.acceptedSuggestions", "only allowed when outcome is 'accepted'"))
    code, system, display, comment = _override_reason(entry.get("overrideReason"), f"{at}.overrideReason", errors)
    if entry.get("overrideReason") is not None and outcome == Outcome.ACCEPTED.value:
        errors.append((f"{at}.overrideReason", "only allowed when outcome is 'overridden'"))
    timestamp = _timestamp(entry.get("outcomeTimestamp"), f"{at}.outcomeTimestamp", errors)
    if len(errors) > before or card is None or timestamp is None:
        return None
    return FeedbackItem(
        card_uuid=card,
        outcome=Outcome(outcome),
        accepted_suggestions=suggestions,
        override_code=code,
        override_system=system,
        override_display=display,
        user_comment=comment,
        outcome_timestamp=timestamp,
    )


def _string(value: Any, at: str, limit: int, errors: _Errors, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            errors.append((at, "is required"))
        return None
    if not isinstance(value, str) or not value.strip():
        errors.append((at, "must be a non-empty string"))
        return None
    if len(value) > limit:
        errors.append((at, f"is longer than {limit} characters"))
        return None
    return value


def _accepted_suggestions(value: Any, at: str, errors: _Errors) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.append((at, "must be an array of {id} objects"))
        return ()
    if len(value) > MAX_SUGGESTIONS:
        errors.append((at, f"at most {MAX_SUGGESTIONS} suggestions"))
        return ()
    ids = set()
    for n, suggestion in enumerate(value):
        if not isinstance(suggestion, Mapping):
            errors.append((f"{at}[{n}]", "must be an object with an `id`"))
            continue
        sid = _string(suggestion.get("id"), f"{at}[{n}].id", MAX_ID_CHARS, errors, required=True)
        if sid is not None:
            ids.add(sid)
    return tuple(sorted(ids))


def _override_reason(value: Any, at: str, errors: _Errors) -> tuple[str | None, str | None, str | None, str | None]:
    if value is None:
        return None, None, None, None
    if not isinstance(value, Mapping):
        errors.append((at, "must be an object with `reason` and/or `userComment`"))
        return None, None, None, None
    code = system = display = None
    reason = value.get("reason")
    if reason is not None:
        if not isinstance(reason, Mapping):
            errors.append((f"{at}.reason", "must be a Coding {system, code, display}"))
        else:
            code = _string(reason.get("code"), f"{at}.reason.code", MAX_CODE_CHARS, errors, required=True)
            system = _string(reason.get("system"), f"{at}.reason.system", MAX_TEXT_CHARS, errors)
            display = _string(reason.get("display"), f"{at}.reason.display", MAX_TEXT_CHARS, errors)
    comment = value.get("userComment")
    if comment is not None:
        if not isinstance(comment, str):
            errors.append((f"{at}.userComment", "must be a string"))
            comment = None
        elif len(comment) > MAX_COMMENT_CHARS:
            errors.append((f"{at}.userComment", f"is longer than {MAX_COMMENT_CHARS} characters"))
            comment = None
    return code, system, display, comment or None


def _timestamp(value: Any, at: str, errors: _Errors) -> datetime | None:
    """An RFC 3339 date-time with an offset, as an aware UTC datetime."""
    if value is None:
        errors.append((at, "is required"))
        return None
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        errors.append((at, "must be an RFC 3339 date-time with a time zone, e.g. 2025-01-31T14:05:00Z"))
        return None
    frac = (match["frac"] or "")[:6].ljust(6, "0")  # datetime keeps microseconds
    offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
    try:
        parsed = datetime.fromisoformat(f"{match['date']}T{match['time']}.{frac}{offset}")
        return parsed.astimezone(timezone.utc)  # OverflowError at the edges of year 1 and 9999
    except (ValueError, OverflowError):
        errors.append((at, "is not a valid date-time"))
        return None


# --- the writer thread ----------------------------------------------------------------------------


class _CardWriter:
    """Inserts queued card rows from a background thread, in batches.

    The thread starts at the first ``put`` (not at construction: gunicorn may fork after the app is
    built, and threads do not survive a fork). Every ``COMMIT_INTERVAL_SECONDS`` (at once on a
    flush or close) it writes every row queued meanwhile in one transaction; ``put`` itself never
    wakes it. On a database error it keeps the rows and retries with a back-off.
    """

    def __init__(self, engine: sa.Engine, outbox_dir: Path | None = None) -> None:
        self._engine = engine
        self._outbox_dir = outbox_dir
        self._at_exit = False
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._cards: list[dict[str, Any]] = []
        self._suggestions: list[dict[str, Any]] = []
        self._queued = 0       # cards ever queued
        self._settled = 0      # cards written (or dropped); flush waits for settled == queued
        self._thread: threading.Thread | None = None
        self._closing = False
        self._flushing = 0     # flush() calls waiting: the writer skips its pause between commits
        # The writer keeps one connection of its own, so request threads holding the whole pool
        # (a burst of feedback lookups) can never starve it; used by the writer thread only.
        self._conn: sa.Connection | None = None
        self._outbox: outbox_mod.Outbox | None = None  # opened with the thread, in this process
        self._sealed = 0       # outbox segments holding the rows taken for the batch being written
        self._dropped_to_disk = False  # rows left memory (MAX_PENDING_CARDS) and wait in the outbox only
        self._recover_at = 0.0
    def put(self, card_rows: list[dict[str, Any]], suggestion_rows: list[dict[str, Any]]) -> None:
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent writes what it queued, we start afresh
        with self._cond:
            if self._thread is None:
                self._start()
            if self._outbox is not None and not self._outbox.append(card_rows, suggestion_rows):
                log.error("card writer: the outbox is full (database down for long); a card is kept in memory only")
            self._cards.extend(card_rows)
            self._suggestions.extend(suggestion_rows)
            self._queued += len(card_rows)

    def flush(self, timeout: float) -> bool:
        """Wait until every card queued before this call is written; False on timeout."""
        with self._cond:
            target = self._queued
            if self._thread is None and self._settled < target:
                self._start()  # closed earlier, or never started: write what is pending now
            self._flushing += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(lambda: self._settled >= target, timeout)
            finally:
                self._flushing -= 1
        if not done:
            log.warning("card writer: %d cards not yet written after %.1f s", target - self._settled, timeout)
        return done

    def close(self, timeout: float = 5.0) -> None:
        if self._pid != os.getpid():
            return
        self.flush(timeout)
        with self._cond:
            self._closing = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)

    def start(self) -> None:
        """Start the writer thread now rather than at the first card."""
        with self._cond:
            if self._thread is None:
                self._start()

    def _start(self) -> None:
        if self._outbox is None and self._outbox_dir is not None:
            self._outbox = outbox_mod.Outbox(self._outbox_dir)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="card-writer", daemon=True)
        self._thread.start()
        if not self._at_exit:
            self._at_exit = True
            _close_at_exit(self)

    def _run(self) -> None:
        backoff = RETRY_SECONDS
        # The first rows (the thread starts with them) are written at once, so the writer holds its
        # connection before a burst of requests can take the whole pool.
        pause = 0.0
        while True:
            self._recover_orphans()
            with self._cond:
                self._cond.wait_for(lambda: self._closing or (self._flushing > 0 and self._cards), pause)
                pause = COMMIT_INTERVAL_SECONDS
                if not self._cards:
                    if self._closing:
                        self._disconnect()
                        self._close_outbox()
                        return
                    continue
                cards, self._cards = self._cards, []
                suggestions, self._suggestions = self._suggestions, []
                if self._outbox is not None:
                    self._sealed = self._outbox.seal()  # the segments holding exactly these rows
            try:
                written = self._write(cards, suggestions)
            except Exception as exc:  # noqa: BLE001 - the thread must survive whatever happens
                written = self._failed(len(cards), exc)
            if written:
                backoff = RETRY_SECONDS
                if self._outbox is not None and self._dropped_to_disk:
                    written = self._write_from_disk()
                with self._cond:
                    if self._outbox is not None and written:
                        self._outbox.settle(self._sealed)
                    self._settled += len(cards)
                    self._cond.notify_all()
                continue
            with self._cond:
                self._requeue(cards, suggestions)
                if self._closing:
                    self._disconnect()
                    self._close_outbox()
                    return  # close() gave up waiting; the daemon thread must not outlive it
                self._cond.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _recover_orphans(self) -> None:
        """Every few seconds: write the outbox rows of workers that died (writer thread only)."""
        if self._outbox is None or time.monotonic() < self._recover_at:
            return
        self._recover_at = time.monotonic() + RECOVER_EVERY_SECONDS
        try:
            self._outbox.recover(self._insert)
        except (sa.exc.SQLAlchemyError, OSError) as exc:  # the files stay; tried again later
            log.error("card outbox: recovery failed: %s", type(exc).__name__)
            self._disconnect()

    def _write_from_disk(self) -> bool:
        """Write the rows of the sealed outbox segments (those that left memory among them)."""
        assert self._outbox is not None
        try:
            for cards, suggestions in self._outbox.sealed_rows(self._sealed):
                if cards:
                    self._insert(cards, suggestions)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            return self._failed(0, exc)
        self._dropped_to_disk = False
        return True

    def _close_outbox(self) -> None:
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            outbox.close()

    def _write(self, cards: list[dict[str, Any]], suggestions: list[dict[str, Any]]) -> bool:
        try:
            self._insert(cards, suggestions)
            return True
        except (sa.exc.DataError, sa.exc.IntegrityError):
            # A row the database refuses would fail its batch for ever: write one card at a time
            # and drop only the refused ones.
            try:
                self._write_one_by_one(cards, suggestions)
                return True
            except sa.exc.SQLAlchemyError as exc:
                return self._failed(len(cards), exc)
        except sa.exc.SQLAlchemyError as exc:
            return self._failed(len(cards), exc)

    def _failed(self, count: int, exc: Exception) -> bool:
        log.error("card writer: %d cards not written yet: database error %s", count, type(exc).__name__)
        self._disconnect()  # the next attempt starts from a fresh connection
        return False

    def _insert(self, cards: list[dict[str, Any]], suggestions: list[dict[str, Any]]) -> None:
        if self._conn is None:
            self._conn = self._engine.connect()
        with self._conn.begin():
            # ON CONFLICT DO NOTHING: a retried batch (or a card uuid seen twice) is harmless.
            self._conn.execute(_insert_ignore(self._conn, schema.cards), cards)
            if suggestions:
                self._conn.execute(_insert_ignore(self._conn, schema.card_suggestions), suggestions)

    def _write_one_by_one(self, cards: list[dict[str, Any]], suggestions: list[dict[str, Any]]) -> None:
        refused = 0
        for card in cards:
            own = [s for s in suggestions if s["card_uuid"] == card["card_uuid"]]
            try:
                self._insert([card], own)
            except (sa.exc.DataError, sa.exc.IntegrityError):
                refused += 1
        log.error("card writer: the database refused %d of %d cards; they were dropped", refused, len(cards))

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.close()

    def _requeue(self, cards: list[dict[str, Any]], suggestions: list[dict[str, Any]]) -> None:
        self._cards[:0] = cards
        self._suggestions[:0] = suggestions
        excess = len(self._cards) - MAX_PENDING_CARDS
        if excess > 0:
            dropped = {row["card_uuid"] for row in self._cards[:excess]}
            del self._cards[:excess]
            self._suggestions = [row for row in self._suggestions if row["card_uuid"] not in dropped]
            self._settled += excess
            if self._outbox is not None:
                self._dropped_to_disk = True  # still in the outbox: written from there once the database is back
                log.error("card writer: database unavailable; %d unwritten cards wait in the outbox only", excess)
            else:
                log.error("card writer: database unavailable; dropped the %d oldest unwritten cards", excess)


def _close_at_exit(writer: _CardWriter) -> None:
    """Flush the writer when the interpreter exits (a gunicorn worker's graceful stop)."""
    ref = weakref.ref(writer)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close)

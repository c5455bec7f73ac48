"""The card writer: a background thread that inserts issued cards in batches.

``CardStore.record_cards`` runs on the hook request path, which must answer fast: it only hands the
rows to this writer, so the hook answer never waits on a database fsync. A card row is a bookkeeping
record: if the process dies in the milliseconds before its batch commits, the only consequence is that
feedback on that card is refused as "unknown card".
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from typing import Any

import sqlalchemy as sa

from service.store import schema

log = logging.getLogger(__name__)

# The writer thread looks for queued cards this often and writes them in one transaction (one
# fsync); a flush does not wait.
COMMIT_INTERVAL_SECONDS = 0.05
RETRY_SECONDS = 0.1           # the first wait after a database error; doubles up to 5 s
MAX_PENDING_CARDS = 100_000   # beyond this (database down for long) the oldest rows are dropped


class CardWriter:
    """Inserts queued card rows from a background thread, in batches.

    The thread starts at the first ``put`` (not at construction: gunicorn may fork after the app is
    built, and threads do not survive a fork). Every ``COMMIT_INTERVAL_SECONDS`` (at once on a
    flush or close) it writes every row queued meanwhile in one transaction; ``put`` itself never
    wakes it. On a database error it keeps the rows and retries with a back-off.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
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

    def put(self, card_rows: list[dict[str, Any]], suggestion_rows: list[dict[str, Any]]) -> None:
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent writes what it queued, we start afresh
        with self._cond:
            self._cards.extend(card_rows)
            self._suggestions.extend(suggestion_rows)
            self._queued += len(card_rows)
            if self._thread is None:
                self._start()

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

    def _start(self) -> None:
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
            with self._cond:
                self._cond.wait_for(lambda: self._closing or (self._flushing > 0 and self._cards), pause)
                pause = COMMIT_INTERVAL_SECONDS
                if not self._cards:
                    if self._closing:
                        self._disconnect()
                        return
                    continue
                cards, self._cards = self._cards, []
                suggestions, self._suggestions = self._suggestions, []
            try:
                written = self._write(cards, suggestions)
            except Exception as exc:  # noqa: BLE001 - the thread must survive whatever happens
                written = self._failed(len(cards), exc)
            if written:
                backoff = RETRY_SECONDS
                with self._cond:
                    self._settled += len(cards)
                    self._cond.notify_all()
                continue
            with self._cond:
                self._requeue(cards, suggestions)
                if self._closing:
                    self._disconnect()
                    return  # close() gave up waiting; the daemon thread must not outlive it
                self._cond.wait(backoff)
            backoff = min(backoff * 2, 5.0)

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
            self._conn.execute(schema.insert_ignore(self._conn, schema.cards), cards)
            if suggestions:
                self._conn.execute(schema.insert_ignore(self._conn, schema.card_suggestions), suggestions)

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
            log.error("card writer: database unavailable; dropped the %d oldest unwritten cards", excess)


def _close_at_exit(writer: CardWriter) -> None:
    """Flush the writer when the interpreter exits (a gunicorn worker's graceful stop)."""
    ref = weakref.ref(writer)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close)

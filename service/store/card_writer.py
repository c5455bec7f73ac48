"""The card writer: a background thread that inserts issued cards in batches.

``CardStore.record_cards`` runs on the hook request path, which must answer fast: it hands the rows to
this writer, which appends them to this worker's card outbox on local disk (store/outbox.py: one
write, no fsync) and inserts them in batches from its thread, so the hook answer never waits on a
database fsync. If the process dies before a batch commits, the next worker to look (at its start,
and every few seconds) recovers the rows from the outbox: cards clinicians saw are not lost.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service.store import outbox as outbox_mod
from service.store import schema

log = logging.getLogger(__name__)

# The writer thread looks for queued cards this often and writes them in one transaction (one
# fsync); a flush does not wait.
COMMIT_INTERVAL_SECONDS = 0.05
RETRY_SECONDS = 0.1           # the first wait after a database error; doubles up to 5 s
MAX_PENDING_CARDS = 10_000    # in memory; beyond this (database down for long) the oldest rows wait on disk only
RECOVER_EVERY_SECONDS = 2.0   # how often the writer looks for the outbox files of workers that died


class CardWriter:
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
        """Queue one answer's rows (journalled in the outbox first, when there is one); returns at once."""
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
            if self._outbox is not None:
                self._dropped_to_disk = True  # still in the outbox: written from there once the database is back
                log.error("card writer: database unavailable; %d unwritten cards wait in the outbox only", excess)
            else:
                log.error("card writer: database unavailable; dropped the %d oldest unwritten cards", excess)


def _close_at_exit(writer: CardWriter) -> None:
    """Flush the writer when the interpreter exits (a gunicorn worker's graceful stop)."""
    ref = weakref.ref(writer)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close)

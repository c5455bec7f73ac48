"""The card outbox: issued cards on local disk until the card writer has committed them.

A hook call answers before its cards reach the database (the card writer commits them in batches,
store/card_writer.py). So that a worker's death (kill -9, OOM, gunicorn's timeout) cannot lose the cards
it had answered with, each answer's card rows are first appended, as one JSON line, to a file of this
worker's in ``directory``: one ``write`` on an ``O_APPEND`` descriptor, no fsync. The rows are then
in the kernel's page cache: they survive the death of the process (not a power loss, like the replay
rows; schema.create_engine).

Files, for a worker whose id is ``W``:

- ``W.lock``: held with ``flock`` for as long as the worker lives; the kernel lets go of it when the
  process dies, however it dies, so another worker can tell the files of a dead one by taking it;
- ``W.open.jsonl``: where answers append;
- ``W.<n>.jsonl``: segments. When the writer takes a batch from memory it renames the open file to the
  next segment (under the same lock as the appends, so the batch and the segments hold the same
  rows); once the batch is committed, every segment up to it is deleted.

``recover`` (called by the card writer at start and every few seconds) takes the lock of every worker
that is gone, hands its files' rows to the writer (the inserts ignore rows already stored) and
deletes them. The outbox is bounded: beyond ``max_bytes`` of unwritten rows (the database down for
long) new cards are no longer journalled, and the writer says so in the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from service.errors import ConfigError

log = logging.getLogger(__name__)

MAX_BYTES = 200_000_000  # unwritten rows kept on disk per worker before cards are no longer journalled
OPEN = ".open.jsonl"
LOCK = ".lock"

Rows = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (card rows, suggestion rows)


class Outbox:
    """One worker's outbox files in ``directory`` (created when missing)."""

    def __init__(self, directory: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / f"{self._id}{LOCK}", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise ConfigError(f"outbox_dir {directory} cannot be used ({exc.strerror}): set outbox_dir "
                              "(or LUMBAR_MRI_CDS_OUTBOX_DIR) to a writable local directory") from None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # ours while this process lives
        self._fd = self._open()
        self._segments: list[Path] = []
        self._next = 0
        self._bytes = 0

    def append(self, cards: list[dict[str, Any]], suggestions: list[dict[str, Any]]) -> bool:
        """Journal one answer's rows; False (not journalled) when the outbox is full. Not thread-safe:
        the card writer calls it under its own lock."""
        line = orjson.dumps({"cards": cards, "suggestions": suggestions}) + b"\n"
        if self._bytes + len(line) > self._max_bytes:
            return False
        os.write(self._fd, line)
        self._bytes += len(line)
        return True

    def seal(self) -> int:
        """Close the open file as the next segment (what the writer just took from memory); the
        segment count to pass to ``settle`` once that batch is committed."""
        if os.fstat(self._fd).st_size:
            segment = self.directory / f"{self._id}.{self._next:08d}.jsonl"
            self._next += 1
            os.rename(self.directory / f"{self._id}{OPEN}", segment)
            os.close(self._fd)
            self._fd = self._open()
            self._segments.append(segment)
        return len(self._segments)

    def settle(self, sealed: int) -> None:
        """The rows of the first ``sealed`` segments are committed: delete them."""
        done, self._segments = self._segments[:sealed], self._segments[sealed:]
        for segment in done:
            with contextlib.suppress(FileNotFoundError):
                self._bytes -= segment.stat().st_size
                segment.unlink()
        if not self._segments:
            self._bytes = os.fstat(self._fd).st_size

    def sealed_rows(self, sealed: int) -> Iterator[Rows]:
        """The rows of the first ``sealed`` segments, segment by segment."""
        for segment in self._segments[:sealed]:
            yield read_rows(segment)

    def recover(self, insert: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]) -> int:
        """Insert the rows left by workers that died, then delete their files; the cards recovered."""
        recovered = 0
        for lock_path in self.directory.glob(f"*{LOCK}"):
            owner = lock_path.name[: -len(LOCK)]
            if owner == self._id:
                continue
            with _taken(lock_path) as taken:
                if not taken:
                    continue  # alive
                for path in sorted(self.directory.glob(f"{owner}.*.jsonl")):
                    cards, suggestions = read_rows(path)
                    if cards:
                        insert(cards, suggestions)
                    recovered += len(cards)
                    path.unlink()
                lock_path.unlink()
        if recovered:
            log.warning("card outbox: %d cards of a worker that stopped were recovered", recovered)
        return recovered

    def close(self) -> None:
        """Remove this worker's files when everything was committed; otherwise leave them (and let go
        of the lock) for the next worker to recover."""
        os.close(self._fd)
        open_path = self.directory / f"{self._id}{OPEN}"
        with contextlib.suppress(FileNotFoundError):
            if open_path.stat().st_size == 0:
                open_path.unlink()
        if not any(self.directory.glob(f"{self._id}.*.jsonl")):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{self._id}{LOCK}").unlink()
        os.close(self._lock_fd)

    def _open(self) -> int:
        return os.open(self.directory / f"{self._id}{OPEN}", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)


@contextlib.contextmanager
def _taken(lock_path: Path) -> Iterator[bool]:
    """Whether the lock file could be taken (its owner is gone); held until the block ends."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def directory_for(configured: Path | None, database_url: str) -> Path | None:
    """The outbox directory: the configured one, else beside a SQLite store's file
    (``cds.db`` -> ``cds.outbox/``); None when there is neither."""
    if configured is not None:
        return configured
    prefix = "sqlite:///"
    if database_url.startswith(prefix) and database_url[len(prefix):] not in ("", ":memory:"):
        path = Path(database_url[len(prefix):])
        return path.with_name(f"{path.stem}.outbox")
    return None


def read_rows(path: Path) -> Rows:
    """The card and suggestion rows of one outbox file; a torn last line is skipped."""
    cards: list[dict[str, Any]] = []
    suggestions: list[dict[str, Any]] = []
    for line in path.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        for card in entry.get("cards", ()):
            card["issued_at"] = datetime.fromisoformat(card["issued_at"])
            card.setdefault("modality", None)  # a row journalled before schema 2 (issue 13) has none
            cards.append(card)
        suggestions.extend(entry.get("suggestions", ()))
    return cards, suggestions

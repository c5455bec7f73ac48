"""Store calls that a hung database cannot hold past a bound.

A database whose backend stops answering on a live TCP connection (its process stopped, its storage
stalled) trips none of the driver's timeouts: ``statement_timeout`` and ``lock_timeout`` run inside
that backend, and the kernel on its host still acknowledges every packet and keepalive. A request
thread calling it would wait until the database came back. ``BoundedCalls.run`` gives such a call
to a thread of its own and waits for the answer at most ``seconds``; past that the caller gets
``StoreUnavailable`` (a 503 with ``Retry-After``) while the call goes on until the database answers
or drops the connection. Its threads are daemons, so one still waiting never holds up an exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from typing import TypeVar

from service.errors import StoreUnavailable

T = TypeVar("T")


def runner(name: str, seconds: float, *, threads: int, bounded: bool) -> Callable[..., Any]:
    """How a store's calls are run, chosen once where the store is built: ``BoundedCalls.run`` for a
    database that may hang (``schema.may_hang``), else the call itself on the caller's thread."""
    return BoundedCalls(name, seconds, threads=threads).run if bounded else _direct


def _direct(call: Callable[..., T], /, *args: Any) -> T:
    return call(*args)


class BoundedCalls:
    """Runs store calls on up to ``threads`` threads of their own, waiting for each at most ``seconds``."""

    def __init__(self, name: str, seconds: float, *, threads: int) -> None:
        self.name = name
        self.seconds = seconds
        self._max_threads = threads
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def run(self, call: Callable[..., T], /, *args: Any) -> T:
        """``call(*args)``'s result or exception; StoreUnavailable when it has not ended within ``seconds``."""
        future: Future[T] = Future()
        self._jobs.put((future, call, args))
        with self._lock:
            if self._idle == 0 and self._threads < self._max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()
        try:
            return future.result(timeout=self.seconds)
        except FutureTimeout:
            future.cancel()  # still queued (every thread held by a hung call): it never starts
            raise StoreUnavailable(f"{self.name}: the database did not answer within {self.seconds:g} s") from None

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            future, call, args = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting before it started
            try:
                future.set_result(call(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                future.set_exception(exc)

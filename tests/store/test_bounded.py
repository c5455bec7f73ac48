"""service/store/bounded.py: a store call waited for at most its bound, whatever the call does."""

from __future__ import annotations

import threading
import time

import pytest

from service import errors
from service.store.bounded import BoundedCalls


def test_answers_and_errors_come_back_to_the_caller():
    calls = BoundedCalls("test", 1.0, threads=2)
    assert calls.run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(errors.InvalidRequest, match="unknown card"):
        calls.run(_raise, errors.InvalidRequest("unknown card"))


def test_a_call_past_its_bound_is_store_unavailable_and_goes_on():
    calls = BoundedCalls("feedback", 0.3, threads=2)
    release, finished = threading.Event(), threading.Event()

    def hung():
        release.wait(10)
        finished.set()

    started = time.monotonic()
    with pytest.raises(errors.StoreUnavailable, match="feedback: the database did not answer within 0.3 s"):
        calls.run(hung)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert calls.run(lambda: "another thread") == "another thread"  # the hung one holds only its own
    release.set()
    assert finished.wait(5)


def test_a_call_queued_behind_hung_ones_never_runs():
    calls = BoundedCalls("test", 0.2, threads=1)
    release = threading.Event()
    ran = []
    with pytest.raises(errors.StoreUnavailable):
        calls.run(release.wait, 10)
    with pytest.raises(errors.StoreUnavailable):
        calls.run(ran.append, "late")  # the only thread is hung: this waits in the queue
    release.set()
    assert calls.run(lambda: "after") == "after"
    assert ran == []  # its caller had given up: it was dropped, not run late


def test_its_threads_never_hold_up_an_exit():
    calls = BoundedCalls("test", 0.1, threads=1)
    with pytest.raises(errors.StoreUnavailable):
        calls.run(threading.Event().wait)  # hangs for good
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("test-"))


def _raise(exc):
    raise exc

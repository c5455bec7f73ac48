"""service/web/deadline.py: the deadline counts from the request's arrival (the worker's stamp, or
the proxy's X-Request-Start when earlier), never later than this process saw it."""

from __future__ import annotations

import time

import pytest

from service.errors import DeadlineExceeded
from service.web import deadline


def test_counts_from_the_workers_arrival_stamp():
    now = time.monotonic()
    d = deadline.for_request({deadline.ARRIVED_KEY: now - 1.5}, 4.0, now=now)
    assert d.arrived == now - 1.5 and d.expires == pytest.approx(now + 2.5)


def test_without_a_stamp_it_counts_from_now():
    now = time.monotonic()
    assert deadline.for_request({}, 4.0, now=now).arrived == now


@pytest.mark.parametrize(("age", "believed"), [(0.5, True), (3.0, True), (-5.0, False), (3600.0, False)])
def test_the_proxys_start_counts_when_earlier_and_believable(age, believed):
    now = time.monotonic()
    environ = {deadline.ARRIVED_KEY: now - 0.1, "HTTP_X_REQUEST_START": f"t={time.time() - age:.3f}"}
    d = deadline.for_request(environ, 4.0, now=now)
    expected = now - age if believed and age > 0.1 else now - 0.1
    assert d.arrived == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("header", ["", "t=", "t=abc", "1733472000", "t=1e400"])
def test_a_malformed_proxy_start_is_ignored(header):
    now = time.monotonic()
    assert deadline.for_request({"HTTP_X_REQUEST_START": header}, 4.0, now=now).arrived == now


def test_check_raises_a_503_with_retry_after_once_the_answer_cannot_be_in_time():
    now = time.monotonic()
    deadline.for_request({deadline.ARRIVED_KEY: now - 1.0}, 4.0, now=now).check("queue")  # in time
    late = deadline.for_request({deadline.ARRIVED_KEY: now - 3.9}, 4.0, now=now)
    with pytest.raises(DeadlineExceeded, match="deadline") as caught:
        late.check("queue")
    assert caught.value.status == 503 and caught.value.retry_after == 1

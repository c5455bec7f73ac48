"""service/web/deadline.py: the deadline counts from the request's arrival (the worker's stamp, or
the proxy's X-Request-Start when earlier), never later than this process saw it."""

from __future__ import annotations

import json
import time
from datetime import date

import pytest
import sqlalchemy as sa

from service.errors import DeadlineExceeded
from service.services import services_of
from service.store import schema
from service.web import deadline
from tests import fhir


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


# --- the hook view: a call that can no longer be answered in time gets a fast 503 -------------------

SELECT = "/cds-services/order-select"


def _call(client, signer, **environ):
    body = json.dumps(fhir.load_request("acute-uncomplicated", shift_to=date.today()))
    started = time.monotonic()
    response = client.post(SELECT, data=body, content_type="application/json", headers=signer.headers(SELECT),
                           environ_base=environ)
    return response, time.monotonic() - started


def _cards(app):
    services = services_of(app)
    services.recorder.flush()
    with services.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.cards)).scalar_one()


def test_a_call_queued_past_its_deadline_is_a_fast_503(app, client, signer):
    # 3.9 s of the 4 s went arriving and waiting for a thread: no time is left to answer.
    response, took = _call(client, signer, **{deadline.ARRIVED_KEY: time.monotonic() - 3.9})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["issue"][0]["code"] == "timeout"
    assert took < 0.5
    assert _cards(app) == 0  # no card was shown, so none is recorded


def test_the_proxys_arrival_counts_too(client, signer):
    response, _ = _call(client, signer, HTTP_X_REQUEST_START=f"t={time.time() - 3.9:.3f}")
    assert response.status_code == 503


def test_a_call_with_time_left_is_answered(app, client, signer):
    response, _ = _call(client, signer, **{deadline.ARRIVED_KEY: time.monotonic() - 2.0})
    assert response.status_code == 200
    assert _cards(app) == len(response.get_json()["cards"]) > 0

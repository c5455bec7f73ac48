"""A sick store seen from the EHR's side (issue 15): a bounded, clean 503 with Retry-After, or, with
replay.when_down = "memory", a normal answer; never a 500 and never a wait of the lock's length."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import date

import sqlalchemy as sa

from service import config
from service.app import create_app
from service.app import services_of
from service.security import replay
from service.security.replay import replay_database_url
from tests import fhir
from tests.conftest import with_settings
from tests.store import databases

SELECT = "/cds-services/order-select"


@contextlib.contextmanager
def replay_file_locked(database_url: str) -> Iterator[None]:
    """Another process's transaction holding the SQLite replay file's write lock."""
    with databases.sqlite_write_locked(replay_database_url(sa.make_url(database_url)).database):
        yield


def call(client, signer):
    body = json.dumps(fhir.load_request("acute-uncomplicated", shift_to=date.today()))
    started = time.monotonic()
    response = client.post(SELECT, data=body, content_type="application/json", headers=signer.headers(SELECT))
    return response, time.monotonic() - started


def test_locked_replay_store_is_a_fast_503_with_retry_after(client, signer, settings):
    with replay_file_locked(settings.database_url):
        first, first_took = call(client, signer)
        second, second_took = call(client, signer)
    assert first.status_code == second.status_code == 503
    assert first.headers["Retry-After"] == "2"
    assert first.get_json()["issue"][0]["code"] == "transient"
    assert first_took < 2.5        # the lock timeout (about a second), not SQLite's 30 s
    assert second_took < 0.5       # the store is left alone for a few seconds after it failed


def test_locked_replay_store_with_memory_window_answers(signer, settings):
    app = create_app(with_settings(settings, replay=config.ReplaySettings(when_down=config.ReplayWhenDown.MEMORY)))
    client = app.test_client()
    try:
        with replay_file_locked(settings.database_url):
            response, _ = call(client, signer)
            assert response.status_code == 200
            assert response.get_json()["cards"]
            token_headers = signer.headers(SELECT)
            body = json.dumps(fhir.load_request("acute-uncomplicated", shift_to=date.today()))
            once = client.post(SELECT, data=body, content_type="application/json", headers=token_headers)
            again = client.post(SELECT, data=body, content_type="application/json", headers=token_headers)
        assert once.status_code == 200
        assert again.status_code == 401  # the same token twice, even while the store is down
    finally:
        services_of(app).close()


def test_postgresql_refusing_connections_is_a_503_not_a_500(signer, settings):
    """PostgreSQL stopped under a running service: hook calls and feedback get 503, never 500."""
    with databases.postgres_schema() as url, databases.forwarded(url) as (via, forwarder):
        app = create_app(with_settings(settings, database_url=via))
        client = app.test_client()
        try:
            response, _ = call(client, signer)
            assert response.status_code == 200
            card = response.get_json()["cards"][0]["uuid"]
            forwarder.refuse()
            response, took = call(client, signer)
            assert response.status_code == 503 and "Retry-After" in response.headers
            feedback_path = SELECT + "/feedback"
            body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-01-01T10:00:00Z",
                                  "overrideReason": {"reason": {"code": "patient-preference"}}}]}
            response = client.post(feedback_path, json=body, headers=signer.headers(feedback_path))
            assert response.status_code == 503
            assert response.get_json()["resourceType"] == "OperationOutcome"
        finally:
            services_of(app).close()


def test_a_postgresql_that_stops_answering_is_a_503_within_the_bound(signer, settings):
    """PostgreSQL keeps its connections open but answers nothing (a stopped process, a stalled disk:
    no driver timeout fires): the token check gives up after replay.CHECK_WAIT_SECONDS, and the
    calls after it are refused at once; once it answers again, so does the service."""
    with databases.postgres_schema() as url, databases.forwarded(url) as (via, forwarder):
        app = create_app(with_settings(settings, database_url=via))
        client = app.test_client()
        try:
            assert call(client, signer)[0].status_code == 200
            forwarder.stall()
            first, first_took = databases.within(15, call, client, signer)
            second, second_took = databases.within(15, call, client, signer)
            assert first.status_code == second.status_code == 503
            assert first.headers["Retry-After"] == "2"
            assert replay.CHECK_WAIT_SECONDS <= first_took < replay.CHECK_WAIT_SECONDS + 1.5
            assert second_took < 0.5
            forwarder.resume()
            time.sleep(replay.PROBE_SECONDS)
            assert call(client, signer)[0].status_code == 200
        finally:
            forwarder.resume()
            services_of(app).close()

"""Prefetch gaps filled from a real FHIR server (Medplum, in memory): the answer without prefetch
equals the answer with prefetch, for every fixture patient."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date

import pytest

from service.app import create_app
from service.app import services_of
from tests import fhir
from tests.conftest import trusting_fhir_server
from tests.fhirserver.runner import serving_stories

STORIES = sorted(p.stem for p in (fhir.FIXTURES / "patients").glob("*.json"))
TOKEN = "fhir-access-token-not-for-logs"


@pytest.fixture(scope="module")
def fhir_base():
    with serving_stories(STORIES) as base:
        yield base


@pytest.fixture
def fetching_client(settings, fhir_base):
    app = create_app(trusting_fhir_server(settings, fhir_base))
    yield app.test_client()
    services_of(app).close()


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalized(body):
    """The response without the values that differ on every call (card, suggestion and consult uuids)."""
    return json.loads(_UUID.sub("<uuid>", json.dumps(body, sort_keys=True)))


def call(client, signer, request):
    path = "/cds-services/" + request["hook"]
    return client.post(path, json=request, headers=signer.headers(path))


@pytest.mark.parametrize("name", STORIES)
def test_no_prefetch_answer_equals_prefetch_answer(fetching_client, signer, fhir_base, name):
    request = fhir.load_request(name, shift_to=date.today())
    request["fhirServer"] = fhir_base
    request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "scope": "patient/*.read", "subject": "cds"}
    with_prefetch = call(fetching_client, signer, request)
    request["prefetch"] = {}
    without = call(fetching_client, signer, request)
    assert with_prefetch.status_code == without.status_code == 200, without.get_data(as_text=True)
    assert normalized(without.get_json()) == normalized(with_prefetch.get_json())


def test_partial_prefetch_is_completed_from_the_server(fetching_client, signer, fhir_base):
    request = fhir.load_request("fracture-risk", shift_to=date.today())
    request["fhirServer"] = fhir_base
    del request["prefetch"]["conditions"]  # the osteoporosis lives here
    request["prefetch"]["observations"] = None
    body = call(fetching_client, signer, request).get_json()
    assert [c["source"]["topic"]["code"] for c in body["cards"]] == ["fracture-risk"]
    assert "Not available" not in body["cards"][0]["detail"]


@pytest.mark.parametrize(("name", "key"), [
    pytest.param("steroid-statement", "medicationStatements", id="MedicationStatement"),
    pytest.param("atc-glucocorticoid-dispense", "medicationDispenses", id="MedicationDispense"),
])
def test_medication_use_is_fetched_from_the_server(fetching_client, signer, fhir_base, name, key):
    # v2: MedicationStatement and MedicationDispense are read in the FHIR fetch path too; without them
    # the long-term steroid use (fracture risk) is not seen.
    request = fhir.load_request(name, shift_to=date.today())
    request["fhirServer"] = fhir_base
    request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "scope": "patient/*.read", "subject": "cds"}
    for other in ("medications", "medicationStatements", "medicationDispenses"):
        request["prefetch"][other] = fhir.searchset([])
    del request["prefetch"][key]
    body = call(fetching_client, signer, request).get_json()
    assert [c["source"]["topic"]["code"] for c in body["cards"]] == ["fracture-risk"]


@pytest.fixture
def faulty_client(settings, httpserver):
    yield from _client_for(settings, httpserver)


@pytest.fixture
def slow_server():
    from pytest_httpserver import HTTPServer

    server = HTTPServer(threaded=True)  # its own server: a sleeping handler must not delay other tests
    server.start()
    server.expect_request("/fhir/Condition").respond_with_handler(_slow)
    yield server
    server.clear()
    server.stop()


def _client_for(settings, httpserver):
    base = httpserver.url_for("/fhir")
    app = create_app(trusting_fhir_server(settings, base, fhir=replace(settings.fhir, timeout_seconds=0.5)))
    yield app.test_client(), base
    services_of(app).close()


def _slow(_request):
    import time

    from werkzeug import Response

    time.sleep(1.5)
    return Response("{}", content_type="application/fhir+json")


@pytest.mark.parametrize(("respond", "reason"), [
    (lambda h: h.expect_request("/fhir/Condition").respond_with_data("oops", status=500), "HTTP 500"),
    (lambda h: h.expect_request("/fhir/Condition").respond_with_data("", status=401), "HTTP 401"),
    (lambda h: h.expect_request("/fhir/Condition").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "no"}]}), "OperationOutcome"),
    (lambda h: h.expect_request("/fhir/Condition").respond_with_data("<html>", content_type="text/html"), "unreadable"),
    (lambda h: h.expect_request("/fhir/Condition").respond_with_data("", status=302, headers={"Location": "http://127.0.0.2:9/fhir/Condition"}), "redirect"),
])
def test_fhir_faults_answer_412_promptly_naming_the_data(faulty_client, signer, httpserver, respond, reason):
    client, base = faulty_client
    respond(httpserver)
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    request["fhirServer"] = base
    del request["prefetch"]["conditions"]
    import time

    started = time.monotonic()
    response = call(client, signer, request)
    elapsed = time.monotonic() - started
    assert response.status_code == 412
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "conditions" in diagnostics and reason.lower() in diagnostics.lower()
    assert elapsed < 1.5  # the configured 0.5 s timeout plus a margin, not the server's 1.5 s


def test_a_hanging_fhir_server_gets_412_within_the_timeout(settings, signer, slow_server):
    import time

    for client, base in _client_for(settings, slow_server):
        request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
        request["fhirServer"] = base
        del request["prefetch"]["conditions"]
        started = time.monotonic()
        response = call(client, signer, request)
        assert time.monotonic() - started < 1.2  # 0.5 s timeout plus a margin, not the server's 1.5 s
        assert response.status_code == 412
        assert "timeout" in response.get_json()["issue"][0]["diagnostics"]


def test_token_goes_only_to_the_allowed_base(faulty_client, signer, httpserver):
    client, base = faulty_client
    httpserver.expect_request("/fhir/Condition").respond_with_json({"resourceType": "Bundle", "type": "searchset"})
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    request["fhirServer"] = base
    request["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "scope": "patient/*.read", "subject": "cds"}
    del request["prefetch"]["conditions"]
    response = call(client, signer, request)
    assert response.status_code == 200, response.get_data(as_text=True)
    (sent, _), = httpserver.log
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.args["patient"] == "pat-acute"

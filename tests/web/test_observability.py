"""Structured request logs, the clean 500, readiness, and a scan of all log output for patient data."""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import logging
import re
import time
import uuid
from datetime import date

import pytest
import requests
import sqlalchemy as sa

from service.app import create_app
from service.app import services_of
from service.web import metrics
from service.web import observability
from service.web import operations
from tests import fhir
from tests.conftest import ISSUER
from tests.conftest import with_settings
from tests.conftest import trusting_fhir_server
from tests.serving import free_port
from tests.serving import serving
from tests.serving import write_config
from tests.store import databases

SELECT = "/cds-services/order-select"
SIGN = "/cds-services/order-sign"
SALT = "test-salt"
FHIR_TOKEN = "fhir-access-token-b64-7f3a9c"


@pytest.fixture
def settings(settings, httpserver):
    return trusting_fhir_server(settings, httpserver.url_for("/fhir"), patient_hash_salt=SALT)


@pytest.fixture
def request_lines(caplog):
    """The request log records, as the dicts the JSON formatter writes."""
    caplog.set_level(logging.DEBUG)

    def lines():
        return [json.loads(observability.JsonFormatter().format(r)) for r in caplog.records
                if r.name == observability.REQUEST_LOGGER]
    return lines


@pytest.fixture
def json_log():
    """Everything the process logs while the test runs, through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(observability.JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def post(client, signer, body, path=SELECT):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=signer.headers(path))


def today(name):
    return fhir.load_request(name, shift_to=date.today())


def fetching(request, server, *missing):
    for key in missing:
        del request["prefetch"][key]
    request["fhirServer"] = server.url_for("/fhir")
    request["fhirAuthorization"] = {"access_token": FHIR_TOKEN, "token_type": "Bearer", "scope": "patient/*.read", "subject": "x"}
    return request


# --- the request line ---------------------------------------------------------------------------

def test_one_line_per_request_with_ids_decisions_and_prefetch_use(client, signer, request_lines):
    request = today("acute-uncomplicated")
    response = post(client, signer, request)
    assert response.status_code == 200
    [line] = request_lines()
    assert line["logger"] == "lumbar_mri_cds.request" and line["level"] == "INFO"
    assert line["request_id"] == response.headers["X-Request-Id"]
    assert line["hook_instance"] == request["hookInstance"]
    assert line["service"] == "order-select" and line["endpoint"] == "hook"
    assert line["issuer"] == ISSUER
    assert line["status"] == 200
    assert 0 < line["latency_ms"] < 10_000
    assert line["rules"] == {"acute-uncomplicated": "not-appropriate"}
    assert line["cards"] == [{"rule": "acute-uncomplicated", "indicator": "warning", "modality": "mri"}]
    assert line["orders_reviewed"] == 1
    assert line["prefetch_misses"] == [] and "conditions" in line["prefetch_hits"]
    expected = hmac.new(SALT.encode(), request["context"]["patientId"].encode(), hashlib.sha256).hexdigest()
    assert line["patient"] == expected


def test_fhir_fetches_are_counted_in_the_line(client, signer, httpserver, request_lines):
    httpserver.expect_request("/fhir/Procedure").respond_with_json(fhir.searchset([]))
    response = post(client, signer, fetching(today("acute-uncomplicated"), httpserver, "procedures"))
    assert response.status_code == 200
    [line] = request_lines()
    assert line["fhir_requests"] == 1
    assert line["fhir_fetched"] == ["procedures"] and line["fhir_failed"] == []
    assert line["prefetch_misses"] == ["procedures"]
    assert line["unavailable"] == []


def test_a_412_line_names_the_failed_fetch(client, signer, httpserver, request_lines):
    httpserver.expect_request("/fhir/Condition").respond_with_data("no", status=503)
    response = post(client, signer, fetching(today("acute-uncomplicated"), httpserver, "conditions"))
    assert response.status_code == 412
    [line] = request_lines()
    assert line["status"] == 412 and line["issue"] == "incomplete" and line["expression"] == "prefetch"
    assert line["fhir_failed"] == ["conditions"]
    assert "rules" not in line


def test_a_400_line_names_the_field_but_not_its_value(client, signer, request_lines):
    request = today("acute-uncomplicated")
    request["hook"] = "Testperson"
    assert post(client, signer, request).status_code == 400
    [line] = request_lines()
    assert (line["status"], line["issue"], line["expression"]) == (400, "invalid", "hook")
    assert "Testperson" not in json.dumps(line)


def test_a_hook_instance_that_is_not_an_id_is_not_logged(client, signer, request_lines):
    request = today("acute-uncomplicated")
    request["hookInstance"] = "Pat Testperson, born 1990-02-17"
    assert post(client, signer, request).status_code == 200
    assert request_lines()[0]["hook_instance"] == "(not an id)"


@pytest.mark.parametrize(("method", "path", "endpoint"), [
    ("GET", "/cds-services", "discovery"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/readyz", "readyz"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/openapi.json", "openapi"),
    ("OPTIONS", SELECT, "hook"),  # the preflight, answered by CORS before the view
    ("GET", "/Patient/Testperson", "-"),
])
def test_every_request_gets_a_line_without_its_raw_path(client, request_lines, method, path, endpoint):
    response = client.open(path, method=method, headers={"Origin": "https://sandbox.cds-hooks.org"})
    [line] = request_lines()
    assert line["endpoint"] == endpoint and line["status"] == response.status_code
    assert "Testperson" not in json.dumps(line)
    assert response.headers["X-Request-Id"] == line["request_id"]


def test_a_bug_in_observing_never_breaks_the_answer(client, signer, app, monkeypatch, caplog):
    caplog.set_level(logging.INFO)

    def broken(*_args, **_kwargs):
        raise RuntimeError("metrics broke")
    monkeypatch.setattr(metrics.metrics_of(app), "observe_request", broken)
    assert post(client, signer, today("acute-uncomplicated")).status_code == 200
    assert any("could not observe" in r.getMessage() for r in caplog.records)


# --- no stack trace reaches a client -------------------------------------------------------------

def test_an_internal_error_is_a_clean_500_and_the_next_request_works(client, signer, app, monkeypatch, request_lines, json_log):
    services = services_of(app)
    real = services.evaluator.evaluate

    def boom(*_args, **_kwargs):
        raise KeyError("Pat Testperson M54.50")
    monkeypatch.setattr(services.evaluator, "evaluate", boom)
    response = post(client, signer, today("acute-uncomplicated"))
    assert response.status_code == 500
    assert response.mimetype == "application/fhir+json"
    issue = response.get_json()["issue"][0]
    request_id = response.headers["X-Request-Id"]
    assert issue["code"] == "exception" and request_id in issue["diagnostics"]
    text = response.get_data(as_text=True)
    for leak in ("Traceback", "KeyError", "Testperson", "M54.50", ".py"):
        assert leak not in text
    # the log names the request and the error's type and frames, but not its message
    logged = json_log.getvalue()
    assert request_id in logged and "builtins.KeyError" in logged
    assert "Testperson" not in logged and "M54.50" not in logged
    assert request_lines()[-1]["status"] == 500

    monkeypatch.setattr(services.evaluator, "evaluate", real)
    assert post(client, signer, today("acute-uncomplicated")).status_code == 200


def test_the_json_formatter_leaves_exception_messages_out():
    try:
        raise ValueError("patient Testperson")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=__import__("sys").exc_info())
    line = json.loads(observability.JsonFormatter().format(record))
    assert line["message"] == "failed here"
    assert line["exception"]["type"] == "builtins.ValueError"
    assert any("test_observability.py" in f for f in line["exception"]["frames"])
    assert "Testperson" not in json.dumps(line)


# --- readiness ------------------------------------------------------------------------------------

def test_readyz_is_200_when_the_store_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json() == {"status": "ready"}


@pytest.mark.parametrize("url", [
    "sqlite:////nonexistent-directory/for-readyz/store.db",
    "postgresql+psycopg://nobody@127.0.0.1:{port}/none?connect_timeout=2",
])
def test_readyz_is_503_when_the_store_is_unreachable(client, app, url):
    services = services_of(app)
    working = services.engine
    services.engine = sa.create_engine(url.format(port=free_port()))
    try:
        response = client.get("/readyz")
    finally:
        services.engine.dispose()
        services.engine = working
    assert response.status_code == 503
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "transient" and "not reachable" in issue["diagnostics"]
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert client.get("/readyz").status_code == 200


def test_readyz_is_a_503_within_its_bound_when_postgresql_stops_answering(settings):
    with databases.postgres_schema() as url, databases.forwarded(url) as (via, forwarder):
        app = create_app(with_settings(settings, database_url=via))
        client = app.test_client()
        try:
            assert client.get("/readyz").status_code == 200
            forwarder.stall()
            started = time.monotonic()
            response = databases.within(15, client.get, "/readyz")
            took = time.monotonic() - started
        finally:
            forwarder.resume()
            services_of(app).close()
    assert response.status_code == 503
    assert "did not answer within 2 s" in response.get_json()["issue"][0]["diagnostics"]
    assert operations.READY_WAIT_SECONDS <= took < operations.READY_WAIT_SECONDS + 1.5


# --- a scan of all log output for patient data and tokens ------------------------------------------

FIXTURE_NAMES = sorted(p.stem for p in (fhir.FIXTURES / "requests").glob("*.json"))


def secrets_of(request):
    """Patient data a log must never show: names, ids, birth dates, condition codes of the patient."""
    found = {"Testperson", request["context"]["patientId"]}
    patient = request["prefetch"].get("patient") or {}
    for name in patient.get("name", []):
        found.update(g for g in name.get("given", []) if len(g) > 3)  # "Pat" is part of "Patient"
    if patient.get("birthDate"):
        found.add(patient["birthDate"])
    for entry in (request["prefetch"].get("conditions") or {}).get("entry", []):
        for coding in entry["resource"].get("code", {}).get("coding", []):
            found.add(coding["code"])
    return found


def variants(request, server):
    """The request as sent, with data to fetch, with a failing fetch, malformed, and ill-typed."""
    yield request
    if request["prefetch"].get("procedures") is not None:
        yield fetching(copy.deepcopy(request), server, "procedures")
    if request["prefetch"].get("conditions") is not None:
        yield fetching(copy.deepcopy(request), server, "conditions")
    broken = copy.deepcopy(request)
    broken["context"]["draftOrders"] = "Testperson"
    yield broken
    odd = copy.deepcopy(request)
    odd["hookInstance"] = request["prefetch"].get("patient", {}).get("birthDate", "x") + " Testperson"
    yield odd


def test_no_patient_data_or_token_in_any_log_output(client, signer, httpserver, app, monkeypatch, caplog, json_log):
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request("/fhir/Procedure").respond_with_json(fhir.searchset([]))
    httpserver.expect_request("/fhir/Condition").respond_with_data("Testperson not found", status=404)
    secrets = {"Bearer ", FHIR_TOKEN}
    statuses = set()
    for name in FIXTURE_NAMES:
        request = fhir.load_request(name, shift_to=date.today())
        secrets |= secrets_of(request)
        path = SIGN if request["hook"] == "order-sign" else SELECT
        for variant in variants(request, httpserver):
            headers = signer.headers(path)
            secrets.add(headers["Authorization"].removeprefix("Bearer "))
            response = client.post(path, data=json.dumps(variant), content_type="application/json", headers=headers)
            statuses.add(response.status_code)
            cards = response.get_json().get("cards", []) if response.status_code == 200 else []
            if cards:
                _send_feedback(client, signer, path, cards[0])
    # an internal error whose message holds patient data
    monkeypatch.setattr(services_of(app).evaluator, "evaluate", _raise_with_patient_data)
    statuses.add(post(client, signer, today("acute-uncomplicated")).status_code)
    assert {200, 400, 412, 500} <= statuses  # every path was taken
    assert len([r for r in caplog.records if r.name == observability.REQUEST_LOGGER]) > 60

    # The test FHIR server's own access log (werkzeug) is not ours; urllib3 is kept quiet by `serve`.
    ours = [r for r in caplog.records if r.name.split(".")[0] not in ("werkzeug", *observability.QUIET_LOGGERS)]
    outputs = {"caplog": "\n".join(_record_text(r) for r in ours), "json": _ours(json_log.getvalue())}
    for where, text in outputs.items():
        leaks = sorted(s for s in secrets if s and s in text)
        assert not leaks, f"{where} log output holds {leaks}"
    for line in outputs["json"].splitlines():
        json.loads(line)  # every line is one JSON object


def _raise_with_patient_data(*_args, **_kwargs):
    raise ValueError("Testperson born 1990-02-17 has M54.50")


def _send_feedback(client, signer, path, card):
    feedback_path = path + "/feedback"
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-26T10:00:00Z",
            "overrideReason": {"userComment": "Testperson insisted"}}
    client.post(feedback_path, json={"feedback": [item]}, headers=signer.headers(feedback_path))
    client.post(feedback_path, json={"feedback": [{"card": "Testperson"}]}, headers=signer.headers(feedback_path))


def _record_text(record):
    """A record as text: message and fields (the exception is rendered by the JSON formatter only)."""
    text = record.getMessage()
    fields = getattr(record, "fields", None)
    if fields:
        text += json.dumps(fields)
    return text


def _ours(stream_text):
    quiet = ("werkzeug", *observability.QUIET_LOGGERS)
    return "\n".join(line for line in stream_text.splitlines() if json.loads(line)["logger"].split(".")[0] not in quiet)


# --- over real HTTP: gunicorn workers write JSON lines on stderr ------------------------------------

def test_serve_writes_one_json_line_per_request_on_stderr(tmp_path, jwks_file, signer):
    port = free_port()
    config_file = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    base = f"http://127.0.0.1:{port}"
    with serving(config_file, port, workers=2) as process:
        ids = set()
        for name in ("acute-uncomplicated", "cauda-equina", "sandbox-empty-order"):
            token = signer.token(SELECT, aud=base + SELECT)
            response = requests.post(base + SELECT, json=fhir.load_request(name, shift_to=date.today()),
                                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert response.status_code == 200
            ids.add(response.headers["X-Request-Id"])
        assert requests.post(base + SELECT, json={}, timeout=10).status_code == 401
    stderr = process.captured.decode()
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    requests_logged = [line for line in lines if line["logger"] == observability.REQUEST_LOGGER]
    assert ids <= {line["request_id"] for line in requests_logged}
    assert {line["status"] for line in requests_logged if line["endpoint"] == "hook"} == {200, 401}
    assert any(line["logger"].startswith("gunicorn") for line in lines)
    assert "Testperson" not in stderr and "Bearer" not in stderr
    uuid.UUID(requests_logged[-1]["request_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*", lines[0]["time"])


# --- 404s say what was asked for ---------------------------------------------------------------


def hashed(segment):
    return "#" + hmac.new(SALT.encode(), segment.encode(), hashlib.sha256).hexdigest()[:8]


@pytest.mark.parametrize(("path", "logged"), [
    ("/cds-service", "/cds-service"),                                    # a typo in the base path
    ("/api/cds-services", "/api/cds-services"),                          # a base path too many
    ("/cds-services/order-selekt", f"/cds-services/{hashed('order-selekt')}"),  # an unknown service id
    ("/Patient/Testperson", f"/{hashed('Patient')}/{hashed('Testperson')}"),  # a name never reaches the log
    ("/cds-services/a\x1b[31m/feedback", f"/cds-services/{hashed(chr(27).join(['a', '[31m']))}/feedback"),
    ("/a" * 20, "/a" + "".join(f"/{hashed('a')}" for _ in range(7)) + "/..."),  # cut short
])
def test_a_404_log_line_names_the_path(client, signer, request_lines, path, logged):
    if path.startswith("/cds-services/"):
        answer = post(client, signer, {"hook": "order-select"}, path=path)
    else:
        answer = client.get(path)
    assert answer.status_code == 404
    (line,) = [l for l in request_lines() if l["status"] == 404]
    assert line["path"] == logged
    assert logged in line["message"]
    assert "Testperson" not in json.dumps(line)


def test_discovery_answers_with_a_trailing_slash_too(client, request_lines):
    plain, slashed = client.get("/cds-services"), client.get("/cds-services/")
    assert slashed.status_code == 200
    assert slashed.get_json() == plain.get_json()
    assert [l["endpoint"] for l in request_lines()] == ["discovery", "discovery"]

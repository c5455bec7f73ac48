"""CORS: preflights on discovery, service and feedback URLs; Allow-Origin on every answer there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service import config
from service.app import create_app
from service.app import services_of
from tests.conftest import with_settings

SANDBOX = "https://sandbox.cds-hooks.org"
PATHS = ["/cds-services", "/cds-services/order-select", "/cds-services/order-sign/feedback", "/cds-services/unknown"]
REQUEST = Path(__file__).parents[2] / "fixtures" / "requests" / "acute-uncomplicated.json"


def preflight(client, path, origin=SANDBOX):
    return client.options(path, headers={
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    })


@pytest.mark.parametrize("path", PATHS)
def test_preflight_from_an_allowed_origin(client, path):
    response = preflight(client, path)
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX
    assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.data == b""


@pytest.mark.parametrize("origin", ["https://evil.example", "https://sandbox.cds-hooks.org.evil.example", "null"])
def test_preflight_from_another_origin_gets_no_grant(client, origin):
    response = preflight(client, "/cds-services/order-select", origin)
    assert response.status_code in (200, 204)
    for header in ("Access-Control-Allow-Origin", "Access-Control-Allow-Headers", "Access-Control-Allow-Methods"):
        assert header not in response.headers


def test_origin_comparison_ignores_case(client):
    response = preflight(client, "/cds-services", "https://Sandbox.CDS-Hooks.org")
    assert response.headers["Access-Control-Allow-Origin"] == "https://Sandbox.CDS-Hooks.org"


@pytest.fixture
def any_origin_client(settings):
    app = create_app(with_settings(settings, cors=config.CorsSettings(allow_origins=("*",))))
    yield app.test_client()
    services_of(app).close()


def test_any_origin_echoes_the_origin_without_credentials(any_origin_client):
    response = preflight(any_origin_client, "/cds-services/order-select", "http://localhost:3000")
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"  # never a literal *
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    answer = any_origin_client.get("/cds-services", headers={"Origin": "https://anywhere.example"})
    assert answer.headers["Access-Control-Allow-Origin"] == "https://anywhere.example"


def test_no_configured_origins_grants_nothing(settings):
    app = create_app(with_settings(settings, cors=config.CorsSettings(allow_origins=())))
    response = preflight(app.test_client(), "/cds-services")
    assert "Access-Control-Allow-Origin" not in response.headers
    services_of(app).close()


def test_discovery_answer_carries_allow_origin(client):
    response = client.get("/cds-services", headers={"Origin": SANDBOX})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX
    assert "Origin" in response.headers["Vary"]


def test_no_origin_no_allow_origin(client):
    response = client.get("/cds-services")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers["Vary"]


ERRORS = {
    "401-no-token": ("/cds-services/order-select", {}, b"{}", 401),
    "401-feedback": ("/cds-services/order-select/feedback", {}, b"{}", 401),
    "404-unknown-service": ("/cds-services/nope", {}, b"{}", 404),
    "400-malformed": ("/cds-services/order-select", "token", b'{"hook": "order-select"}', 400),
    "415-not-json": ("/cds-services/order-select", "token", b"hello", 415),
}


@pytest.mark.parametrize(("path", "headers", "body", "status"), ERRORS.values(), ids=ERRORS.keys())
def test_error_answers_carry_allow_origin(client, signer, path, headers, body, status):
    if headers == "token":
        headers = signer.headers(path)
    content_type = "text/plain" if status == 415 else "application/json"
    response = client.post(path, data=body, headers={**headers, "Origin": SANDBOX, "Content-Type": content_type})
    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX


def test_successful_hook_answer_carries_allow_origin(client, signer):
    path = "/cds-services/order-select"
    body = json.loads(REQUEST.read_text())
    body.pop("fhirServer", None)  # prefetch only: no FHIR server in this test
    body.pop("fhirAuthorization", None)
    response = client.post(path, json=body, headers={**signer.headers(path), "Origin": SANDBOX})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX


def test_other_paths_get_no_cors_headers(client):
    response = client.get("/healthz", headers={"Origin": SANDBOX})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert client.options("/healthz", headers={"Origin": SANDBOX}).headers.get("Access-Control-Allow-Origin") is None

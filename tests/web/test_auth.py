"""auth.authenticate in the real app: the audience is the URL called; a failure is a bare 401."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from service import config
from service.app import create_app
from service.app import services_of
from tests.conftest import with_settings

SERVICE = "/cds-services/order-select"
FEEDBACK = "/cds-services/order-select/feedback"
REQUEST = Path(__file__).parents[2] / "fixtures" / "requests" / "acute-uncomplicated.json"


def hook_body(fhir_server: str | None = None) -> dict:
    body = json.loads(REQUEST.read_text())
    body.pop("fhirAuthorization", None)
    if fhir_server:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = {"access_token": "fhir-secret", "token_type": "Bearer", "scope": "patient/*.read",
                                     "expires_in": 300, "subject": "cds"}
        body.pop("prefetch")  # everything would have to come from the FHIR server
    else:
        body.pop("fhirServer", None)
    return body


@pytest.fixture
def make_client(settings):
    apps = []

    def make(**changes):
        app = create_app(with_settings(settings, **changes))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        services_of(app).close()


def test_token_for_the_url_called_passes(client, signer):
    response = client.post(SERVICE, json=hook_body(), headers=signer.headers(SERVICE))
    assert response.status_code == 200


def test_discovery_needs_no_token(client):
    assert client.get("/cds-services").status_code == 200


REFUSED = {
    "no-token": lambda signer: {},
    "other-service": lambda signer: signer.headers("/cds-services/order-sign"),
    "feedback-url": lambda signer: signer.headers(FEEDBACK),
    "base-only": lambda signer: signer.headers(""),
    "expired": lambda signer: signer.headers(SERVICE, exp=1_000_000_000),
    "basic": lambda signer: {"Authorization": "Basic dXNlcjpwYXNz"},
}


@pytest.mark.parametrize("headers", REFUSED.values(), ids=REFUSED.keys())
def test_refused_token_is_a_bare_401(client, signer, headers):
    response = client.post(SERVICE, json=hook_body(), headers=headers(signer))
    assert response.status_code == 401
    assert response.data == b""
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_feedback_needs_a_token_for_the_feedback_url(client, signer):
    body = {"feedback": [{"card": "00000000-0000-4000-8000-000000000000", "outcome": "accepted",
                          "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    assert client.post(FEEDBACK, json=body, headers=signer.headers(SERVICE)).status_code == 401
    assert client.post(FEEDBACK, json=body).status_code == 401
    assert client.post(FEEDBACK, json=body, headers=signer.headers(FEEDBACK)).status_code != 401


def test_audience_is_public_base_url_plus_path(make_client, signer):
    client = make_client(public_base_url="https://cds.example.org/lumbar")
    reached = client.post(SERVICE, json=hook_body(), headers=signer.headers(SERVICE))  # aud http://localhost/...
    assert reached.status_code == 401
    signer_aud = signer.token(SERVICE, aud="https://cds.example.org/lumbar" + SERVICE)
    ok = client.post(SERVICE, json=hook_body(), headers={"Authorization": "Bearer " + signer_aud})
    assert ok.status_code == 200


def test_query_string_is_not_part_of_the_audience(client, signer):
    response = client.post(SERVICE + "?debug=1", json=hook_body(), headers=signer.headers(SERVICE))
    assert response.status_code == 200


def test_development_without_public_base_url_uses_the_url_reached(make_client, signer):
    client = make_client(profile=config.Profile.DEVELOPMENT, public_base_url=None)
    token = signer.token(SERVICE, aud="http://cds.local:8000" + SERVICE)
    ok = client.post(SERVICE, json=hook_body(), headers={"Authorization": "Bearer " + token},
                     base_url="http://cds.local:8000")
    assert ok.status_code == 200
    elsewhere = client.post(SERVICE, json=hook_body(), headers=signer.headers(SERVICE), base_url="http://other:8000")
    assert elsewhere.status_code == 401


def test_replayed_token_is_refused(client, signer):
    headers = signer.headers(SERVICE)
    assert client.post(SERVICE, json=hook_body(), headers=headers).status_code == 200
    assert client.post(SERVICE, json=hook_body(), headers=headers).status_code == 401


def test_refused_call_contacts_no_fhir_server(make_client, signer, httpserver, jwks_file):
    httpserver.expect_request("/fhir/Patient/example").respond_with_json({"resourceType": "Patient", "id": "x"})
    base = httpserver.url_for("/fhir")
    client = make_client(issuers=(config.IssuerSettings(iss=signer.iss, jwks_file=jwks_file, fhir_servers=(base,)),))
    for headers in ({}, signer.headers("/cds-services/order-sign"), {"Authorization": "Bearer garbage"}):
        assert client.post(SERVICE, json=hook_body(base), headers=headers).status_code == 401
    assert httpserver.log == []
    client.post(SERVICE, json=hook_body(base), headers=signer.headers(SERVICE))
    assert httpserver.log  # the same call with a good token does reach the FHIR server


def test_log_has_the_reason_but_never_the_token(client, signer, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = [
        signer.token(SERVICE),
        signer.token("/cds-services/order-sign"),
        signer.token(SERVICE, exp=1_000_000_000),
        signer.token(SERVICE, iss="https://unknown.example"),
        signer.token(FEEDBACK),
    ]
    for token in tokens:
        for authorization in ("Bearer " + token, token, "Basic " + token, "Bearer " + token + " extra"):
            client.post(SERVICE, json=hook_body(), headers={"Authorization": authorization})
        client.post(FEEDBACK, json={"feedback": []}, headers={"Authorization": "Bearer " + token})
    client.post(SERVICE, json=hook_body(), headers={"Authorization": "Bearer " + tokens[0]})  # replay
    assert "401 POST /cds-services/order-select: " in caplog.text
    assert "InvalidAudienceError" in caplog.text and "replayed" in caplog.text
    for token in tokens:
        assert token not in caplog.text
        assert token.split(".")[2] not in caplog.text

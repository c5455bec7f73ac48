"""GET /metrics: what an operator can count, per app, and across gunicorn workers."""

from __future__ import annotations

import json
from datetime import date

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.app import services_of
from tests import fhir
from tests.conftest import ISSUER
from tests.conftest import trusting_fhir_server
from tests.conftest import with_settings
from tests.serving import free_port
from tests.serving import serving
from tests.serving import write_config

SELECT = "/cds-services/order-select"
SIGN = "/cds-services/order-sign"


@pytest.fixture
def settings(settings, httpserver):
    return trusting_fhir_server(settings, httpserver.url_for("/fhir"))


def samples(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(response.get_data(as_text=True))


def post(client, signer, body, path=SELECT):
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=signer.headers(path))


def test_requests_and_latency_by_endpoint_service_and_status(client, signer):
    for _ in range(2):
        assert post(client, signer, fhir.load_request("acute-uncomplicated", shift_to=date.today())).status_code == 200
    assert post(client, signer, {"hook": "order-select"}).status_code == 400
    client.get("/cds-services")
    found = scrape(client)
    hook = {"endpoint": "hook", "service": "order-select"}
    assert value(found, "lumbar_mri_cds_requests_total", **hook, status="200") == 2
    assert value(found, "lumbar_mri_cds_requests_total", **hook, status="400") == 1
    assert value(found, "lumbar_mri_cds_requests_total", endpoint="discovery", service="-", status="200") == 1
    assert value(found, "lumbar_mri_cds_request_duration_seconds_count", **hook, status="200") == 2
    assert value(found, "lumbar_mri_cds_request_duration_seconds_bucket", **hook, status="200", le="+Inf") == 2
    assert value(found, "lumbar_mri_cds_request_duration_seconds_sum", **hook, status="200") > 0


def test_cards_ratings_and_prefetch_use(client, signer):
    post(client, signer, fhir.load_request("acute-uncomplicated", shift_to=date.today()))
    post(client, signer, fhir.load_request("pregnancy-contrast", shift_to=date.today()))
    post(client, signer, fhir.load_request("order-sign-two-orders", shift_to=date.today()), path=SIGN)
    found = scrape(client)
    assert value(found, "lumbar_mri_cds_cards_total", service="order-select", rule="acute-uncomplicated", indicator="warning",
                 modality="mri") == 2
    assert value(found, "lumbar_mri_cds_ratings_total", service="order-select", rule="acute-uncomplicated", rating="not-appropriate") == 2
    # Two orders rated in one call are two orders rated (the metric counts orders, not calls).
    assert value(found, "lumbar_mri_cds_ratings_total", service="order-sign", rule="acute-uncomplicated", rating="not-appropriate") == 2
    assert sum(v for (name, labels), v in found.items()
               if name == "lumbar_mri_cds_cards_total" and ("service", "order-sign") in labels) >= 2
    assert value(found, "lumbar_mri_cds_prefetch_keys_total", key="conditions", source="prefetch") == 3
    post(client, signer, fhir.load_request("xr-acute-uncomplicated", shift_to=date.today()))  # v2 change 6
    assert value(scrape(client), "lumbar_mri_cds_cards_total", service="order-select", rule="acute-uncomplicated",
                 indicator="warning", modality="xr") == 1


def test_fhir_fetches_and_failures(client, signer, httpserver):
    httpserver.expect_request("/fhir/Procedure").respond_with_json(fhir.searchset([]))
    httpserver.expect_request("/fhir/Condition").respond_with_data("", status=500)
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    del request["prefetch"]["procedures"], request["prefetch"]["conditions"]
    request["fhirServer"] = httpserver.url_for("/fhir")
    assert post(client, signer, request).status_code == 412
    request = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    del request["prefetch"]["procedures"]
    request["fhirServer"] = httpserver.url_for("/fhir")
    assert post(client, signer, request).status_code == 200
    found = scrape(client)
    assert value(found, "lumbar_mri_cds_fhir_requests_total") == 3
    assert value(found, "lumbar_mri_cds_fhir_fetches_total", key="procedures", result="ok") == 2
    assert value(found, "lumbar_mri_cds_fhir_fetches_total", key="conditions", result="failed") == 1
    assert value(found, "lumbar_mri_cds_prefetch_keys_total", key="procedures", source="fhir") == 1
    assert value(found, "lumbar_mri_cds_requests_total", endpoint="hook", service="order-select", status="412") == 1


def test_feedback_by_outcome(client, signer):
    cards = post(client, signer, fhir.load_request("acute-uncomplicated", shift_to=date.today())).get_json()["cards"]
    path = SELECT + "/feedback"
    card = cards[0]
    accepted = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}
    overridden = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-26T10:01:00Z"}
    assert client.post(path, json={"feedback": [accepted, overridden]}, headers=signer.headers(path)).status_code == 200
    assert client.post(path, json={"feedback": [{"outcome": "accepted"}]}, headers=signer.headers(path)).status_code == 400
    found = scrape(client)
    assert value(found, "lumbar_mri_cds_feedback_total", service="order-select", outcome="accepted") == 1
    assert value(found, "lumbar_mri_cds_feedback_total", service="order-select", outcome="overridden") == 1
    assert value(found, "lumbar_mri_cds_requests_total", endpoint="feedback", service="order-select", status="400") == 1


def test_label_values_never_come_from_the_request(client, signer):
    for name in ("x" * 50, "Patient-Testperson", "order-select2"):
        client.post(f"/cds-services/{name}", json={}, headers=signer.headers(f"/cds-services/{name}"))
    client.get("/no/such/path")
    text = client.get("/metrics").get_data(as_text=True)
    assert "Testperson" not in text and "order-select2" not in text and "xxxxx" not in text
    found = samples(text)
    assert value(found, "lumbar_mri_cds_requests_total", endpoint="hook", service="-", status="404") == 3
    assert value(found, "lumbar_mri_cds_requests_total", endpoint="-", service="-", status="404") == 1


def test_two_apps_in_one_process_count_apart(settings, client, signer):
    other = create_app(with_settings(settings, database_url=settings.database_url.replace("test.db", "other.db")))
    try:
        post(client, signer, fhir.load_request("acute-uncomplicated", shift_to=date.today()))
        hook = {"endpoint": "hook", "service": "order-select", "status": "200"}
        assert value(scrape(client), "lumbar_mri_cds_requests_total", **hook) == 1
        assert value(scrape(other.test_client()), "lumbar_mri_cds_requests_total", **hook) == 0
    finally:
        services_of(other).close()


def test_gunicorn_workers_add_up_in_multiprocess_mode(tmp_path, jwks_file, signer):
    port = free_port()
    config_file = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale file from an earlier run")
    base = f"http://127.0.0.1:{port}"
    calls = 12
    with serving(config_file, port, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}):
        assert not (directory / "counter_99999.db").exists()  # `serve` empties the directory first
        for _ in range(calls):
            # a new connection each time, so that either worker may take it
            response = requests.get(base + "/cds-services", timeout=10, headers={"Connection": "close"})
            assert response.status_code == 200
        for _ in range(3):  # whichever worker answers the scrape, it reports every worker's count
            found = samples(requests.get(base + "/metrics", timeout=10).text)
            assert value(found, "lumbar_mri_cds_requests_total", endpoint="discovery", service="-", status="200") == calls

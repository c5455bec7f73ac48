"""Prefetch gaps filled from a real FHIR server (Medplum, in memory): the answer without prefetch
equals the answer with prefetch, for every fixture patient."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date

import pytest

from service import config
from service.app import create_app
from service.app import services_of
from tests import fhir
from tests.fhirserver.runner import load_bundle
from tests.fhirserver.runner import running_fhir_server

STORIES = sorted(p.stem for p in (fhir.FIXTURES / "patients").glob("*.json"))
TOKEN = "fhir-access-token-not-for-logs"


@pytest.fixture(scope="module")
def fhir_base():
    with running_fhir_server() as base:
        for name in STORIES:
            bundle = json.loads((fhir.FIXTURES / "patients" / f"{name}.json").read_text())
            load_bundle(base, fhir.shift_dates(bundle, (date.today() - fhir.AS_OF).days))
        yield base


@pytest.fixture
def fetching_client(settings, fhir_base):
    issuer = replace(settings.issuers[0], fhir_servers=(fhir_base,))
    app = create_app(replace(settings, issuers=(issuer,)))
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

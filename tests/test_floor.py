"""benchmarks/floor.py is a fair floor: it checks the token as the service does, and parses the body."""

from __future__ import annotations

import importlib.util
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Signer
from tests.fhir import ROOT

PATH = "/cds-services/order-select"
_spec = importlib.util.spec_from_file_location("floor", ROOT / "benchmarks" / "floor.py")
floor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floor)  # type: ignore[union-attr]


@pytest.fixture
def floor_client(settings):
    return floor.create_app(settings).test_client()


def call(client, token: str, body: bytes = b'{"hook": "order-select"}'):
    return client.post(PATH, data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def test_a_valid_call_gets_no_cards(floor_client, signer: Signer) -> None:
    answer = call(floor_client, signer.token(PATH))
    assert answer.status_code == 200
    assert answer.get_json() == {"cards": []}


@pytest.mark.parametrize("overrides", [
    {"aud": "https://elsewhere.example.org" + PATH},
    {"iss": "https://not-configured.example.org"},
    {"exp": int(time.time()) - 3600},
    {"jti": None},
], ids=["audience", "issuer", "expired", "no-jti"])
def test_a_bad_token_is_refused(floor_client, signer: Signer, overrides: dict) -> None:
    assert call(floor_client, signer.token(PATH, **overrides)).status_code == 401


def test_a_token_signed_by_another_key_is_refused(floor_client) -> None:
    rogue = Signer(key=ec.generate_private_key(ec.SECP384R1()))
    assert call(floor_client, rogue.token(PATH)).status_code == 401


def test_the_body_is_parsed(floor_client, signer: Signer) -> None:
    assert call(floor_client, signer.token(PATH), b"{not json").status_code == 400

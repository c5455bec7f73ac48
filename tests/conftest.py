"""Shared fixtures: settings, app, client (a temporary SQLite file per test), runner, and a signer
that makes real ES384 tokens (service/security/signer.py) for a test EHR issuer whose JWKS is a file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient

from service import config
from service.app import create_app
from service.app import services_of
from service.security import signer as signing

ISSUER = "https://ehr.example.test"
BASE_URL = "http://localhost"  # Flask's test client calls http://localhost/...
KID = "test-key-1"


@dataclass(frozen=True)
class Signer(signing.Signer):
    """Signs tokens as the test EHR would, for paths under BASE_URL (the package's signer)."""

    iss: str = ISSUER
    kid: str = KID

    def token(self, path: str, **overrides: Any) -> str:
        return super().token(BASE_URL + path, **overrides)

    def headers(self, path: str, **overrides: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(path, **overrides)}"}


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def jwks_file(tmp_path_factory: pytest.TempPathFactory, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path_factory.mktemp("keys") / "jwks.json"
    path.write_text(json.dumps(signing.public_jwks(ec_key, KID)))
    return path


@pytest.fixture
def signer(ec_key: ec.EllipticCurvePrivateKey) -> Signer:
    return Signer(key=ec_key)


@pytest.fixture
def settings(tmp_path: Path, jwks_file: Path) -> config.Settings:
    """Production profile, one test EHR issuer, a fresh SQLite file."""
    return config.Settings(
        profile=config.Profile.PRODUCTION,
        public_base_url=BASE_URL,
        database_url=f"sqlite:///{tmp_path / 'test.db'}",
        issuers=(config.IssuerSettings(iss=ISSUER, jwks_file=jwks_file, fhir_servers=("http://127.0.0.1:9/fhir",)),),
        cors=config.CorsSettings(allow_origins=("https://sandbox.cds-hooks.org",)),
    )


@pytest.fixture
def app(settings: config.Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    services_of(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def with_settings(settings: config.Settings, **changes: Any) -> config.Settings:
    """A copy of the settings with some fields changed."""
    return replace(settings, **changes)


def trusting_fhir_server(settings: config.Settings, base: str, **changes: Any) -> config.Settings:
    """A copy of the settings whose test issuer may send its calls' tokens to this FHIR base (and
    with other fields changed)."""
    issuer = replace(settings.issuers[0], fhir_servers=(base,))
    return replace(settings, issuers=(issuer,), **changes)

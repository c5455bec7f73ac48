"""Keys made in the test session, JWKS served from files or a real local HTTP server, token builders."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa

from service.config import IssuerSettings
from service.config import Profile
from service.config import Settings
from service.security.jwt import TokenVerifier
from service.security.replay import ReplayCache
from service.store import schema

ISS = "https://ehr.example.org"
ISS_TENANTS = "https://tenanted.example.org"
BASE = "https://cds.example.org"
AUDIENCE = BASE + "/cds-services/lumbar-mri-order-select"
EC_KID = "ec-p384-1"
EC256_KID = "ec-p256-1"
RSA_KID = "rsa-2048-1"
REMOVE = object()  # a claim or header value meaning "leave this member out"


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def ec256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rogue_key() -> ec.EllipticCurvePrivateKey:
    """A key nobody configured: what an attacker signs with."""
    return ec.generate_private_key(ec.SECP384R1())


def public_jwk(private_key, kid: str, **extra) -> dict:
    """The public JWK of a private key, as an EHR publishes it."""
    algorithm = pyjwt.algorithms.ECAlgorithm if isinstance(private_key, ec.EllipticCurvePrivateKey) else pyjwt.algorithms.RSAAlgorithm
    jwk = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **extra}


@pytest.fixture(scope="session")
def jwks(ec_key, ec256_key, rsa_key) -> dict:
    return {"keys": [public_jwk(ec_key, EC_KID), public_jwk(ec256_key, EC256_KID), public_jwk(rsa_key, RSA_KID)]}


@pytest.fixture
def jwks_file(tmp_path, jwks) -> Path:
    path = tmp_path / "ehr-jwks.json"
    path.write_text(json.dumps(jwks))
    return path


def make_settings(*issuers: IssuerSettings, profile: Profile = Profile.PRODUCTION, database_url: str = "sqlite://") -> Settings:
    return Settings(profile=profile, public_base_url=BASE, database_url=database_url, issuers=issuers)


@pytest.fixture
def engine(tmp_path):
    engine = schema.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    schema.create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def file_settings(jwks_file) -> Settings:
    """Two issuers whose keys come from a file; the second checks tenants."""
    return make_settings(
        IssuerSettings(iss=ISS, jwks_file=jwks_file, fhir_servers=("https://ehr.example.org/fhir",)),
        IssuerSettings(iss=ISS_TENANTS, jwks_file=jwks_file, tenants=("t1", "t2")),
    )


@pytest.fixture
def verifier(file_settings, engine):
    verifier = TokenVerifier(file_settings, ReplayCache(engine))
    yield verifier
    verifier.close()


@pytest.fixture
def sign(ec_key, ec256_key, rsa_key):
    """sign(alg="ES384", header={...}, claims={...}) -> a compact JWT; REMOVE drops a member.

    Claim values may be callables of `now` (epoch seconds), so times are relative to signing.
    """

    def sign(alg: str = "ES384", *, header: dict | None = None, claims: dict | None = None, key=None) -> str:
        now = int(time.time())
        body = {"iss": ISS, "aud": AUDIENCE, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        for name, value in (claims or {}).items():
            body[name] = value(now) if callable(value) else value
        body = {k: v for k, v in body.items() if v is not REMOVE}
        default_key, kid = {"ES256": (ec256_key, EC256_KID), "ES384": (ec_key, EC_KID)}.get(alg, (rsa_key, RSA_KID))
        head = {"typ": "JWT", "kid": kid, **(header or {})}
        head = {k: v for k, v in head.items() if v is not REMOVE}
        key = default_key if key is None else key
        # PyJWS, not PyJWT: PyJWT.encode would refuse some of the malformed claims tests need.
        return pyjwt.PyJWS().encode(json.dumps(body).encode(), key, algorithm=alg, headers=head)

    return sign


def b64url(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

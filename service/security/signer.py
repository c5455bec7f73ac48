"""Signing CDS Hooks bearer tokens as an EHR does: ES384, a `kid`, a fresh `jti` per call.

``Signer`` is what `lumbar-mri-cds call`, the tests and the benchmarks sign with. The development
profile's *local issuer* (``LOCAL_ISSUER``) is a key pair created on first use in the data directory
(``ensure_local_key``): its private half never leaves that directory, its public half is the
``jwks_file`` the development profile trusts. The production profile never trusts it
(``config._validate``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service import errors
from service.config import LOCAL_ISSUER
from service.config import LOCAL_JWKS_FILE
from service.config import Settings

LOCAL_KID = "local-cli-1"
LOCAL_KEY_FILE = "local-issuer.key.pem"          # private key (0600), beside LOCAL_JWKS_FILE
TOKEN_LIFETIME_SECONDS = 300                     # what the spec asks of EHRs (5 minutes)


@dataclass(frozen=True)
class Signer:
    """Signs ES384 tokens for one issuer and key."""

    key: ec.EllipticCurvePrivateKey
    iss: str
    kid: str

    def token(self, audience: str, **overrides: Any) -> str:
        """A token for `audience` (the exact URL called); `overrides` change or (None) drop claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.iss, "aud": audience, "exp": now + TOKEN_LIFETIME_SECONDS, "iat": now, "jti": str(uuid.uuid4()),
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return pyjwt.encode(claims, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"})

    def headers(self, audience: str, **overrides: Any) -> dict[str, str]:
        """The Authorization header of one call to `audience`."""
        return {"Authorization": f"Bearer {self.token(audience, **overrides)}"}

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set an EHR would publish for this key."""
        return public_jwks(self.key, self.kid)


def public_jwks(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    """The JWK Set holding the public half of `key` (never `d`)."""
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": "ES384", "use": "sig"})
    return {"keys": [jwk]}


def ensure_local_key(data_dir: Path) -> Signer:
    """The local issuer's signer, its key pair created in `data_dir` on first use.

    Safe when several processes start at once: the private key is written to a temporary file and
    linked into place, so exactly one key wins and every process reads that one.
    """
    key_path = data_dir / LOCAL_KEY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if not key_path.exists():
            _create_key(key_path)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
            raise errors.ConfigError(f"{key_path}: not a P-384 EC private key; delete it to create a new one")
        _write_if_changed(data_dir / LOCAL_JWKS_FILE, json.dumps(public_jwks(key, LOCAL_KID), indent=2) + "\n")
    except OSError as exc:
        raise errors.ConfigError(f"local issuer key in {data_dir}: {exc.strerror or exc}") from None
    except ValueError as exc:  # an unreadable PEM
        raise errors.ConfigError(f"{key_path}: not a usable private key ({exc}); delete it to create a new one") from None
    return Signer(key=key, iss=LOCAL_ISSUER, kid=LOCAL_KID)


def _create_key(key_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp = tempfile.mkstemp(dir=key_path.parent, prefix=".local-issuer-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, key_path)  # fails if another process got there first: keep theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".local-jwks-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def local_signer(settings: Settings) -> Signer | None:
    """The local issuer's signer when these settings trust it (development), its key created if
    need be; None otherwise."""
    issuer = settings.issuer(LOCAL_ISSUER)
    if issuer is None or issuer.jwks_file is None:
        return None
    return ensure_local_key(issuer.jwks_file.parent)

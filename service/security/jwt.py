"""Verifying the bearer token every CDS Hooks call carries (CDS Hooks 2.0, "Trusting CDS Clients").

``TokenVerifier.verify`` accepts a token only when all of these hold, in this order (cheap checks
first; nothing is fetched for a token whose issuer is not configured):

1. ``Authorization: Bearer <JWT>``: a single token after the (case-insensitive) scheme.
2. The header parses and names ``alg`` and ``kid``. ``alg`` is one of ``ALGORITHMS`` (asymmetric
   only: ``none`` and HMAC are refused, so a public key can never be used as an HMAC secret).
3. The (still unverified) ``iss`` is a configured issuer.
4. A ``jku`` in the header equals that issuer's configured ``jwks_url``; any other ``jku`` is refused
   and never fetched. An issuer whose keys come from a ``jwks_file`` ignores ``jku``.
5. The key is that issuer's key ``kid`` (``keys.KeyStore``), of a type that fits ``alg``.
6. The signature verifies (PyJWT), RSA keys have at least 2048 bits, and the claims hold:
   ``iss`` as configured; ``aud`` equals the URL called (a string, or an array holding it);
   ``exp`` present and not past; ``iat`` present and not in the future; ``nbf``, if present, not in
   the future; ``jti`` a non-empty string. Clock checks allow ``LEEWAY_SECONDS`` of skew.
7. ``exp`` is at most ``MAX_LIFETIME_SECONDS`` away (the spec asks for 5 minutes; a longer-lived
   token would have to be remembered longer and is worth more to a thief).
8. ``tenant`` is one of the issuer's ``tenants`` when it lists any.
9. The (iss, jti) pair was not seen before (``replay.ReplayCache``); it is remembered until
   ``exp + LEEWAY_SECONDS``. This comes last so a token failing another check does not use up its jti.

Any failure raises ``errors.NotAuthenticated`` with a reason for the log. Reasons name issuers, key ids
and claims, never the token, which is a credential for as long as it lives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec

from service import errors
from service.config import IssuerSettings
from service.config import Profile
from service.config import Settings
from service.security import keys as keys_mod
from service.security.replay import ReplayStore

ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
LEEWAY_SECONDS = 30          # clock skew allowed between the EHR and this service
MAX_LIFETIME_SECONDS = 3600  # exp may be at most this far in the future
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]  # `sub` is not required by CDS Hooks


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    iss: str                 # the configured issuer that signed the token
    jti: str                 # the token's id (already remembered against replay)
    exp: int                 # expiry, seconds since the epoch
    tenant: str | None       # the token's `tenant` claim, if any
    issuer: IssuerSettings   # that issuer's configuration (FHIR servers its tokens may go to)


class TokenVerifier:
    """Checks bearer tokens against the configured issuers; one per app."""

    def __init__(self, settings: Settings, replay: ReplayStore, *, key_store: keys_mod.KeyStore | None = None) -> None:
        self._settings = settings
        self._replay = replay
        self._keys = key_store or keys_mod.KeyStore(
            settings.issuers, refuse_published_keys=settings.profile is Profile.PRODUCTION
        )
        _warm_up()

    def verify(self, authorization: str | None, audience: str) -> Claims:
        """The claims of a valid token for `audience`; raises NotAuthenticated with the reason."""
        token = _bearer_token(authorization)
        header, unverified = _unverified(token)
        issuer = self._issuer_of(unverified)
        jku = header.get("jku")
        # An issuer whose keys are pinned in a file ignores `jku`: the key is chosen by `kid` among
        # the pinned ones, so where the token says keys live cannot matter (nothing is fetched).
        if jku is not None and issuer.jwks_url is not None and jku != issuer.jwks_url:
            raise errors.NotAuthenticated(
                f"issuer {issuer.iss}: jku {keys_mod.loggable(jku)} is not its configured jwks_url; not fetched"
            )
        key = self._keys.key(issuer, header["kid"], header["alg"])
        payload = _decode(token, key, header["alg"], issuer, audience)
        self._check_lifetime(payload)
        tenant = _tenant(payload, issuer)
        if not self._replay.check_and_remember(issuer.iss, payload["jti"], int(payload["exp"]) + LEEWAY_SECONDS):
            raise errors.NotAuthenticated(f"issuer {issuer.iss}: jti {keys_mod.loggable(payload['jti'])} replayed")
        return Claims(iss=issuer.iss, jti=payload["jti"], exp=int(payload["exp"]), tenant=tenant, issuer=issuer)

    def close(self) -> None:
        """Release the key store's HTTP session and the replay cache's connections."""
        self._keys.close()
        self._replay.close()

    def _issuer_of(self, unverified: dict[str, Any]) -> IssuerSettings:
        iss = unverified.get("iss")
        issuer = self._settings.issuer(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise errors.NotAuthenticated(f"iss {keys_mod.loggable(iss)} is not a configured issuer")
        return issuer

    def _check_lifetime(self, payload: dict[str, Any]) -> None:
        if int(payload["exp"]) > time.time() + MAX_LIFETIME_SECONDS + LEEWAY_SECONDS:
            raise errors.NotAuthenticated(f"exp is more than {MAX_LIFETIME_SECONDS} s in the future")


def _warm_up() -> None:
    """Sign and verify a throwaway token, so the first EHR call does not pay for the crypto
    library's lazy imports (cryptography loads its OpenSSL backend on the first ECDSA use)."""
    key = ec.generate_private_key(ec.SECP256R1())
    token = pyjwt.encode({"warm-up": True}, key, algorithm="ES256")
    pyjwt.decode(token, key.public_key(), algorithms=["ES256"])


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise errors.NotAuthenticated("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        # Name the scheme only when it looks like one: a bare token here would otherwise be logged.
        shown = repr(scheme) if scheme.isalpha() and len(scheme) <= 12 else "(unrecognised)"
        raise errors.NotAuthenticated(f"Authorization scheme {shown} is not Bearer")
    token = token.strip()
    if not token or " " in token:
        raise errors.NotAuthenticated("Authorization: Bearer is not followed by exactly one token")
    return token


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The token's header (with an allowed `alg` and a `kid`) and payload, not yet verified: they
    only choose the issuer and key. One decoding for both; ``_decode`` then checks the signature
    and the claims."""
    try:
        decoded = pyjwt.decode_complete(token, options={"verify_signature": False})
    except pyjwt.PyJWTError as exc:
        raise errors.NotAuthenticated(f"token unreadable: {exc}") from None
    header = decoded["header"]
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise errors.NotAuthenticated(f"alg {keys_mod.loggable(alg)} is not allowed (asymmetric only)")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise errors.NotAuthenticated("token header has no kid")
    return header, decoded["payload"]


def _decode(token: str, key: pyjwt.PyJWK, alg: str, issuer: IssuerSettings, audience: str) -> dict[str, Any]:
    try:
        payload = pyjwt.decode(
            token,
            key,
            algorithms=[alg],  # already checked against ALGORITHMS, and bound to the key's type
            audience=audience,
            issuer=issuer.iss,
            leeway=LEEWAY_SECONDS,
            options={
                "require": REQUIRED_CLAIMS,
                "verify_signature": True,
                "verify_exp": True,
                "verify_iat": True,
                "verify_nbf": True,
                "verify_aud": True,
                "verify_iss": True,
                "strict_aud": False,  # `aud` may be an array holding the URL
                "enforce_minimum_key_length": True,
            },
        )
    except pyjwt.InvalidAudienceError as exc:
        # Say what was expected: the fix is nearly always public_base_url, or the URL the EHR calls.
        got = pyjwt.decode(token, options={"verify_signature": False}).get("aud")
        raise errors.NotAuthenticated(
            f"issuer {issuer.iss}: {type(exc).__name__}: {exc}: expected {audience!r} "
            f"(public_base_url + the path called), the token has {keys_mod.loggable(got)}"
        ) from None
    except pyjwt.PyJWTError as exc:
        raise errors.NotAuthenticated(f"issuer {issuer.iss}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload["jti"], str) or not payload["jti"]:
        raise errors.NotAuthenticated(f"issuer {issuer.iss}: jti is not a non-empty string")
    return payload


def _tenant(payload: dict[str, Any], issuer: IssuerSettings) -> str | None:
    tenant = payload.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise errors.NotAuthenticated(f"issuer {issuer.iss}: tenant is not a string")
    if issuer.tenants and tenant not in issuer.tenants:
        raise errors.NotAuthenticated(f"issuer {issuer.iss}: tenant {keys_mod.loggable(tenant)} is not allowed")
    return tenant

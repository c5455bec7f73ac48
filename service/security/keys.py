"""JWKS per issuer: the public keys each configured EHR signs its tokens with.

An issuer's keys come from exactly one place, both named in the configuration:

- ``jwks_file``: read once, at start-up; a missing or unusable file is a ``ConfigError`` naming it.
- ``jwks_url``: fetched on first use with the store's own ``requests.Session`` (2 s timeout, no
  redirects, at most 1 MB), then cached. An unknown ``kid`` triggers a refetch at most once a minute
  per issuer, so a stream of made-up ``kid`` values cannot turn into a stream of fetches; the set is
  also refetched when it is an hour old, and kept (for a day at most) if that refetch fails. A URL
  that cannot be reached makes the token fail (401), after 2 s at most, never a hang.

PyJWT's ``PyJWKClient`` is not used: it fetches with urllib (no shared session), refetches on every
unknown ``kid`` with no rate limit, and has no overall deadline on a slowly dripping answer.

The CDS Hooks sandbox publishes its private key, so in the production profile a key equal to the
sandbox's is refused wherever it appears, whatever ``iss`` it is configured under.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt as pyjwt
import requests
import urllib3

from service import errors
from service.config import IssuerSettings

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 2.0    # connect, read, and the whole download together
MAX_JWKS_BYTES = 1_000_000     # a JWKS is a few kB; anything larger is not one
REFRESH_INTERVAL_SECONDS = 60  # unknown kid: refetch at most this often per issuer
RETRY_INTERVAL_SECONDS = 5     # nothing cached and the last fetch failed: retry this often
MAX_AGE_SECONDS = 3600         # refetch a cached set this old (keys are rotated and revoked)
MAX_STALE_SECONDS = 86_400     # if that refetch fails, keep using the old set this long at most

# The public half of the CDS Hooks sandbox's ES384 key (kid 44823f3d-0b01-4a6c-a80e-b9d3e8a7226f,
# published with its private half in github.com/cds-hooks/sandbox): never trusted in production.
PUBLISHED_PRIVATE_KEYS = frozenset({
    ("EC", "P-384", "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB"),
})

# Families of JWS algorithms and the key type each needs.
_KEY_TYPE = {"ES": "EC", "RS": "RSA", "PS": "RSA"}


class KeyUnavailable(errors.NotAuthenticated):
    """No usable key for this token: unknown kid, unreachable JWKS, or a key of the wrong kind."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySet:
    keys: Mapping[str, Mapping[str, Any]]   # kid -> JWK (public members only, as published)
    fetched_at: float                       # time.monotonic() of the read

    @property
    def kids(self) -> list[str]:
        return sorted(self.keys)


class KeyStore:
    """The signing keys of every configured issuer; one per app (it owns an HTTP session)."""

    def __init__(
        self,
        issuers: Iterable[IssuerSettings],
        *,
        refuse_published_keys: bool = False,
        timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers = {issuer.iss: issuer for issuer in issuers}
        self._refuse_published = refuse_published_keys
        self._timeout = timeout_seconds
        self._clock = clock
        self._session = requests.Session()
        self._lock = threading.Lock()                 # guards the two dicts below
        self._sets: dict[str, KeySet] = {}            # iss -> last good set
        self._attempted: dict[str, float] = {}        # iss -> monotonic time of the last fetch
        self._fetch_locks = {iss: threading.Lock() for iss in self._issuers}
        # (iss, kid, alg) -> (the JWK as held in its KeySet, that key bound to alg): building a PyJWK
        # parses and checks the public key, work a token for the same key need not repeat. An entry
        # counts only while its JWK is the one the current set holds (a refresh replaces them).
        self._bound: dict[tuple[str, str, str], tuple[Mapping[str, Any], pyjwt.PyJWK]] = {}
        # iss -> keys shipped for an issuer that also has a jwks_url (the development profile's
        # sandbox issuer): used first, so its tokens verify offline; the URL only for another kid.
        self._shipped: dict[str, KeySet] = {}
        for issuer in self._issuers.values():
            if issuer.jwks_file is None:
                continue
            target = self._shipped if issuer.jwks_url is not None else self._sets
            target[issuer.iss] = self._read_file(issuer.jwks_file)

    def key(self, issuer: IssuerSettings, kid: str, alg: str) -> pyjwt.PyJWK:
        """The key `kid` of this issuer, bound to `alg`; raises KeyUnavailable."""
        jwk = self._find(issuer, kid)
        if jwk is None:
            raise KeyUnavailable(f"issuer {issuer.iss}: no key with kid {loggable(kid)}")
        cached = self._bound.get((issuer.iss, kid, alg))
        if cached is not None and cached[0] is jwk:
            return cached[1]
        bound = bind(jwk, alg, where=f"issuer {issuer.iss}, kid {loggable(kid)}")
        self._bound[(issuer.iss, kid, alg)] = (jwk, bound)  # kid is in the set, alg one of 9: bounded
        return bound

    def shipped_set(self, issuer: IssuerSettings) -> KeySet | None:
        """The keys shipped for an issuer that also has a jwks_url; for check-config."""
        return self._shipped.get(issuer.iss)

    def key_set(self, issuer: IssuerSettings, *, fetch: bool = False) -> KeySet | None:
        """The cached set of this issuer (fetched first if `fetch`); for check-config."""
        if fetch and issuer.jwks_url is not None:
            self._refresh(issuer, force=True)
        with self._lock:
            return self._sets.get(issuer.iss)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._session.close()

    def _find(self, issuer: IssuerSettings, kid: str) -> Mapping[str, Any] | None:
        with self._lock:
            current = self._sets.get(issuer.iss)
        if issuer.jwks_url is None:
            return current.keys.get(kid) if current else None
        shipped = self._shipped.get(issuer.iss)
        if shipped is not None and kid in shipped.keys:
            return shipped.keys[kid]
        now = self._clock()
        if current is None or now - current.fetched_at > MAX_AGE_SECONDS or kid not in current.keys:
            current = self._refresh(issuer)
        if current is None:
            raise KeyUnavailable(f"issuer {issuer.iss}: JWKS {issuer.jwks_url} could not be fetched")
        if now - current.fetched_at > MAX_STALE_SECONDS:
            raise KeyUnavailable(f"issuer {issuer.iss}: JWKS {issuer.jwks_url} not refreshed for a day")
        return current.keys.get(kid)

    def _refresh(self, issuer: IssuerSettings, *, force: bool = False) -> KeySet | None:
        """Fetch the issuer's JWKS unless it was tried too recently; the newest set held, if any."""
        with self._fetch_locks[issuer.iss]:  # one fetch per issuer at a time; others wait for it
            with self._lock:
                cached = self._sets.get(issuer.iss)
                last = self._attempted.get(issuer.iss)
                interval = REFRESH_INTERVAL_SECONDS if cached else RETRY_INTERVAL_SECONDS
                if not force and last is not None and self._clock() - last < interval:
                    return cached  # fetched (or tried) moments ago, perhaps by another thread
                self._attempted[issuer.iss] = self._clock()
            try:
                fresh = self._fetch(str(issuer.jwks_url))
            except KeyUnavailable as exc:
                log.warning("issuer %s: %s", issuer.iss, exc.message)
                if force:
                    raise
                with self._lock:
                    return self._sets.get(issuer.iss)
            with self._lock:
                self._sets[issuer.iss] = fresh
            log.info("issuer %s: JWKS fetched, kids %s", issuer.iss, fresh.kids)
            return fresh

    def _fetch(self, url: str) -> KeySet:
        deadline = time.monotonic() + self._timeout
        try:
            with self._session.get(
                url, timeout=self._timeout, stream=True, allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise KeyUnavailable(f"JWKS {url} answered HTTP {response.status_code}")
                body = bytearray()
                # read1 returns what has arrived, so the deadline is checked while data trickles in
                # (iter_content would wait for whole chunks); each read is bounded by the timeout.
                while chunk := response.raw.read1(16_384, decode_content=True):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise KeyUnavailable(f"JWKS {url} is larger than {MAX_JWKS_BYTES} bytes")
                    if time.monotonic() > deadline:  # a read timeout alone allows a slow drip
                        raise KeyUnavailable(f"JWKS {url} took longer than {self._timeout} s")
        # Reading `raw` directly, urllib3's errors (a read timeout mid-body) are not wrapped by requests.
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise KeyUnavailable(f"JWKS {url} could not be fetched: {type(exc).__name__}") from exc
        try:
            return self._parse(json.loads(body), where=f"JWKS {url}")
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise KeyUnavailable(f"JWKS {url} is not a usable JWK Set: {exc}") from exc

    def _read_file(self, path: Path) -> KeySet:
        try:
            return self._parse(json.loads(path.read_bytes()), where=f"jwks_file {path}", strict=True)
        except FileNotFoundError:
            raise errors.ConfigError(f"jwks_file {path}: file not found") from None
        except OSError as exc:
            raise errors.ConfigError(f"jwks_file {path}: cannot be read: {exc.strerror}") from None
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            raise errors.ConfigError(f"jwks_file {path}: not a usable JWK Set: {exc}") from None

    def _parse(self, document: Any, *, where: str, strict: bool = False) -> KeySet:
        """The usable signing keys of a JWK Set; ValueError when there are none.

        Keys for other uses (encryption, other key types) are skipped with a warning. A key that is
        broken, private, or the sandbox's in production makes a file (the operator's own, `strict`)
        unusable; in a set fetched from an EHR it is skipped.
        """
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError('expected a JSON object with a "keys" array')
        keys: dict[str, Mapping[str, Any]] = {}
        for n, jwk in enumerate(document["keys"]):
            if not _signing_key(jwk):
                log.warning("%s: keys[%d] skipped: not an EC or RSA signing key with a kid", where, n)
                continue
            problem = self._refused(jwk)
            if problem and strict:
                raise ValueError(f"keys[{n}] (kid {loggable(jwk['kid'])}): {problem}")
            if problem:
                log.warning("%s: keys[%d] skipped: %s", where, n, problem)
                continue
            keys[jwk["kid"]] = jwk
        if not keys:
            raise ValueError("no usable signing key (an EC or RSA public key with a kid)")
        return KeySet(keys=keys, fetched_at=self._clock())

    def _refused(self, jwk: Mapping[str, Any]) -> str | None:
        if "d" in jwk:
            return "it holds a private key, which must never be given to this service"
        if self._refuse_published and _published(jwk):
            return "it is the CDS Hooks sandbox key, whose private half is public (production profile)"
        try:
            pyjwt.PyJWK(dict(jwk))
        except pyjwt.PyJWTError as exc:
            return f"not a valid key: {exc}"
        return None


def bind(jwk: Mapping[str, Any], alg: str, *, where: str) -> pyjwt.PyJWK:
    """The key bound to algorithm `alg`, refusing a key of another type, curve or declared alg."""
    if _KEY_TYPE.get(alg[:2]) != jwk.get("kty"):
        raise KeyUnavailable(f"{where}: alg {alg} does not fit a {jwk.get('kty')} key")
    if jwk.get("alg") not in (None, alg):
        raise KeyUnavailable(f"{where}: the key is for {jwk.get('alg')}, the token uses {alg}")
    try:
        return pyjwt.PyJWK(dict(jwk), algorithm=alg)  # PyJWT checks an EC key's curve when verifying
    except pyjwt.PyJWTError as exc:
        raise KeyUnavailable(f"{where}: the key does not fit alg {alg}: {exc}") from exc


def _signing_key(jwk: Any) -> bool:
    return (
        isinstance(jwk, dict)
        and isinstance(jwk.get("kid"), str)
        and bool(jwk["kid"])
        and jwk.get("kty") in ("EC", "RSA")
        and jwk.get("use", "sig") == "sig"
    )


def _published(jwk: Mapping[str, Any]) -> bool:
    return (jwk.get("kty"), jwk.get("crv"), jwk.get("x")) in PUBLISHED_PRIVATE_KEYS


def loggable(value: Any) -> str:
    """A token-supplied value, safe and short enough for a log line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

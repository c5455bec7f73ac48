"""TokenVerifier: exactly the tokens it should accept, and nothing else."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_httpserver import HTTPServer

from service import errors
from service.config import IssuerSettings
from service.config import Profile
from service.security import jwt as jwt_check
from service.security import keys
from service.security.replay import ReplayCache
from service.store import schema

from .conftest import AUDIENCE
from .conftest import EC_KID
from .conftest import ISS
from .conftest import ISS_TENANTS
from .conftest import REMOVE
from .conftest import RSA_KID
from .conftest import b64url
from .conftest import make_settings
from .conftest import public_jwk

# (alg, header changes, claim changes, the reason logged; None = accepted). Times are relative to now.
CASES = {
    "es384": ("ES384", {}, {}, None),
    "rs384": ("RS384", {}, {}, None),
    "es256": ("ES256", {}, {}, None),
    "es256-naming-the-p384-key": ("ES256", {"kid": EC_KID}, {}, "InvalidKeyError"),
    "ps256": ("PS256", {}, {}, None),
    "aud-array-with-url": ("ES384", {}, {"aud": ["https://other.example", AUDIENCE]}, None),
    "aud-array-without-url": ("ES384", {}, {"aud": ["https://other.example"]}, "InvalidAudienceError"),
    "aud-wrong": ("ES384", {}, {"aud": "https://cds.example.org/cds-services/other"}, "InvalidAudienceError"),
    "aud-trailing-slash": ("ES384", {}, {"aud": AUDIENCE + "/"}, "InvalidAudienceError"),
    "aud-base-only": ("ES384", {}, {"aud": "https://cds.example.org"}, "InvalidAudienceError"),
    "expired": ("ES384", {}, {"exp": lambda now: now - 60}, "ExpiredSignatureError"),
    "expired-within-leeway": ("ES384", {}, {"exp": lambda now: now - 10}, None),
    "iat-future": ("ES384", {}, {"iat": lambda now: now + 120}, "ImmatureSignatureError"),
    "iat-future-within-leeway": ("ES384", {}, {"iat": lambda now: now + 20}, None),
    "nbf-future": ("ES384", {}, {"nbf": lambda now: now + 120}, "ImmatureSignatureError"),
    "iat-not-a-number": ("ES384", {}, {"iat": "yesterday"}, "InvalidIssuedAtError"),
    "lifetime-too-long": ("ES384", {}, {"exp": lambda now: now + 2 * 3600}, "in the future"),
    "iss-unknown": ("ES384", {}, {"iss": "https://evil.example"}, "not a configured issuer"),
    "iss-not-a-string": ("ES384", {}, {"iss": ["https://ehr.example.org"]}, "not a configured issuer"),
    "missing-iss": ("ES384", {}, {"iss": REMOVE}, "not a configured issuer"),
    "missing-exp": ("ES384", {}, {"exp": REMOVE}, "MissingRequiredClaimError"),
    "missing-iat": ("ES384", {}, {"iat": REMOVE}, "MissingRequiredClaimError"),
    "missing-jti": ("ES384", {}, {"jti": REMOVE}, "MissingRequiredClaimError"),
    "missing-aud": ("ES384", {}, {"aud": REMOVE}, "MissingRequiredClaimError"),
    "jti-empty": ("ES384", {}, {"jti": ""}, "jti"),
    "jti-number": ("ES384", {}, {"jti": 12345}, "InvalidJTIError"),
    "no-sub-needed": ("ES384", {}, {"sub": REMOVE}, None),
    "kid-unknown": ("ES384", {"kid": "nope"}, {}, "no key with kid"),
    "kid-missing": ("ES384", {"kid": REMOVE}, {}, "no kid"),
    "kid-of-rsa-key-with-es384": ("ES384", {"kid": RSA_KID}, {}, "does not fit"),
    "kid-of-ec-key-with-rs384": ("RS384", {"kid": EC_KID}, {}, "does not fit"),
    # keys pinned in a file: the token's jku is ignored (nothing is fetched, the kid picks a pinned key)
    "jku-on-a-file-issuer-ignored": ("ES384", {"jku": "https://ehr.example.org/jwks.json"}, {}, None),
    "crit-unknown": ("ES384", {"crit": ["exp-ext"], "exp-ext": 1}, {}, "Unsupported critical extension"),
    "tenant-ignored-when-not-configured": ("ES384", {}, {"tenant": "anything"}, None),
    "tenant-allowed": ("ES384", {}, {"iss": ISS_TENANTS, "tenant": "t2"}, None),
    "tenant-not-allowed": ("ES384", {}, {"iss": ISS_TENANTS, "tenant": "t3"}, "tenant 't3' is not allowed"),
    "tenant-missing": ("ES384", {}, {"iss": ISS_TENANTS}, "tenant None is not allowed"),
    "tenant-not-a-string": ("ES384", {}, {"iss": ISS_TENANTS, "tenant": ["t1"]}, "tenant is not a string"),
}


@pytest.mark.parametrize(("alg", "header", "claims", "reason"), CASES.values(), ids=CASES.keys())
def test_verify(verifier, sign, alg, header, claims, reason):
    token = sign(alg, header=header, claims=claims)
    if reason is None:
        result = verifier.verify(f"Bearer {token}", AUDIENCE)
        assert result.issuer.iss == result.iss
        assert result.jti
    else:
        with pytest.raises(errors.NotAuthenticated, match=reason) as caught:
            verifier.verify(f"Bearer {token}", AUDIENCE)
        assert token not in caught.value.message


def test_valid_claims(verifier, sign):
    token = sign(claims={"iss": ISS_TENANTS, "tenant": "t1", "jti": "abc-1", "exp": lambda now: now + 200})
    claims = verifier.verify("Bearer " + token, AUDIENCE)
    assert (claims.iss, claims.jti, claims.tenant) == (ISS_TENANTS, "abc-1", "t1")
    assert claims.exp > time.time() + 100
    assert claims.issuer.tenants == ("t1", "t2")


def _hs256(header: dict, claims: dict, secret: bytes) -> str:
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def _claims() -> dict:
    now = int(time.time())
    return {"iss": ISS, "aud": AUDIENCE, "exp": now + 300, "iat": now, "jti": "x-1"}


def test_hs256_signed_with_the_public_key_is_refused(verifier, ec_key, rsa_key):
    for key, kid in ((ec_key, EC_KID), (rsa_key, RSA_KID)):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        token = _hs256({"alg": "HS256", "typ": "JWT", "kid": kid}, _claims(), pem)
        with pytest.raises(errors.NotAuthenticated, match="alg 'HS256' is not allowed"):
            verifier.verify("Bearer " + token, AUDIENCE)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(verifier, alg):
    token = f"{b64url({'alg': alg, 'typ': 'JWT', 'kid': EC_KID})}.{b64url(_claims())}."
    with pytest.raises(errors.NotAuthenticated, match="is not allowed"):
        verifier.verify("Bearer " + token, AUDIENCE)


def test_signature_by_another_key_is_refused(verifier, sign, rogue_key):
    token = sign("ES384", key=rogue_key)  # kid of the configured key, signed by another
    with pytest.raises(errors.NotAuthenticated, match="InvalidSignatureError"):
        verifier.verify("Bearer " + token, AUDIENCE)


def test_tampered_payload_is_refused(verifier, sign):
    head, _, sig = sign().split(".")
    forged = f"{head}.{b64url({**_claims(), 'jti': 'other'})}.{sig}"
    with pytest.raises(errors.NotAuthenticated, match="InvalidSignatureError"):
        verifier.verify("Bearer " + forged, AUDIENCE)


AUTHORIZATION = {
    "missing": (None, "no Authorization header"),
    "empty": ("", "no Authorization header"),
    "basic": ("Basic dXNlcjpwYXNz", "scheme 'Basic' is not Bearer"),
    "bare-token": ("eyJhbGciOiJFUzM4NCJ9.e30.c2ln", "(unrecognised) is not Bearer"),
    "bearer-nothing": ("Bearer ", "exactly one token"),
    "bearer-two-tokens": ("Bearer a.b.c d.e.f", "exactly one token"),
    "garbage": ("Bearer not-a-jwt", "token unreadable"),
    "garbage-segments": ("Bearer a.b.c", "unreadable: Invalid header"),
    "header-not-json": (f"Bearer {b64url(b'[1,2')}.{b64url(b'{}')}.c2ln", "unreadable: Invalid header"),
    "payload-not-json": (f"Bearer {b64url({'alg': 'ES384', 'kid': EC_KID})}.{b64url(b'nope')}.c2ln", "unreadable: Invalid payload"),
}


@pytest.mark.parametrize(("authorization", "reason"), AUTHORIZATION.values(), ids=AUTHORIZATION.keys())
def test_bad_authorization_header(verifier, authorization, reason):
    with pytest.raises(errors.NotAuthenticated, match=reason.replace("(", r"\(").replace(")", r"\)")):
        verifier.verify(authorization, AUDIENCE)


def test_scheme_is_case_insensitive(verifier, sign):
    assert verifier.verify("bearer " + sign(), AUDIENCE).iss == ISS


def test_replayed_jti_is_refused(verifier, sign):
    token = sign()
    verifier.verify("Bearer " + token, AUDIENCE)
    with pytest.raises(errors.NotAuthenticated, match="replayed"):
        verifier.verify("Bearer " + token, AUDIENCE)


def test_replay_across_workers_sharing_one_store(file_settings, sign, tmp_path):
    """Two gunicorn workers: two apps, two engines, one database file."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engines = [schema.create_engine(url), schema.create_engine(url)]
    schema.create_schema(engines[0])
    first, second = (jwt_check.TokenVerifier(file_settings, ReplayCache(e)) for e in engines)
    token = sign()
    first.verify("Bearer " + token, AUDIENCE)
    with pytest.raises(errors.NotAuthenticated, match="replayed"):
        second.verify("Bearer " + token, AUDIENCE)
    for e in engines:
        e.dispose()


def test_failed_token_does_not_use_up_its_jti(verifier, sign):
    """A token refused for another reason leaves its jti free (the replay check comes last)."""
    claims = {"jti": "same-jti"}
    with pytest.raises(errors.NotAuthenticated):
        verifier.verify("Bearer " + sign(claims=claims), AUDIENCE + "/wrong")
    verifier.verify("Bearer " + sign(claims=claims), AUDIENCE)


def test_same_jti_from_two_issuers_is_not_a_replay(verifier, sign):
    verifier.verify("Bearer " + sign(claims={"jti": "j"}), AUDIENCE)
    verifier.verify("Bearer " + sign(claims={"jti": "j", "iss": ISS_TENANTS, "tenant": "t1"}), AUDIENCE)


# --- keys over HTTP: jwks_url and jku ------------------------------------------------------------


@pytest.fixture
def url_verifier(httpserver, jwks, engine):
    httpserver.expect_request("/jwks.json").respond_with_json(jwks)
    issuer = IssuerSettings(iss=ISS, jwks_url=httpserver.url_for("/jwks.json"))
    verifier = jwt_check.TokenVerifier(make_settings(issuer), ReplayCache(engine))
    yield verifier
    verifier.close()


def test_jwks_url_keys_are_fetched_once_and_cached(url_verifier, sign, httpserver):
    for alg in ("ES384", "RS384", "ES384"):
        url_verifier.verify("Bearer " + sign(alg), AUDIENCE)
    assert len(httpserver.log) == 1


def test_jku_on_a_file_issuer_cannot_bring_its_own_key(verifier, sign, rogue_key, httpserver):
    httpserver.expect_request("/jwks.json").respond_with_json({"keys": [public_jwk(rogue_key, EC_KID)]})
    token = sign(header={"jku": httpserver.url_for("/jwks.json")}, key=rogue_key)
    with pytest.raises(errors.NotAuthenticated, match="InvalidSignatureError"):
        verifier.verify("Bearer " + token, AUDIENCE)
    assert len(httpserver.log) == 0  # never fetched


def test_wrong_audience_reason_names_the_expected_one(verifier, sign):
    with pytest.raises(errors.NotAuthenticated) as caught:
        verifier.verify("Bearer " + sign(claims={"aud": "http://10.0.0.5:8000/cds-services/order-select"}), AUDIENCE)
    assert f"expected '{AUDIENCE}'" in caught.value.message
    assert "http://10.0.0.5:8000/cds-services/order-select" in caught.value.message


def test_shipped_keys_verify_offline_when_the_jku_is_the_issuers_own(jwks_file, sign, black_hole, engine):
    """The development profile's sandbox issuer: a jwks_url (that cannot be reached here) and the
    shipped keys; a token whose jku is that URL verifies with the shipped key, without a fetch."""
    issuer = IssuerSettings(iss=ISS, jwks_url=black_hole, jwks_file=jwks_file)
    verifier = jwt_check.TokenVerifier(make_settings(issuer, profile=Profile.DEVELOPMENT), ReplayCache(engine))
    try:
        started = time.monotonic()
        assert verifier.verify("Bearer " + sign(header={"jku": black_hole}), AUDIENCE).iss == ISS
        assert time.monotonic() - started < 1.0  # the black hole would hold a fetch for 2 s
        with pytest.raises(errors.NotAuthenticated, match="not its configured jwks_url"):
            verifier.verify("Bearer " + sign(header={"jku": "https://elsewhere.example/jwks.json"}), AUDIENCE)
    finally:
        verifier.close()


def test_jku_equal_to_the_configured_url_is_honoured(url_verifier, sign, httpserver):
    url_verifier.verify("Bearer " + sign(header={"jku": httpserver.url_for("/jwks.json")}), AUDIENCE)


def test_jku_not_configured_is_never_fetched(url_verifier, sign, rogue_key, httpserver):
    rogue = HTTPServer(host="127.0.0.1", port=0)
    rogue.expect_request("/jwks.json").respond_with_json({"keys": [public_jwk(rogue_key, "rogue")]})
    rogue.start()
    try:
        for kid in ("rogue", EC_KID):  # a kid of its own, and one the issuer really has
            token = sign(header={"jku": rogue.url_for("/jwks.json"), "kid": kid}, key=rogue_key)
            with pytest.raises(errors.NotAuthenticated, match="jku .* is not its configured jwks_url"):
                url_verifier.verify("Bearer " + token, AUDIENCE)
        assert rogue.log == []
        assert httpserver.log == []  # refused before any key was looked up
    finally:
        rogue.stop()


def test_unknown_kid_refetches_at_most_once_a_minute(httpserver, jwks, engine, sign):
    httpserver.expect_request("/jwks.json").respond_with_json(jwks)
    now = [1000.0]
    issuer = IssuerSettings(iss=ISS, jwks_url=httpserver.url_for("/jwks.json"))
    store = keys.KeyStore([issuer], clock=lambda: now[0])
    verifier = jwt_check.TokenVerifier(make_settings(issuer), ReplayCache(engine), key_store=store)
    verifier.verify("Bearer " + sign(), AUDIENCE)
    with pytest.raises(errors.NotAuthenticated, match="no key with kid"):  # just fetched: no refetch
        verifier.verify("Bearer " + sign(header={"kid": "made-up"}), AUDIENCE)
    assert len(httpserver.log) == 1
    now[0] += keys.REFRESH_INTERVAL_SECONDS
    for n in range(20):  # a burst of made-up kids: one refetch, then none
        now[0] += 1
        with pytest.raises(errors.NotAuthenticated, match="no key with kid"):
            verifier.verify("Bearer " + sign(header={"kid": f"made-up-{n}"}), AUDIENCE)
    assert len(httpserver.log) == 2
    now[0] += keys.REFRESH_INTERVAL_SECONDS
    with pytest.raises(errors.NotAuthenticated):
        verifier.verify("Bearer " + sign(header={"kid": "made-up-again"}), AUDIENCE)
    assert len(httpserver.log) == 3
    verifier.verify("Bearer " + sign("RS384"), AUDIENCE)  # known kids need no fetch
    assert len(httpserver.log) == 3
    verifier.close()


def test_unknown_kid_picks_up_a_rotated_key(httpserver, jwks, engine, sign, rogue_key):
    """The EHR publishes a new key: its first token triggers the refetch and passes."""
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(jwks)
    rotated = {"keys": [*jwks["keys"], public_jwk(rogue_key, "new-key")]}
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(rotated)
    now = [1000.0]
    issuer = IssuerSettings(iss=ISS, jwks_url=httpserver.url_for("/jwks.json"))
    store = keys.KeyStore([issuer], clock=lambda: now[0])
    verifier = jwt_check.TokenVerifier(make_settings(issuer), ReplayCache(engine), key_store=store)
    verifier.verify("Bearer " + sign(), AUDIENCE)
    now[0] += keys.REFRESH_INTERVAL_SECONDS + 1
    verifier.verify("Bearer " + sign(header={"kid": "new-key"}, key=rogue_key), AUDIENCE)
    assert len(httpserver.log) == 2


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections and never answers."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"
    sock.close()


def test_unreachable_jwks_url_fails_fast(black_hole, engine, sign):
    issuer = IssuerSettings(iss=ISS, jwks_url=black_hole)
    verifier = jwt_check.TokenVerifier(make_settings(issuer), ReplayCache(engine))
    started = time.monotonic()
    with pytest.raises(errors.NotAuthenticated, match="could not be fetched"):
        verifier.verify("Bearer " + sign(), AUDIENCE)
    assert time.monotonic() - started < 2.5
    verifier.close()


def test_log_never_contains_the_token(verifier, url_verifier, sign, caplog, rogue_key, black_hole, engine):
    caplog.set_level(logging.DEBUG)
    tokens = [
        sign(),
        sign(claims={"exp": lambda now: now - 600}),
        sign(claims={"aud": "https://elsewhere"}),
        sign(header={"kid": "unknown"}),
        sign(key=rogue_key),
        sign(header={"jku": "https://evil.example/jwks.json"}),
    ]
    for token in tokens:
        for authorization in ("Bearer " + token, token, "Basic " + token):
            for v in (verifier, url_verifier):
                try:
                    v.verify(authorization, AUDIENCE)
                except errors.NotAuthenticated as exc:
                    logging.getLogger("test").info("refused: %s", exc.message)
    unreachable = jwt_check.TokenVerifier(make_settings(IssuerSettings(iss=ISS, jwks_url=black_hole)), ReplayCache(engine))
    with pytest.raises(errors.NotAuthenticated) as caught:
        unreachable.verify("Bearer " + tokens[0], AUDIENCE)
    logging.getLogger("test").info("refused: %s", caught.value.message)
    assert "refused" in caplog.text
    for token in tokens:
        assert token not in caplog.text
        assert token.split(".")[2] not in caplog.text  # not even the signature


def test_verifiers_are_thread_safe(url_verifier, sign, httpserver):
    tokens = [sign() for _ in range(40)]
    failures = []

    def check(token):
        try:
            url_verifier.verify("Bearer " + token, AUDIENCE)
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=check, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(httpserver.log) == 1


def test_production_refuses_the_sandbox_key_under_any_iss(tmp_path, engine):
    sandbox_jwk = {
        "kty": "EC", "crv": "P-384", "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f", "use": "sig", "alg": "ES384",
        "x": "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB",
        "y": "Sm3mLE-n1zYNla_aiE3cb3nZsL51RbC7ysw3q8aJLxGm-hx79RPMYpITDjp7kgzy",
    }
    path = tmp_path / "copied.json"
    path.write_text('{"keys": [%s]}' % __import__("json").dumps(sandbox_jwk))
    settings = make_settings(IssuerSettings(iss="https://my-test-ehr.example", jwks_file=path))
    with pytest.raises(errors.ConfigError, match="sandbox key"):
        jwt_check.TokenVerifier(settings, ReplayCache(engine))
    dev = make_settings(IssuerSettings(iss="https://my-test-ehr.example", jwks_file=path), profile="development")
    jwt_check.TokenVerifier(dev, ReplayCache(engine)).close()


def test_jwks_file_errors_name_the_file(tmp_path, engine):
    missing = tmp_path / "nope.json"
    with pytest.raises(errors.ConfigError, match=str(missing)):
        jwt_check.TokenVerifier(make_settings(IssuerSettings(iss=ISS, jwks_file=missing)), ReplayCache(engine))


def test_ec_key_generated_is_p384(ec_key):
    assert isinstance(ec_key.curve, ec.SECP384R1)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # signing with it, on purpose
def test_rsa_key_shorter_than_2048_bits_is_refused(tmp_path, engine, sign):
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "weak.json"
    path.write_text(__import__("json").dumps({"keys": [public_jwk(weak, "weak")]}))
    verifier = jwt_check.TokenVerifier(make_settings(IssuerSettings(iss=ISS, jwks_file=path)), ReplayCache(engine))
    with pytest.raises(errors.NotAuthenticated, match="InvalidKeyError"):
        verifier.verify("Bearer " + sign("RS384", header={"kid": "weak"}, key=weak), AUDIENCE)

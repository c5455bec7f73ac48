"""KeyStore: JWKS from files (read at start-up) and URLs (cached, rate-limited refetch, timeouts)."""

from __future__ import annotations

import json
import time

import pytest
from werkzeug import Response

from service import errors
from service.config import IssuerSettings
from service.security import keys

from .conftest import EC_KID
from .conftest import ISS
from .conftest import RSA_KID
from .conftest import public_jwk
from .conftest import unused_port

SANDBOX_JWK = {
    "kty": "EC", "crv": "P-384", "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f", "use": "sig", "alg": "ES384",
    "x": "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB",
    "y": "Sm3mLE-n1zYNla_aiE3cb3nZsL51RbC7ysw3q8aJLxGm-hx79RPMYpITDjp7kgzy",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def file_issuer(tmp_path, document) -> IssuerSettings:
    path = tmp_path / "jwks.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return IssuerSettings(iss=ISS, jwks_file=path)


def test_file_keys_are_read_at_start_up(tmp_path, jwks):
    issuer = file_issuer(tmp_path, jwks)
    store = keys.KeyStore([issuer])
    issuer.jwks_file.unlink()  # read once: later lookups do not touch the file
    assert store.key(issuer, EC_KID, "ES384").algorithm_name == "ES384"
    assert store.key(issuer, RSA_KID, "PS512").algorithm_name == "PS512"
    assert store.key_set(issuer).kids == sorted(k["kid"] for k in jwks["keys"])


BAD_FILES = {
    "not-json": ("{keys:", "not a usable JWK Set"),
    "no-keys-array": ({"key": []}, '"keys" array'),
    "empty": ({"keys": []}, "no usable signing key"),
    "only-symmetric": ({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}, "no usable signing key"),
    "broken-ec-key": ({"keys": [{"kty": "EC", "crv": "P-384", "kid": "b", "x": "AA", "y": "AA"}]}, "not a valid key"),
}


@pytest.mark.parametrize(("document", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_unusable_file_is_a_config_error_naming_it(tmp_path, document, message):
    issuer = file_issuer(tmp_path, document)
    with pytest.raises(errors.ConfigError, match=message) as caught:
        keys.KeyStore([issuer])
    assert str(issuer.jwks_file) in str(caught.value)


def test_missing_file_is_a_config_error_naming_it(tmp_path):
    issuer = IssuerSettings(iss=ISS, jwks_file=tmp_path / "absent.json")
    with pytest.raises(errors.ConfigError, match=f"{tmp_path / 'absent.json'}: file not found"):
        keys.KeyStore([issuer])


def test_private_key_in_a_file_is_refused(tmp_path, ec_key):
    import jwt as pyjwt

    private = pyjwt.algorithms.ECAlgorithm.to_jwk(ec_key, as_dict=True) | {"kid": "oops"}
    with pytest.raises(errors.ConfigError, match="private key"):
        keys.KeyStore([file_issuer(tmp_path, {"keys": [private]})])


def test_keys_for_other_uses_are_skipped(tmp_path, jwks, ec_key):
    document = {"keys": [*jwks["keys"], public_jwk(ec_key, "enc-key", use="enc"), {"kty": "oct", "kid": "h", "k": "eA"}]}
    issuer = file_issuer(tmp_path, document)
    store = keys.KeyStore([issuer])
    assert "enc-key" not in store.key_set(issuer).kids
    with pytest.raises(errors.NotAuthenticated, match="no key with kid 'h'"):
        store.key(issuer, "h", "ES384")


def test_sandbox_key_is_refused_in_production_only(tmp_path):
    issuer = file_issuer(tmp_path, {"keys": [SANDBOX_JWK]})
    with pytest.raises(errors.ConfigError, match="CDS Hooks sandbox key"):
        keys.KeyStore([issuer], refuse_published_keys=True)
    assert keys.KeyStore([issuer]).key(issuer, SANDBOX_JWK["kid"], "ES384")


BIND = {
    "es384-rsa-key": ("RS384", EC_KID, "does not fit a EC key"),
    "rs384-ec-key": ("ES384", RSA_KID, "does not fit a RSA key"),
    "declared-alg-differs": ("ES512", "declared", "the key is for ES384"),
}


@pytest.mark.parametrize(("alg", "kid", "message"), BIND.values(), ids=BIND.keys())
def test_key_must_fit_the_algorithm(tmp_path, jwks, ec_key, alg, kid, message):
    document = {"keys": [*jwks["keys"], public_jwk(ec_key, "declared", alg="ES384")]}
    issuer = file_issuer(tmp_path, document)
    with pytest.raises(keys.KeyUnavailable, match=message):
        keys.KeyStore([issuer]).key(issuer, kid, alg)


# --- over HTTP ----------------------------------------------------------------------------------


def url_issuer(httpserver, path="/jwks.json") -> IssuerSettings:
    return IssuerSettings(iss=ISS, jwks_url=httpserver.url_for(path))


def test_url_is_fetched_on_first_use_not_at_start_up(httpserver, jwks):
    httpserver.expect_request("/jwks.json").respond_with_json(jwks)
    issuer = url_issuer(httpserver)
    store = keys.KeyStore([issuer])
    assert httpserver.log == []
    store.key(issuer, EC_KID, "ES384")
    store.key(issuer, RSA_KID, "RS384")
    assert len(httpserver.log) == 1
    request = httpserver.log[0][0]
    assert "Authorization" not in request.headers


FETCH_FAILURES = {
    "http-500": (lambda s: s.respond_with_data("oops", status=500), "answered HTTP 500"),
    "redirect-not-followed": (
        lambda s: s.respond_with_data("", status=302, headers={"Location": "https://evil.example/jwks.json"}),
        "answered HTTP 302",
    ),
    "not-json": (lambda s: s.respond_with_data("<html>"), "not a usable JWK Set"),
    "no-keys": (lambda s: s.respond_with_json({"keys": []}), "no usable signing key"),
    "too-large": (lambda s: s.respond_with_data(b" " * (keys.MAX_JWKS_BYTES + 10)), "larger than"),
}


@pytest.mark.parametrize(("respond", "message"), FETCH_FAILURES.values(), ids=FETCH_FAILURES.keys())
def test_unusable_answer_fails_the_token(httpserver, respond, message):
    respond(httpserver.expect_request("/jwks.json"))
    issuer = url_issuer(httpserver)
    store = keys.KeyStore([issuer])
    with pytest.raises(keys.KeyUnavailable, match="could not be fetched"):
        store.key(issuer, EC_KID, "ES384")
    with pytest.raises(keys.KeyUnavailable, match=message):  # check-config --fetch shows the reason
        store.key_set(issuer, fetch=True)


def test_connection_refused_fails_at_once():
    issuer = IssuerSettings(iss=ISS, jwks_url=f"http://127.0.0.1:{unused_port()}/jwks.json")
    started = time.monotonic()
    with pytest.raises(keys.KeyUnavailable, match="could not be fetched"):
        keys.KeyStore([issuer]).key(issuer, EC_KID, "ES384")
    assert time.monotonic() - started < 1


def test_slowly_dripping_answer_is_cut_off(httpserver, jwks):
    body = json.dumps(jwks).encode()

    def drip(_request):
        def chunks():
            for n in range(0, len(body), 50):
                time.sleep(0.1)
                yield body[n:n + 50]
        return Response(chunks(), content_type="application/json")

    httpserver.expect_request("/jwks.json").respond_with_handler(drip)
    issuer = url_issuer(httpserver)
    started = time.monotonic()
    with pytest.raises(keys.KeyUnavailable, match="took longer than 0.5 s"):
        keys.KeyStore([issuer], timeout_seconds=0.5).key_set(issuer, fetch=True)
    assert time.monotonic() - started < 1.5


def test_failed_fetch_is_retried_after_a_few_seconds_not_on_every_call(httpserver, jwks):
    httpserver.expect_ordered_request("/jwks.json").respond_with_data("down", status=503)
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(jwks)
    clock = Clock()
    issuer = url_issuer(httpserver)
    store = keys.KeyStore([issuer], clock=clock)
    for _ in range(5):
        with pytest.raises(keys.KeyUnavailable):
            store.key(issuer, EC_KID, "ES384")
    assert len(httpserver.log) == 1
    clock.now += keys.RETRY_INTERVAL_SECONDS
    assert store.key(issuer, EC_KID, "ES384")
    assert len(httpserver.log) == 2


def test_old_set_is_refetched_and_kept_if_the_refetch_fails(httpserver, jwks):
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(jwks)
    httpserver.expect_ordered_request("/jwks.json").respond_with_data("down", status=503)
    clock = Clock()
    issuer = url_issuer(httpserver)
    store = keys.KeyStore([issuer], clock=clock)
    store.key(issuer, EC_KID, "ES384")
    clock.now += keys.MAX_AGE_SECONDS + 1
    assert store.key(issuer, EC_KID, "ES384")  # refetch failed: the hour-old set still serves
    assert len(httpserver.log) == 2
    clock.now += keys.MAX_STALE_SECONDS
    with pytest.raises(keys.KeyUnavailable, match="not refreshed for a day"):
        store.key(issuer, EC_KID, "ES384")


def test_rotated_out_key_disappears_after_max_age(httpserver, jwks):
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(jwks)
    httpserver.expect_ordered_request("/jwks.json").respond_with_json({"keys": [jwks["keys"][2]]})
    clock = Clock()
    issuer = url_issuer(httpserver)
    store = keys.KeyStore([issuer], clock=clock)
    store.key(issuer, EC_KID, "ES384")
    clock.now += keys.MAX_AGE_SECONDS + 1
    with pytest.raises(keys.KeyUnavailable, match="no key with kid"):
        store.key(issuer, EC_KID, "ES384")


def test_fetched_set_drops_refused_keys_and_keeps_the_rest(httpserver, jwks, ec_key, caplog):
    import jwt as pyjwt

    private = pyjwt.algorithms.ECAlgorithm.to_jwk(ec_key, as_dict=True) | {"kid": "leaked"}
    httpserver.expect_request("/jwks.json").respond_with_json({"keys": [*jwks["keys"], SANDBOX_JWK, private]})
    issuer = url_issuer(httpserver)
    key_set = keys.KeyStore([issuer], refuse_published_keys=True).key_set(issuer, fetch=True)
    assert key_set.kids == sorted(k["kid"] for k in jwks["keys"])
    assert "CDS Hooks sandbox key" in caplog.text and "private key" in caplog.text


def test_close_closes_the_session(httpserver, jwks, monkeypatch):
    httpserver.expect_request("/jwks.json").respond_with_json(jwks)
    issuer = url_issuer(httpserver)
    store = keys.KeyStore([issuer])
    store.key(issuer, EC_KID, "ES384")
    closed = []
    monkeypatch.setattr(store._session, "close", lambda: closed.append(True))
    store.close()
    assert closed == [True]


def test_gzip_encoded_answer_is_read(httpserver, jwks):
    import gzip

    httpserver.expect_request("/jwks.json").respond_with_data(
        gzip.compress(json.dumps(jwks).encode()), headers={"Content-Encoding": "gzip"}, content_type="application/json"
    )
    issuer = url_issuer(httpserver)
    assert keys.KeyStore([issuer]).key(issuer, EC_KID, "ES384")


def test_answer_stalling_mid_body_fails_the_token(httpserver, jwks):
    body = json.dumps(jwks).encode()

    def stall(_request):
        def chunks():
            yield body[:20]
            time.sleep(1.5)
            yield body[20:]
        return Response(chunks(), content_type="application/json")

    httpserver.expect_request("/jwks.json").respond_with_handler(stall)
    issuer = url_issuer(httpserver)
    with pytest.raises(keys.KeyUnavailable, match="could not be fetched: ReadTimeoutError"):
        keys.KeyStore([issuer], timeout_seconds=0.5).key_set(issuer, fetch=True)


def test_absurdly_nested_answer_fails_the_token(httpserver):
    httpserver.expect_request("/jwks.json").respond_with_data("[" * 100_000 + "]" * 100_000)
    issuer = url_issuer(httpserver)
    with pytest.raises(keys.KeyUnavailable, match="not a usable JWK Set"):
        keys.KeyStore([issuer]).key_set(issuer, fetch=True)


def test_a_key_is_bound_once_and_reused(tmp_path, jwks):
    issuer = file_issuer(tmp_path, jwks)
    store = keys.KeyStore([issuer])
    first = store.key(issuer, EC_KID, "ES384")
    assert store.key(issuer, EC_KID, "ES384") is first  # no PyJWK built per token
    assert store.key(issuer, RSA_KID, "PS512") is not store.key(issuer, RSA_KID, "RS256")  # one per alg
    with pytest.raises(keys.KeyUnavailable, match="does not fit"):
        store.key(issuer, EC_KID, "RS256")  # a refused binding is not remembered as a key


def test_a_new_key_under_the_same_kid_replaces_the_bound_one(httpserver, jwks, rogue_key):
    rotated = {"keys": [public_jwk(rogue_key, EC_KID)]}
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(jwks)
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(rotated)
    clock = Clock()
    issuer = url_issuer(httpserver)
    store = keys.KeyStore([issuer], clock=clock)
    before = store.key(issuer, EC_KID, "ES384")
    clock.now += keys.MAX_AGE_SECONDS + 1
    after = store.key(issuer, EC_KID, "ES384")
    assert after.key.public_numbers() == rogue_key.public_key().public_numbers()
    assert before.key.public_numbers() != after.key.public_numbers()


def test_the_shipped_sandbox_key_is_public_and_the_sandboxs():
    """The development profile verifies sandbox tokens offline with this file: the sandbox's public
    key only (no `d`), the key production refuses everywhere."""
    import json

    from service import config

    document = json.loads(config.SANDBOX_JWKS_FILE.read_text())
    [jwk] = document["keys"]
    assert "d" not in jwk
    assert jwk["kid"] == "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f" and jwk["alg"] == "ES384"
    assert (jwk["kty"], jwk["crv"], jwk["x"]) in keys.PUBLISHED_PRIVATE_KEYS
    settings = config.load_settings(None, {"HOME": "/nonexistent"})
    sandbox = settings.issuer(config.SANDBOX_ISSUER)
    assert sandbox.jwks_file == config.SANDBOX_JWKS_FILE and sandbox.jwks_url == config.SANDBOX_JWKS_URL
    store = keys.KeyStore([sandbox])  # nothing fetched: the key is found in the shipped set
    try:
        assert store.key(sandbox, jwk["kid"], "ES384") is not None
        assert store.key_set(sandbox) is None  # the URL was never fetched
    finally:
        store.close()

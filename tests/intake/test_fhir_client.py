"""Tests for service/intake/fhir_client.py: fault cases on pytest-httpserver, paging on a real FHIR server."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request
from werkzeug import Response

from service.intake.fhir_client import FhirFetcher
from service.security.fhir_servers import base_allowed
from tests.fhirserver import load_bundle
from tests.fhirserver import running_fhir_server

TOKEN = "tok-3f9a-secret"
PATIENT = {"resourceType": "Patient", "id": "123", "birthDate": "1970-01-01"}


def searchset(*resources: dict, next_url: str | None = None) -> dict:
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def condition(cid: str) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/123"}}


def sleeping(seconds: float, body: dict) -> object:
    def handler(request: Request) -> Response:
        time.sleep(seconds)
        return Response(json.dumps(body), content_type="application/fhir+json")

    return handler


@contextlib.contextmanager
def _started() -> Iterator[HTTPServer]:
    # Threaded, so that slow handlers do not queue behind each other (the concurrency test needs it).
    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()  # takes ~0.5 s (werkzeug's poll interval), hence the shared servers below


@pytest.fixture(scope="module")
def _shared() -> Iterator[HTTPServer]:
    with _started() as server:
        yield server


@pytest.fixture(scope="module")
def _shared_other() -> Iterator[HTTPServer]:
    with _started() as server:
        yield server


@pytest.fixture
def server(_shared: HTTPServer) -> Iterator[HTTPServer]:
    """The EHR's FHIR server; handlers here answer at once."""
    _shared.clear()
    yield _shared
    _shared.clear()


@pytest.fixture
def other_server(_shared_other: HTTPServer) -> Iterator[HTTPServer]:
    """Another host, which must never be contacted."""
    _shared_other.clear()
    yield _shared_other
    _shared_other.clear()


@pytest.fixture
def slow_server() -> Iterator[HTTPServer]:
    """A server of its own for slow handlers: one finishing late must not show up in another test's log."""
    with _started() as server:
        yield server


@pytest.fixture
def base(server: HTTPServer) -> str:
    return server.url_for("/fhir")


@pytest.fixture
def fetcher() -> Iterator[FhirFetcher]:
    with FhirFetcher(timeout_seconds=2.0) as f:
        yield f


# --- reads and searches --------------------------------------------------------------------------


def test_read_returns_the_one_resource(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_json(PATIENT)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"patient": "Patient/123"})
    assert dict(result.resources) == {"patient": (PATIENT,)}
    assert dict(result.failures) == {}
    assert result.requests_made == 1


def test_read_404_is_not_found(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_json({"resourceType": "OperationOutcome"}, status=404)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"patient": "Patient/123"})
    assert dict(result.failures) == {"patient": "not found"}


def test_read_of_the_wrong_type_fails(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_json(searchset(PATIENT))
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"patient": "Patient/123"})
    assert dict(result.failures) == {"patient": "expected Patient, got Bundle"}


def test_search_flattens_entries(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Condition", query_string={"patient": "123"}).respond_with_json(
        searchset(condition("a"), condition("b"))
    )
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert [r["id"] for r in result.resources["conditions"]] == ["a", "b"]


def test_empty_search_with_a_warning_outcome_is_an_empty_result(
    server: HTTPServer, base: str, fetcher: FhirFetcher
) -> None:
    # The R4 spec's bundle-search-warning example: an outcome entry of severity warning, no matches.
    bundle = searchset()
    bundle["entry"] = [
        {
            "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "not-found"}]},
            "search": {"mode": "outcome"},
        }
    ]
    server.expect_request("/fhir/Condition").respond_with_json(bundle)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert dict(result.resources) == {"conditions": ()}


def test_search_with_an_error_outcome_entry_fails(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    bundle = searchset(condition("a"))
    bundle["entry"].append(
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "processing", "diagnostics": "partial results"}],
            },
            "search": {"mode": "outcome"},
        }
    )
    server.expect_request("/fhir/Condition").respond_with_json(bundle)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert dict(result.failures) == {"conditions": "OperationOutcome: error processing"}
    assert "conditions" not in result.resources


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "query", "reason"),
    [
        (500, "Condition?patient=123", "HTTP 500"),
        (401, "Condition?patient=123", "HTTP 401"),
        (403, "Patient/123", "HTTP 403"),
        (404, "Condition?patient=123", "HTTP 404"),   # only a read's 404 means "not found"
        (503, "Patient/123", "HTTP 503"),
    ],
)
def test_error_status_is_a_failure(
    server: HTTPServer, base: str, fetcher: FhirFetcher, status: int, query: str, reason: str
) -> None:
    server.expect_request(f"/fhir/{query.split('?')[0]}").respond_with_data("secret body", status=status)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"k": query})
    assert dict(result.failures) == {"k": reason}
    assert dict(result.resources) == {}


def test_operation_outcome_is_summarised_never_copied(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    # Servers put patient details (and sometimes the token) into an OperationOutcome's texts.
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "security", "diagnostics": f"token {TOKEN} lacks scope for Jane Doe, MRN 445566",
             "details": {"text": "Patient Jane Doe (born 1970-01-01) is restricted"}},
            {"severity": "warning", "code": "Not A Code; Jane Doe", "diagnostics": "Jane Doe"},
        ],
    }
    server.expect_request("/fhir/Condition").respond_with_json(outcome)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert dict(result.failures) == {"conditions": "OperationOutcome: error security, warning unknown"}


@pytest.mark.parametrize("body", ["<html>oops</html>", "[1, 2]", "", "\xff\xfe"])
def test_unreadable_body(server: HTTPServer, base: str, fetcher: FhirFetcher, body: str) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_data(body, content_type="application/fhir+json")
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"patient": "Patient/123"})
    assert dict(result.failures) == {"patient": "unreadable body"}


def test_slow_server_times_out(slow_server: HTTPServer) -> None:
    slow_server.expect_request("/fhir/Patient/123").respond_with_handler(sleeping(2.0, PATIENT))
    with FhirFetcher(timeout_seconds=0.5) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(base=slow_server.url_for("/fhir"), access_token=TOKEN, queries={"p": "Patient/123"})
        elapsed = time.monotonic() - started
    assert dict(result.failures) == {"p": "timeout"}
    assert elapsed < 0.5 + 0.5


def test_drip_fed_body_times_out(slow_server: HTTPServer) -> None:
    # Each chunk arrives within the read timeout, so only the per-request time limit stops it.
    def drip(request: Request) -> Response:
        def chunks() -> Iterator[bytes]:
            yield b'{"resourceType": "Patient", "id": "123", "text": "'
            for _ in range(20):
                time.sleep(0.1)
                yield b"x" * 10
            yield b'"}'

        return Response(chunks(), content_type="application/fhir+json")

    slow_server.expect_request("/fhir/Patient/123").respond_with_handler(drip)
    with FhirFetcher(timeout_seconds=0.5) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(base=slow_server.url_for("/fhir"), access_token=TOKEN, queries={"p": "Patient/123"})
        elapsed = time.monotonic() - started
    assert dict(result.failures) == {"p": "timeout"}
    assert elapsed < 0.5 + 0.5


def test_deadline_bounds_the_whole_fetch(slow_server: HTTPServer) -> None:
    slow_server.expect_request("/fhir/Patient/123").respond_with_handler(sleeping(3.0, PATIENT))
    with FhirFetcher(timeout_seconds=10.0) as fetcher:
        started = time.monotonic()
        base = slow_server.url_for("/fhir")
        result = fetcher.fetch(base=base, access_token=TOKEN, queries={"p": "Patient/123"}, deadline=started + 0.4)
        elapsed = time.monotonic() - started
    assert dict(result.failures) == {"p": "timeout"}
    assert elapsed < 0.4 + 0.5


def test_past_deadline_sends_nothing(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    result = fetcher.fetch(
        base=base, access_token=TOKEN, queries={"patient": "Patient/123"}, deadline=time.monotonic() - 1
    )
    assert dict(result.failures) == {"patient": "timeout"}
    assert result.requests_made == 0
    assert server.log == []


def test_connection_refused(fetcher: FhirFetcher) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = fetcher.fetch(base=f"http://127.0.0.1:{port}/fhir", access_token=TOKEN, queries={"p": "Patient/1"})
    assert dict(result.failures) == {"p": "connection failed"}


def test_response_over_max_bytes(server: HTTPServer, base: str) -> None:
    big = searchset(*(condition(str(i)) for i in range(200)))
    server.expect_request("/fhir/Condition").respond_with_json(big)
    with FhirFetcher(timeout_seconds=2.0, max_bytes=5_000) as fetcher:
        result = fetcher.fetch(base=base, access_token=TOKEN, queries={"c": "Condition?patient=123"})
    assert dict(result.failures) == {"c": "response too large"}


@pytest.mark.parametrize("query", ["http://elsewhere.example/Patient/1", "/Patient/1", ""])
def test_invalid_query(base: str, fetcher: FhirFetcher, query: str) -> None:
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"p": query})
    assert dict(result.failures) == {"p": "invalid query"}
    assert result.requests_made == 0


@pytest.mark.parametrize(
    "bad_base", ["ftp://ehr.example.org/fhir", "not a url", "https://user:pw@ehr.example.org/fhir"]
)
def test_invalid_base_fails_every_key(fetcher: FhirFetcher, bad_base: str) -> None:
    result = fetcher.fetch(base=bad_base, access_token=TOKEN, queries={"a": "Patient/1", "b": "Condition"})
    assert dict(result.failures) == {"a": "invalid FHIR base", "b": "invalid FHIR base"}


# --- paging --------------------------------------------------------------------------------------


def test_paged_search_collects_every_page(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Condition", query_string={"patient": "123"}).respond_with_json(
        searchset(condition("a"), next_url=f"{base}/Condition?patient=123&page=2")   # absolute
    )
    server.expect_request("/fhir/Condition", query_string={"patient": "123", "page": "2"}).respond_with_json(
        searchset(condition("b"), next_url="Condition?patient=123&page=3")           # relative to base
    )
    server.expect_request("/fhir/Condition", query_string={"patient": "123", "page": "3"}).respond_with_json(
        searchset(condition("c"))
    )
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert [r["id"] for r in result.resources["conditions"]] == ["a", "b", "c"]
    assert result.requests_made == 3
    assert all(req.headers.get("Authorization") == f"Bearer {TOKEN}" for req, _ in server.log)


def test_too_many_pages(server: HTTPServer, base: str) -> None:
    server.expect_request("/fhir/Condition").respond_with_json(
        searchset(condition("a"), next_url=f"{base}/Condition?patient=123&page=again")
    )
    with FhirFetcher(timeout_seconds=2.0, max_pages=3) as fetcher:
        result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert dict(result.failures) == {"conditions": "too many pages"}
    assert result.requests_made == 3


@pytest.mark.parametrize(
    "next_path",
    [
        "http://{other}/fhir/Condition?page=2",         # another host
        "http://{here}/fhir.evil/Condition?page=2",     # same host, a path that merely starts like the base
        "http://{here}/other/Condition?page=2",         # same host, outside the base path
        "/other/Condition?page=2",                      # relative, resolving outside the base
    ],
)
def test_next_link_outside_base_is_not_followed(
    server: HTTPServer, other_server: HTTPServer, base: str, fetcher: FhirFetcher, next_path: str
) -> None:
    next_url = next_path.format(other=f"127.0.0.1:{other_server.port}", here=f"127.0.0.1:{server.port}")
    server.expect_request("/fhir/Condition").respond_with_json(searchset(condition("a"), next_url=next_url))
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert dict(result.failures) == {"conditions": "next link outside the FHIR base"}
    assert result.requests_made == 1
    assert other_server.log == []
    assert len(server.log) == 1


def test_continue_from_a_paged_prefetch(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Condition", query_string={"page": "2"}).respond_with_json(
        searchset(condition("b"))
    )
    result = fetcher.fetch(
        base=base,
        access_token=TOKEN,
        # prefetch.py also passes the key's query; the continuation wins over it
        queries={"conditions": "Condition?patient=123"},
        continue_from={"conditions": ((condition("a"),), f"{base}/Condition?page=2")},
    )
    assert [r["id"] for r in result.resources["conditions"]] == ["a", "b"]
    assert result.requests_made == 1


def test_continue_from_outside_base_fails(
    server: HTTPServer, other_server: HTTPServer, base: str, fetcher: FhirFetcher
) -> None:
    elsewhere = other_server.url_for("/fhir/Condition?page=2")
    result = fetcher.fetch(
        base=base, access_token=TOKEN, queries={}, continue_from={"conditions": ((condition("a"),), elsewhere)}
    )
    assert dict(result.failures) == {"conditions": "next link outside the FHIR base"}
    assert other_server.log == []


# --- redirects, headers, logging, concurrency ----------------------------------------------------


def test_redirect_is_not_followed(
    server: HTTPServer, other_server: HTTPServer, base: str, fetcher: FhirFetcher
) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_data(
        "", status=302, headers={"Location": other_server.url_for("/fhir/Patient/123")}
    )
    other_server.expect_request("/fhir/Patient/123").respond_with_json(PATIENT)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"patient": "Patient/123"})
    assert dict(result.failures) == {"patient": "redirect not followed"}
    assert other_server.log == []


def test_token_sent_as_bearer(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request(
        "/fhir/Patient/123", headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/fhir+json"}
    ).respond_with_json(PATIENT)
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"patient": "Patient/123"})
    assert dict(result.failures) == {}


def test_no_authorization_header_without_token(
    server: HTTPServer, base: str, fetcher: FhirFetcher, tmp_path, monkeypatch
) -> None:
    # A ~/.netrc entry for the host must not slip credentials in either.
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    server.expect_request("/fhir/Patient/123").respond_with_json(PATIENT)
    result = fetcher.fetch(base=base, access_token=None, queries={"patient": "Patient/123"})
    assert dict(result.failures) == {}
    (request, _), = server.log
    assert "Authorization" not in request.headers


def test_cookies_are_not_kept(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Patient/1").respond_with_json(PATIENT, headers={"Set-Cookie": "sid=abc; Path=/"})
    server.expect_request("/fhir/Patient/2").respond_with_json(PATIENT)
    fetcher.fetch(base=base, access_token=TOKEN, queries={"p": "Patient/1"})
    fetcher.fetch(base=base, access_token="other-user", queries={"p": "Patient/2"})
    assert "Cookie" not in server.log[-1][0].headers


def test_logs_carry_no_token_or_body(
    server: HTTPServer, base: str, fetcher: FhirFetcher, caplog: pytest.LogCaptureFixture
) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_json(PATIENT)
    with caplog.at_level(logging.DEBUG, logger="service.intake.fhir_client"):
        fetcher.fetch(base=base, access_token=TOKEN, queries={"patient": "Patient/123"})
    assert "key=patient host=127.0.0.1 status=200" in caplog.text
    assert TOKEN not in caplog.text
    assert "1970-01-01" not in caplog.text


def test_queries_run_concurrently(slow_server: HTTPServer, fetcher: FhirFetcher) -> None:
    for kind in ("Condition", "Procedure", "Observation"):
        slow_server.expect_request(f"/fhir/{kind}").respond_with_handler(sleeping(0.5, searchset()))
    queries = {k: f"{k}?patient=123" for k in ("Condition", "Procedure", "Observation")}
    started = time.monotonic()
    result = fetcher.fetch(base=slow_server.url_for("/fhir"), access_token=TOKEN, queries=queries)
    elapsed = time.monotonic() - started
    assert dict(result.failures) == {}
    assert set(result.resources) == set(queries)
    assert elapsed < 1.2


def test_one_key_failing_does_not_spoil_the_others(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_json(PATIENT)
    server.expect_request("/fhir/Condition").respond_with_data("", status=500)
    result = fetcher.fetch(
        base=base, access_token=TOKEN, queries={"patient": "Patient/123", "conditions": "Condition?patient=123"}
    )
    assert dict(result.resources) == {"patient": (PATIENT,)}
    assert dict(result.failures) == {"conditions": "HTTP 500"}
    assert result.requests_made == 2


# --- base_allowed --------------------------------------------------------------------------------

ALLOWED = ["https://ehr.example.org/fhir"]


@pytest.mark.parametrize(
    ("base", "allowed", "expected"),
    [
        ("https://ehr.example.org/fhir", ALLOWED, True),
        ("https://ehr.example.org/fhir/", ALLOWED, True),              # trailing slash
        ("https://EHR.example.org/fhir", ALLOWED, True),               # host names are case-insensitive
        ("https://ehr.example.org:443/fhir", ALLOWED, True),           # the default port, spelt out
        ("https://ehr.example.org/fhir", ["https://ehr.example.org/fhir/"], True),
        ("http://ehr.example.org/fhir", ALLOWED, False),               # http vs https
        ("https://ehr.example.org:8443/fhir", ALLOWED, False),         # other port
        ("https://ehr.example.org/fhir.evil.com", ALLOWED, False),     # prefix attack on the path
        ("https://ehr.example.org.evil.com/fhir", ALLOWED, False),     # prefix attack on the host
        ("https://ehr.example.org/fhir/r4", ALLOWED, False),           # a sub-path is another base
        ("https://ehr.example.org/", ALLOWED, False),                  # a parent path too
        ("https://ehr.example.org/FHIR", ALLOWED, False),              # paths are case-sensitive
        ("https://user@ehr.example.org/fhir", ALLOWED, False),         # credentials in the URL
        ("https://ehr.example.org/fhir?x=1", ALLOWED, False),
        ("https://ehr.example.org/fhir", [], False),
        ("https://anything.example.com/r4", None, True),              # development profile: any base
        ("ftp://anything.example.com/r4", None, False),               # ... but only http(s)
        ("not a url", None, False),
        ("https://ehr.example.org:99999/fhir", None, False),          # unparseable port
    ],
)
def test_base_allowed(base: str, allowed: list[str] | None, expected: bool) -> None:
    assert base_allowed(base, allowed) is expected


# --- against a real FHIR server (Medplum's in-memory one, tests/fhirserver) ----------------------


@pytest.fixture(scope="module")
def fhir_base() -> Iterator[str]:
    with running_fhir_server() as url:
        yield url


def test_paging_against_a_real_fhir_server(fhir_base: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient", "id": "pt-lbp-1", "birthDate": "1980-05-01"}}]
        + [
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": f"cond-lbp-{i}",
                    "subject": {"reference": "Patient/pt-lbp-1"},
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
                }
            }
            for i, code in enumerate(["M54.50", "M54.16", "G83.4"])
        ],
    }
    assert load_bundle(fhir_base, bundle) == ["Patient/pt-lbp-1", "Condition/cond-lbp-0", "Condition/cond-lbp-1",
                                              "Condition/cond-lbp-2"]
    with FhirFetcher(timeout_seconds=5.0) as fetcher:
        result = fetcher.fetch(
            base=fhir_base,
            access_token=TOKEN,
            queries={"patient": "Patient/pt-lbp-1", "conditions": "Condition?patient=pt-lbp-1&_count=2"},
            deadline=time.monotonic() + 10,
        )
    assert dict(result.failures) == {}
    assert [p["id"] for p in result.resources["patient"]] == ["pt-lbp-1"]
    assert sorted(c["id"] for c in result.resources["conditions"]) == ["cond-lbp-0", "cond-lbp-1", "cond-lbp-2"]
    assert result.requests_made == 3  # one read, two pages of conditions


def test_real_fhir_server_read_of_a_missing_patient(fhir_base: str) -> None:
    with FhirFetcher(timeout_seconds=5.0) as fetcher:
        result = fetcher.fetch(base=fhir_base, access_token=None, queries={"patient": "Patient/nobody"})
    assert dict(result.failures) == {"patient": "not found"}


# --- issue 15: dot segments, drip-fed and compressed bodies ---------------------------------------


@pytest.mark.parametrize(
    "next_path",
    [
        "http://{here}/fhir/../other/Condition?page=2",         # dot segments after the base prefix
        "http://{here}/fhir/%2e%2e/other/Condition?page=2",     # the same, percent-encoded
        "http://{here}/fhir/%2E%2e/other/Condition?page=2",
        "http://{here}/fhir/.%2e/other/Condition?page=2",
        "../other/Condition?page=2",                             # relative
        "http://{here}/fhir/..%2fother/Condition?page=2",       # an encoded slash
        "http://{here}/fhir/..%5Cother/Condition?page=2",       # an encoded backslash
    ],
)
def test_next_link_with_dot_segments_leaving_the_base_is_not_followed(
    server: HTTPServer, base: str, fetcher: FhirFetcher, next_path: str
) -> None:
    next_url = next_path.format(here=f"127.0.0.1:{server.port}")
    server.expect_request("/fhir/Condition").respond_with_json(searchset(condition("a"), next_url=next_url))
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert dict(result.failures) == {"conditions": "next link outside the FHIR base"}
    assert result.requests_made == 1
    assert len(server.log) == 1  # the token went nowhere else on this host


def test_next_link_with_dot_segments_inside_the_base_is_followed_resolved(
    server: HTTPServer, base: str, fetcher: FhirFetcher
) -> None:
    next_url = f"http://127.0.0.1:{server.port}/fhir/x/%2e%2e/Condition?page=2"
    server.expect_ordered_request("/fhir/Condition", query_string="patient=123").respond_with_json(
        searchset(condition("a"), next_url=next_url))
    server.expect_ordered_request("/fhir/Condition", query_string="page=2").respond_with_json(searchset(condition("b")))
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"conditions": "Condition?patient=123"})
    assert [r["id"] for r in result.resources["conditions"]] == ["a", "b"]


@contextlib.contextmanager
def raw_server(handler: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-connection-at-a-time HTTP server written with sockets, for what werkzeug cannot send:
    a body with a Content-Length drip-fed a byte at a time."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=_answer, args=(conn,), daemon=True).start()

    def _answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            handler(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/fhir"
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_drip_fed_body_frees_the_thread_at_the_time_limit(server: HTTPServer, base: str) -> None:
    # Content-Length, then a byte every 0.1 s: each read gets data within the read timeout, so only a
    # total time enforced on the socket stops it; the fetch thread must be free again right after.
    body = json.dumps(PATIENT).encode()

    def drip(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for byte in body:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)

    server.expect_request("/fhir/Patient/123").respond_with_json(PATIENT)
    with raw_server(drip) as slow_base, FhirFetcher(timeout_seconds=0.5, max_workers=1) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(base=slow_base, access_token=TOKEN, queries={"p": "Patient/123"})
        assert dict(result.failures) == {"p": "timeout"}
        assert time.monotonic() - started < 0.5 + 0.3
        # the one fetch thread is free: the next call, to a healthy server, gets its data
        healthy = fetcher.fetch(base=base, access_token=TOKEN, queries={"p": "Patient/123"},
                                deadline=time.monotonic() + 0.5)
        assert dict(healthy.failures) == {}
        assert healthy.resources["p"][0]["id"] == "123"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bomb_stops_at_the_byte_budget(server: HTTPServer, base: str, encoding: str) -> None:
    # ~100 kB on the wire that would inflate to 100 MB; the budget (1 MB) counts the inflated bytes
    # as they are produced, so memory never holds more than about the budget.
    inflated = b'{"resourceType": "Patient", "id": "123", "text": "' + b" " * 100_000_000 + b'"}'
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    bomb = compressor.compress(inflated) + compressor.flush()
    del inflated
    assert len(bomb) < 1_000_000
    server.expect_request("/fhir/Patient/123").respond_with_data(
        bomb, headers={"Content-Encoding": encoding}, content_type="application/fhir+json")
    tracemalloc.start()
    try:
        with FhirFetcher(timeout_seconds=5.0, max_bytes=1_000_000) as fetcher:
            result = fetcher.fetch(base=base, access_token=TOKEN, queries={"p": "Patient/123"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dict(result.failures) == {"p": "response too large"}
    assert peak < 20_000_000


def test_compressed_body_within_the_budget_is_read(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    compressed = gzip.compress(json.dumps(PATIENT).encode())
    server.expect_request("/fhir/Patient/123").respond_with_data(
        compressed, headers={"Content-Encoding": "gzip"}, content_type="application/fhir+json")
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"p": "Patient/123"})
    assert result.resources["p"][0] == PATIENT
    assert server.log[0][0].headers["Accept-Encoding"] == "gzip, deflate"


def test_unknown_content_encoding_is_unreadable(server: HTTPServer, base: str, fetcher: FhirFetcher) -> None:
    server.expect_request("/fhir/Patient/123").respond_with_data(
        b"\x00\x01", headers={"Content-Encoding": "br"}, content_type="application/fhir+json")
    result = fetcher.fetch(base=base, access_token=TOKEN, queries={"p": "Patient/123"})
    assert dict(result.failures) == {"p": "unreadable body"}

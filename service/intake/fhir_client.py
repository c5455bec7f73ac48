"""Fetch from the EHR's FHIR server what a hook request's prefetch lacks.

``FhirFetcher.fetch`` runs one relative FHIR query per prefetch key, concurrently, and reports per key
either the resources obtained or a reason the key could not be had. It never raises for a network or
server problem and returns by the caller's deadline, so a slow EHR costs the card its data, not the
clinician their order screen (cds-hooks-notes.md, "Latency").

Safety rules kept here (cds-hooks-notes.md, "Security"; style.md 3.6):

- the access token goes only to the requested base: redirects are not followed, and a ``next`` link
  is followed only when it lies under that base once its dot segments (``..``, also percent-encoded
  as ``%2e%2e``) are resolved; the resolved URL is the one requested, and encoded slashes are refused;
- no token, response body or URL is logged or put in a failure reason; logs carry key, host, status
  and elapsed time only; an OperationOutcome is summarised by its issues' severities and codes, never
  its texts (they may name the patient);
- every wait is bounded: each response has a total time (connecting, waiting for the headers and
  reading the body), enforced on the socket before each read, so a body drip-fed a byte at a time
  frees its thread when that time is up; the byte budget counts the bytes on the wire and the bytes
  they inflate to (gzip, deflate) as they are read, so a compressed bomb stops at the budget.
- no cookies are kept, and no credentials are taken from the environment (``~/.netrc``).
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3
import urllib3.exceptions

from service.security.fhir_servers import normalized_base
from service.security.fhir_servers import resolve_under

log = logging.getLogger(__name__)

_FHIR_JSON = "application/fhir+json"
_DEADLINE_GRACE_SECONDS = 0.1  # lets a worker whose timeout was clipped to the deadline report its own reason
_CHUNK_BYTES = 64 * 1024
_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,39}")  # OperationOutcome issue codes and severities (closed value sets)
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "identity": None, "": None}
_READ_QUERY = re.compile(r"[A-Za-z]+/[A-Za-z0-9\-.]{1,64}")  # `Patient/123`: a read, not a search


class FhirFetchError(Exception):
    """One prefetch key could not be fetched; ``reason`` is safe to log (no token, no body)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key        # the prefetch key, e.g. "conditions"
        self.reason = reason  # "timeout", "HTTP 401", "not found", ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchResult:
    resources: Mapping[str, tuple[dict, ...]]  # prefetch key -> resources (Bundle entries flattened, or the one read)
    failures: Mapping[str, str]                # prefetch key -> reason it could not be had
    requests_made: int                         # HTTP requests sent, all keys and pages together


class FhirFetcher:
    """Runs FHIR reads and searches for missing prefetch keys; one per app (style.md 3.5)."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        max_pages: int = 10,
        max_bytes: int = 20_000_000,
        max_workers: int = 8,
    ) -> None:
        if timeout_seconds <= 0 or max_pages < 1 or max_bytes < 1 or max_workers < 1:
            raise ValueError("timeout_seconds, max_pages, max_bytes and max_workers must be positive")
        self._timeout = timeout_seconds
        self._max_pages = max_pages
        self._max_bytes = max_bytes
        self._max_workers = max_workers
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fhir-fetch")
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()
        self._closed = False

    def fetch(
        self,
        *,
        base: str,
        access_token: str | None,
        queries: Mapping[str, str],
        deadline: float | None = None,
        continue_from: Mapping[str, tuple[tuple[dict, ...], str]] | None = None,
    ) -> FetchResult:
        """Fetch every key concurrently; a key in ``continue_from`` follows its next link instead of its query.

        ``deadline`` is a ``time.monotonic()`` value; without one, the whole fetch is bounded by
        ``timeout_seconds * max_pages``. Whatever has not finished by then fails with "timeout".
        Each request is also bounded by ``timeout_seconds``; ``max_pages`` and ``max_bytes`` count
        what this call fetches for a key (a continued prefetch's first page is not counted).
        """
        started = time.monotonic()
        if deadline is None:
            deadline = started + self._timeout * self._max_pages
        continue_from = continue_from or {}
        keys = list(dict.fromkeys([*queries, *continue_from]))
        counter = _Counter()
        if normalized_base(base) is None:
            return _result({}, {key: "invalid FHIR base" for key in keys}, counter)
        session = self._session(base)
        futures: dict[str, Future[tuple[dict, ...]]] = {}
        for key in keys:
            job = _Job(
                key=key,
                base=base.strip().rstrip("/"),
                token=access_token,
                query=queries.get(key),
                continuation=continue_from.get(key),
                deadline=deadline,
            )
            futures[key] = self._executor.submit(self._run, session, job, counter)
        wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()) + _DEADLINE_GRACE_SECONDS)
        resources: dict[str, tuple[dict, ...]] = {}
        failures: dict[str, str] = {}
        for key, future in futures.items():
            if not future.done():
                future.cancel()  # a queued job never starts; a running one is abandoned, its result ignored
                failures[key] = "timeout"
                continue
            try:
                resources[key] = future.result()
            except FhirFetchError as exc:
                failures[key] = exc.reason
            except Exception:  # a bug of ours must cost one key, not the hook call
                log.exception("fhir fetch key=%s failed unexpectedly", key)
                failures[key] = "internal error"
        return _result(resources, failures, counter)

    def close(self) -> None:
        """Stop the worker threads (abandoning any still running) and close pooled connections."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        for session in sessions:
            session.close()

    def __enter__(self) -> FhirFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def for_call(self, *, base: str, access_token: str | None, deadline: float) -> CallFetcher:
        """The fetcher of one hook call: this base and token only, bounded by the call's deadline."""
        return CallFetcher(self, base=base, access_token=access_token, deadline=deadline)

    def _session(self, base: str) -> requests.Session:
        """The pooled session for this base, made once; it is only read afterwards, so threads share it."""
        origin = normalized_base(base)
        assert origin is not None  # checked by the caller
        with self._lock:
            if self._closed:
                raise RuntimeError("FhirFetcher is closed")
            session = self._sessions.get(origin)
            if session is None:
                session = _new_session(self._max_workers)
                self._sessions[origin] = session
            return session

    def _run(self, session: requests.Session, job: _Job, counter: _Counter) -> tuple[dict, ...]:
        """Fetch one key: a read, or a search followed through its next links."""
        if job.continuation is not None:
            collected, url = list(job.continuation[0]), job.continuation[1]
        else:
            query = job.query or ""
            # An absolute URL would leave the base; token system URIs in the search part are fine.
            if not query or query.startswith("/") or "://" in query.split("?", 1)[0]:
                raise FhirFetchError(job.key, "invalid query")
            collected, url = [], f"{job.base}/{query}"
            if _READ_QUERY.fullmatch(query.split("?", 1)[0]):
                return (self._read(session, job, url, counter),)
        budget = _Budget(self._max_bytes)
        for _ in range(self._max_pages):
            url = _within_base(job, url)
            bundle = self._get(session, job, url, counter, budget, read=False)
            if bundle.get("resourceType") != "Bundle":
                raise FhirFetchError(job.key, f"expected a Bundle, got {_kind(bundle)}")
            collected.extend(_entries(job.key, bundle))
            url = _next_link(bundle)
            if url is None:
                return tuple(collected)
        raise FhirFetchError(job.key, "too many pages")

    def _read(self, session: requests.Session, job: _Job, url: str, counter: _Counter) -> dict:
        resource = self._get(session, job, url, counter, _Budget(self._max_bytes), read=True)
        expected = job.query.split("/", 1)[0] if job.query else None
        if resource.get("resourceType") != expected:
            raise FhirFetchError(job.key, f"expected {expected}, got {_kind(resource)}")
        return resource

    def _get(
        self,
        session: requests.Session,
        job: _Job,
        url: str,
        counter: _Counter,
        budget: _Budget,
        *,
        read: bool,
    ) -> dict:
        """One GET: status checked, body read within the byte budget and the deadline, JSON parsed."""
        remaining = min(self._timeout, job.deadline - time.monotonic())
        if remaining <= 0:
            raise FhirFetchError(job.key, "timeout")
        # Only encodings this module inflates itself, within the byte budget (not br or zstd).
        headers = {"Accept": _FHIR_JSON, "Accept-Encoding": "gzip, deflate"}
        if job.token:
            headers["Authorization"] = f"Bearer {job.token}"
        started = time.monotonic()
        status: int | str = "-"
        try:
            counter.add()
            # total: connecting and waiting for the headers together, not each in turn
            timeout = urllib3.Timeout(total=remaining)
            with session.get(url, headers=headers, timeout=timeout, allow_redirects=False, stream=True) as response:
                status = response.status_code
                _check_status(job.key, response, read=read)
                body = _read_body(job.key, response, budget, started + remaining)
        except requests.RequestException as exc:
            raise FhirFetchError(job.key, _network_reason(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:  # raised by the raw reads of _read_body
            raise FhirFetchError(job.key, _network_reason(requests.ConnectionError(exc))) from exc
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000
            log.debug(
                "fhir fetch key=%s host=%s status=%s elapsed_ms=%.0f",
                job.key, urlsplit(url).hostname, status, elapsed_ms,
            )
        resource = _parse(job.key, body)
        if resource.get("resourceType") == "OperationOutcome":
            raise FhirFetchError(job.key, _outcome_reason(resource))
        return resource


class CallFetcher:
    """What one hook call may fetch from its EHR's FHIR server, and what it did fetch.

    Built per call: ``FhirFetcher.for_call`` for a base the caller may send its token to, or
    ``refusing`` for one it may not (nothing is contacted; every key fails with the reason). It is
    what ``prefetch.resolve`` asks for the keys prefetch lacks. ``fetches`` lists every fetch made:
    the keys asked, in order, and the result.
    """

    def __init__(self, client: FhirFetcher | None, *, base: str, access_token: str | None, deadline: float) -> None:
        self._client = client          # None: refusing
        self._base = base
        self._token = access_token     # never logged, sent only to ``base``
        self._deadline = deadline      # a time.monotonic() value
        self._refusal = ("", "")       # (reason, issuer) when refusing
        self.fetches: list[tuple[tuple[str, ...], FetchResult]] = []

    @classmethod
    def refusing(cls, *, issuer: str, reason: str) -> CallFetcher:
        """A fetcher for a base this issuer may not reach: it contacts nothing, every key fails with ``reason``."""
        fetcher = cls(None, base="", access_token=None, deadline=0.0)
        fetcher._refusal = (reason, issuer)
        return fetcher

    def fetch(
        self, queries: Mapping[str, str], continue_from: Mapping[str, tuple[tuple[dict, ...], str]]
    ) -> FetchResult:
        """Fetch these keys (a key in ``continue_from`` follows its next link) by the call's deadline."""
        if self._client is None:
            reason, issuer = self._refusal
            log.warning("fhirServer not allowed for issuer %s; not contacted", issuer)
            result = FetchResult(resources={}, failures={key: reason for key in queries}, requests_made=0)
        else:
            result = self._client.fetch(
                base=self._base, access_token=self._token, queries=queries,
                continue_from=continue_from, deadline=self._deadline,
            )
        self.fetches.append((tuple(dict.fromkeys([*queries, *continue_from])), result))
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    key: str                                              # prefetch key
    base: str                                             # FHIR base without trailing slash
    token: str | None                                     # bearer token, or None for an open server
    query: str | None                                     # relative query, e.g. "Condition?patient=1"
    continuation: tuple[tuple[dict, ...], str] | None     # (resources in hand, next link) of a paged prefetch
    deadline: float                                       # time.monotonic() by which to give up


class _Counter:
    """Requests sent during one fetch, counted from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1


class _Budget:
    """Bytes a key may still read, across all of its pages: on the wire, and once inflated."""

    def __init__(self, max_bytes: int) -> None:
        self.remaining = max_bytes          # bytes as received (compressed, if they are)
        self.inflated_remaining = max_bytes  # bytes after gzip/deflate decoding

    def take(self, key: str, size: int) -> None:
        self.remaining -= size
        if self.remaining < 0:
            raise FhirFetchError(key, "response too large")

    def take_inflated(self, key: str, size: int) -> None:
        self.inflated_remaining -= size
        if self.inflated_remaining < 0:
            raise FhirFetchError(key, "response too large")


class _NoAuth(requests.auth.AuthBase):
    """Stops requests from adding credentials from ~/.netrc when we send no token."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def _new_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.auth = _NoAuth()
    # One session serves every user of this EHR: a cookie kept from one call must not ride on another.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


def _result(resources: dict[str, tuple[dict, ...]], failures: dict[str, str], counter: _Counter) -> FetchResult:
    return FetchResult(
        resources=MappingProxyType(resources),
        failures=MappingProxyType(failures),
        requests_made=counter.value,
    )


def _within_base(job: _Job, url: str) -> str:
    """The next link resolved against the base (``fhir_servers.resolve_under``); refused when it
    leaves the base (it would carry the token). The resolved URL is what gets requested."""
    resolved = resolve_under(job.base, url)
    if resolved is None:
        raise FhirFetchError(job.key, "next link outside the FHIR base")
    return resolved


def _check_status(key: str, response: requests.Response, *, read: bool) -> None:
    status = response.status_code
    if 300 <= status < 400:
        raise FhirFetchError(key, "redirect not followed")
    if status == 404 and read:
        raise FhirFetchError(key, "not found")
    if not 200 <= status < 300:
        raise FhirFetchError(key, f"HTTP {status}")


def _read_body(key: str, response: requests.Response, budget: _Budget, give_up_at: float) -> bytes:
    """Read the body as it comes, within the byte budget (wire and inflated) and by ``give_up_at``.

    Each read returns what has arrived (``read1``), after the socket's timeout has been set to the
    time left, so neither a body drip-fed a byte at a time nor a stalled one can outlast it.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > budget.remaining:
        raise FhirFetchError(key, "response too large")
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _ENCODINGS:
        raise FhirFetchError(key, "unreadable body")
    wbits = _ENCODINGS[encoding]
    inflater = zlib.decompressobj(wbits) if wbits is not None else None
    raw = response.raw
    chunks: list[bytes] = []
    while True:
        _limit_socket(key, raw, give_up_at)
        data = raw.read1(_CHUNK_BYTES, decode_content=False)
        if not data:
            break
        budget.take(key, len(data))
        if inflater is None:
            budget.take_inflated(key, len(data))
            chunks.append(data)
        else:
            chunks.extend(_inflate(key, inflater, data, budget))
    if inflater is not None:
        chunks.append(_checked_inflate(key, lambda: inflater.flush(budget.inflated_remaining + 1), budget))
    raw.release_conn()  # read to the end: the connection can serve the next request
    return b"".join(chunks)


def _limit_socket(key: str, raw: urllib3.HTTPResponse, give_up_at: float) -> None:
    """Set the connection's socket timeout to the time left before ``give_up_at`` (none left: timeout)."""
    left = give_up_at - time.monotonic()
    if left <= 0:
        raise FhirFetchError(key, "timeout")
    connection = raw.connection
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(left)


def _inflate(key: str, inflater: Any, data: bytes, budget: _Budget) -> list[bytes]:
    """Inflate ``data`` in pieces no larger than what the budget has left."""
    out = []
    while data:
        out.append(_checked_inflate(key, lambda: inflater.decompress(data, budget.inflated_remaining + 1), budget))
        data = inflater.unconsumed_tail
    return out


def _checked_inflate(key: str, step: Callable[[], bytes], budget: _Budget) -> bytes:
    try:
        piece = step()
    except zlib.error as exc:
        raise FhirFetchError(key, "unreadable body") from exc
    budget.take_inflated(key, len(piece))
    return piece


def _parse(key: str, body: bytes) -> dict:
    try:
        resource = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise FhirFetchError(key, "unreadable body") from exc
    if not isinstance(resource, dict):
        raise FhirFetchError(key, "unreadable body")
    return resource


def _entries(key: str, bundle: dict) -> list[dict]:
    """The resources of a Bundle page; an error-level search outcome entry fails the key.

    Outcome entries of severity warning or information are dropped, not failed: servers use them to
    say "no match" on a successful, empty search (the R4 spec's own bundle-search-warning example).
    """
    out = []
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        resource = entry["resource"]
        is_outcome = (entry.get("search") or {}).get("mode") == "outcome"
        if is_outcome or resource.get("resourceType") == "OperationOutcome":
            if is_outcome and _has_error(resource):
                raise FhirFetchError(key, _outcome_reason(resource))
            continue
        out.append(resource)
    return out


def _next_link(bundle: dict) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _has_error(outcome: dict) -> bool:
    issues = outcome.get("issue") or ()
    return any(isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in issues)


def _outcome_reason(outcome: dict) -> str:
    """"OperationOutcome: error security, warning processing": severities and codes only. Its texts
    (diagnostics, details) are never copied: servers put patient details and tokens in them."""
    issues = []
    for issue in outcome.get("issue") or ():
        if isinstance(issue, dict):
            severity, code = issue.get("severity"), issue.get("code")
            severity = severity if isinstance(severity, str) and _ISSUE_CODE.fullmatch(severity) else "unknown"
            code = code if isinstance(code, str) and _ISSUE_CODE.fullmatch(code) else "unknown"
            issues.append(f"{severity} {code}")
    summary = ", ".join(dict.fromkeys(issues[:5])) or "no issues"
    return f"OperationOutcome: {summary}"


def _network_reason(exc: requests.RequestException) -> str:
    """A short, body-free reason for a requests exception (its message may hold the URL)."""
    if isinstance(exc, requests.Timeout):
        return "timeout"
    cause = exc.args[0] if exc.args else None
    # A read timeout while streaming the body surfaces as ConnectionError(ReadTimeoutError).
    if isinstance(exc, requests.ConnectionError) and isinstance(cause, urllib3.exceptions.ReadTimeoutError):
        return "timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return "unreadable body"
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return "invalid URL"
    return f"request failed ({type(exc).__name__})"


def _kind(resource: dict) -> str:
    kind = resource.get("resourceType")
    return kind if isinstance(kind, str) and kind.isalnum() else "something else"

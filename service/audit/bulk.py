"""``--fhir-server``: kick off a FHIR Bulk Data ``$export``, wait for it, download what it wrote.

The asynchronous pattern of the Bulk Data Access IG: ``GET [base]/$export`` with ``Prefer:
respond-async`` answers 202 and a ``Content-Location``; polling that URL answers 202 (honouring its
``Retry-After``) until a 200 whose body is the manifest, listing one or more NDJSON files per type.

The rules of the hook path hold (``security.fhir_servers``, ``intake.fhir_client``): the base must be one a configured issuer's
``fhir_servers`` lists (any base only for a development issuer with ``any_fhir_server``); the access
token goes only to URLs under that base (a status or file URL elsewhere gets no token, and a file
that ``requiresAccessToken`` there is refused); redirects are not followed; no cookies or
``~/.netrc`` credentials; a timeout on every request; no token or body in any message.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin
from urllib.parse import urlsplit

import orjson
import requests

from service.audit.export import DIRECTORY_TYPES
from service.audit.patient import reading_filters
from service.config import Settings
from service.errors import ExportError
from service.security import fhir_servers

FHIR_JSON = "application/fhir+json"
DEFAULT_RETRY_SECONDS = 2.0      # when a 202 gives no Retry-After
MAX_RETRY_SECONDS = 300.0        # a Retry-After longer than this is shortened to it
MAX_WAIT_SECONDS = 24 * 3600.0   # give up on an export that is not ready in a day
CHUNK_BYTES = 1024 * 1024

Log = Callable[[str], None]


def allowed_base(settings: Settings, base: str) -> bool:
    """Whether a configured issuer may send its tokens to this base (the hook path's allowlist)."""
    return any(fhir_servers.token_may_go_to(issuer, base) for issuer in settings.issuers)


def export_types() -> list[str]:
    """The resource types the audit reads, for ``_type`` (the service's templates decide)."""
    from service.pipeline import Evaluator

    return sorted(set(reading_filters(Evaluator.load())) | DIRECTORY_TYPES)


def kick_off_and_download(
    settings: Settings, base: str, token: str | None, dest: Path, *, log: Log,
    sleep: Callable[[float], None] = time.sleep, max_wait_seconds: float = MAX_WAIT_SECONDS,
) -> Path:
    """Run $export on the base and download its files into dest; dest."""
    base = base.rstrip("/")
    if not allowed_base(settings, base):
        raise ExportError(f"{base} is not a FHIR server any configured issuer's tokens may be sent to "
                          "(add it to the issuer's fhir_servers)")
    with _session() as session:
        client = _Client(session, base, token, settings.fhir.timeout_seconds)
        status_url = client.kick_off(export_types())
        log(f"$export accepted by {urlsplit(base).netloc}; waiting for the files")
        manifest = client.wait(status_url, sleep, max_wait_seconds, log)
        return client.download(manifest, dest, log)


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no ~/.netrc credentials, no proxy variables
    return session


class _Client:
    def __init__(self, session: requests.Session, base: str, token: str | None, timeout: float) -> None:
        self.session = session
        self.base = base
        self.token = token
        self.timeout = timeout

    def get(self, url: str, *, accept: str = FHIR_JSON, with_token: bool = True, **kwargs: Any) -> requests.Response:
        headers = {"Accept": accept, **kwargs.pop("headers", {})}
        resolved = fhir_servers.resolve_under(self.base, url) if self.token and with_token else None
        if resolved is not None:  # the token goes to the URL as resolved, never past the base
            url = resolved
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.session.get(url, headers=headers, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise ExportError(f"{_where(url)}: {type(exc).__name__} (the FHIR server could not be reached)") from None
        if 300 <= response.status_code < 400:
            raise ExportError(f"{_where(url)}: HTTP {response.status_code} redirect not followed")
        return response

    def kick_off(self, types: list[str]) -> str:
        url = f"{self.base}/$export"
        response = self.get(url, params={"_type": ",".join(types)}, headers={"Prefer": "respond-async"})
        if response.status_code != 202:
            raise ExportError(f"{_where(url)}: expected 202 Accepted, got HTTP {response.status_code}{_outcome(response)}")
        location = response.headers.get("Content-Location")
        if not location:
            raise ExportError(f"{_where(url)}: the 202 has no Content-Location to poll")
        return urljoin(url, location)

    def wait(self, status_url: str, sleep: Callable[[float], None], max_wait: float, log: Log) -> dict[str, Any]:
        give_up = time.monotonic() + max_wait
        while True:
            response = self.get(status_url, accept="application/json")
            if response.status_code == 200:
                return _manifest(status_url, response)
            if response.status_code not in (202, 429):
                raise ExportError(f"{_where(status_url)}: the export failed, HTTP {response.status_code}{_outcome(response)}")
            delay = retry_after(response.headers.get("Retry-After"))
            if time.monotonic() + delay > give_up:
                raise ExportError(f"{_where(status_url)}: the export was not ready within {max_wait:.0f} s")
            progress = response.headers.get("X-Progress")
            log(f"export in progress{f' ({progress[:80]})' if progress else ''}; next poll in {delay:.0f} s")
            sleep(delay)

    def download(self, manifest: dict[str, Any], dest: Path, log: Log) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        needs_token = manifest.get("requiresAccessToken") is True
        seen: dict[str, int] = {}
        for item in manifest["output"]:
            kind, url = item["type"], item["url"]
            if needs_token and fhir_servers.resolve_under(self.base, url) is None:
                raise ExportError(f"{_where(url)}: an export file that requires the access token lies outside "
                                  f"{self.base}; the token is not sent there")
            seen[kind] = seen.get(kind, 0) + 1
            target = dest / f"{kind}.{seen[kind]:03d}.ndjson"
            self._fetch_file(url, target, needs_token)
        errors = manifest.get("error")
        if isinstance(errors, list) and errors:
            log(f"the server reported {len(errors)} error file(s) (OperationOutcome) with the export; not downloaded")
        log(f"downloaded {sum(seen.values())} export files into {dest}")
        return dest

    def _fetch_file(self, url: str, target: Path, with_token: bool) -> None:
        response = self.get(url, accept="application/fhir+ndjson", with_token=with_token, stream=True)
        with response:
            if response.status_code != 200:
                raise ExportError(f"{_where(url)}: export file download failed, HTTP {response.status_code}")
            try:
                with target.open("wb") as fh:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        fh.write(chunk)
            except requests.RequestException as exc:
                raise ExportError(f"{_where(url)}: export file download broke off ({type(exc).__name__})") from None


def retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), within [0, MAX_RETRY_SECONDS]."""
    if not value:
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (ValueError, TypeError):
            seconds = DEFAULT_RETRY_SECONDS  # neither seconds nor an HTTP date
    return max(0.0, min(MAX_RETRY_SECONDS, seconds))


def _manifest(url: str, response: requests.Response) -> dict[str, Any]:
    try:
        manifest = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ExportError(f"{_where(url)}: the completed export's manifest is not JSON") from None
    outputs = manifest.get("output") if isinstance(manifest, dict) else None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("type"), str) and isinstance(o.get("url"), str) for o in outputs
    ):
        raise ExportError(f"{_where(url)}: the manifest has no valid output list (type and url per file)")
    return manifest


def _outcome(response: requests.Response) -> str:
    """The first OperationOutcome diagnostics of an error answer, shortened (never the whole body)."""
    try:
        body = orjson.loads(response.content)
        issue = body["issue"][0]
        text = issue.get("diagnostics") or issue.get("details", {}).get("text") or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return f": {str(text)[:200]}" if text else ""


def _where(url: str) -> str:
    """A URL as shown in messages: scheme, host and path, never a query (it may carry parameters)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"

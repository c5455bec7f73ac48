"""`lumbar-mri-cds call`: one signed CDS Hooks call to a running service, as an EHR makes it.

The token is signed by the development profile's local issuer (security/signer.py); the request file
gets a fresh ``hookInstance`` (every call is a new hook instance, as in an EHR), and, with ``as_of``,
its dates moved so that the day its story is written for becomes today.
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import requests

from service import config
from service import errors
from service.facts.dates import shift_dates
from service.catalogue import load_catalogue
from service.catalogue import service_for as first_service_for
from service.security import signer as signer_mod

TIMEOUT_SECONDS = 30.0
# HTTP answers that have an error class (and so a CLI exit code) of their own.
_BY_STATUS: dict[int, type[errors.ServiceError]] = {
    cls.status: cls for cls in (errors.InvalidRequest, errors.DataUnobtainable, errors.StoreUnavailable)
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResult:
    url: str                    # the service URL called
    response: dict[str, Any]    # the CDS Hooks response


def service_for(data: Any) -> str:
    """The id of the service that answers this request's hook; InvalidRequest otherwise."""
    hook = data.get("hook") if isinstance(data, dict) else None
    services = load_catalogue()  # cards/services.toml, the one list of services
    spec = first_service_for(services, hook)
    if spec is None:
        raise errors.InvalidRequest(f"hook must be one of {', '.join(s.hook for s in services.values())}", expression="hook")
    return spec.id


def _local_signer(settings: config.Settings) -> signer_mod.Signer:
    signer = signer_mod.local_signer(settings)
    if signer is None:
        raise errors.ConfigError(
            f"`call` signs as the development profile's local issuer; {settings.source or 'this configuration'} "
            f"is the {settings.profile} profile, which never trusts it (sign with your EHR's key instead)"
        )
    return signer


def _target(data: dict[str, Any], base_url: str, settings: config.Settings) -> tuple[str, str]:
    """The URL to post to, and the token's audience (public_base_url, when set, + the same path)."""
    path = f"/cds-services/{service_for(data)}"
    return base_url.rstrip("/") + path, (settings.public_base_url or base_url.rstrip("/")) + path


def curl_command(data: dict[str, Any], request_file: Path, *, base_url: str, settings: config.Settings) -> str:
    """The curl command that makes the same call with the file as it is (the token lives 5 minutes)."""
    url, audience = _target(data, base_url, settings)
    token = _local_signer(settings).token(audience)
    return shlex.join([
        "curl", "-sS", "-X", "POST", url, "-H", f"Authorization: Bearer {token}",
        "-H", "Content-Type: application/json", "--data-binary", f"@{request_file}",
    ])


def call(data: dict[str, Any], *, base_url: str, settings: config.Settings, as_of: date | None = None) -> CallResult:
    """Post `data` to the service at `base_url`, signed as the local issuer; the 200 answer, or the
    error class of the HTTP status with the server's message."""
    signer = _local_signer(settings)
    body = {**(shift_dates(data, (date.today() - as_of).days) if as_of else data), "hookInstance": str(uuid.uuid4())}
    url, audience = _target(data, base_url, settings)
    try:
        answer = requests.post(url, json=body, headers=signer.headers(audience), timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise errors.ServiceError(
            f"no answer from {url} ({type(exc).__name__}); is `lumbar-mri-cds serve` running there?"
        ) from None
    if answer.status_code != 200:
        raise _failure(url, answer)
    try:
        response = answer.json()
    except ValueError:
        raise errors.ServiceError(f"{url} answered 200 without JSON: is lumbar-mri-cds serving there?") from None
    if not isinstance(response, dict) or not isinstance(response.get("cards"), list):
        raise errors.ServiceError(f"{url} answered 200 without a CDS Hooks response: is lumbar-mri-cds serving there?")
    return CallResult(url=url, response=response)


def _failure(url: str, answer: requests.Response) -> errors.ServiceError:
    if answer.status_code == 401:
        return errors.ServiceError(
            f"{url} answered 401: the token was refused. `call` signs as {config.LOCAL_ISSUER}, which only a "
            "server in the development profile trusts, with the same data directory (where the key is); "
            "the server's log line says which check failed"
        )
    try:
        issue = answer.json()["issue"][0]
        detail = issue.get("diagnostics", "")
        expression = (issue.get("expression") or [None])[0]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        detail, expression = answer.text[:300], None
    cls = _BY_STATUS.get(answer.status_code, errors.ServiceError)
    return cls(f"{url} answered {answer.status_code}: {detail}", expression=expression)

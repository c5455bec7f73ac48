"""Which FHIR servers an EHR's access token may be sent to: the issuer -> FHIR base allowlist.

A hook call names its ``fhirServer`` and hands us an access token for it. The token goes there only
when the calling issuer is configured for that base (``fhir_servers``; ``any_fhir_server`` in the
development profile), compared as scheme, host, port and path (cds-hooks-notes.md, "Security").
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from service.config import IssuerSettings

_DEFAULT_PORTS = {"http": 80, "https": 443}


def token_may_go_to(issuer: IssuerSettings, base: str) -> bool:
    """Whether this issuer's access tokens may be sent to the FHIR base ``base``."""
    return base_allowed(base, None if issuer.any_fhir_server else issuer.fhir_servers)


def base_allowed(base: str, allowed: Sequence[str] | None) -> bool:
    """Whether ``base`` is an http(s) FHIR base on the allowlist (``None``: any, for development)."""
    origin = normalized_base(base)
    if origin is None:
        return False
    if allowed is None:
        return True
    return any(origin == normalized_base(candidate) for candidate in allowed)


def normalized_base(base: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path without trailing slash), or None if not a plain http(s) base URL."""
    try:
        parts = urlsplit(base.strip())
        port = parts.port
    except (ValueError, AttributeError):
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], parts.path.rstrip("/")

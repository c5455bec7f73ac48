"""Which FHIR servers an EHR's access token may be sent to: the issuer -> FHIR base allowlist.

A hook call names its ``fhirServer`` and hands us an access token for it. The token goes there only
when the calling issuer is configured for that base (``fhir_servers``; ``any_fhir_server`` in the
development profile), compared as scheme, host, port and path (cds-hooks-notes.md, "Security").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urljoin
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

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


def resolve_under(base: str, url: str) -> str | None:
    """``url`` (absolute, or relative to ``base``) resolved, dot segments included (``%2e`` too), when
    it lies at or under the FHIR base: same scheme, host and port, path at or below the base's. None
    when it leaves the base, or holds an encoded slash or a backslash (which a server may read as a
    separator after this check). A bearer token for the base goes only to the URL this returns."""
    parts = urlsplit(urljoin(base + "/", url.strip()))
    path = _resolved_path(parts.path)
    home = normalized_base(base)
    target = normalized_base(urlunsplit((parts.scheme, parts.netloc, path or "/", "", "")))
    if path is None or home is None or target is None or target[:3] != home[:3]:
        return None
    home_path = (_resolved_path(home[3] or "/") or "/").rstrip("/")
    if target[3] != home_path and not (target[3] + "/").startswith(home_path + "/"):
        return None
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _resolved_path(path: str) -> str | None:
    """``path`` with its dot segments removed (RFC 3986 5.2.4), ``%2e`` read as a dot; None when it
    holds an encoded slash or a backslash."""
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in path:
        return None
    segments = _DOT.sub(".", path).split("/")
    out: list[str] = []
    for segment in segments[1:]:  # an absolute URL's path starts with "/"
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is the directory "/a/"
    return "/" + "/".join(out)


_DOT = re.compile("%2e", re.IGNORECASE)

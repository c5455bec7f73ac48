"""CORS for browser-based CDS clients (the CDS Hooks sandbox is one).

A browser sends a preflight ``OPTIONS`` before a ``POST`` carrying ``Authorization``; it is answered
here, before routing, on discovery, service and feedback URLs. The actual answers on those URLs,
errors included, carry ``Access-Control-Allow-Origin`` too, or the browser hides them from the page.

Only configured origins get it (``cors.allow_origins``); ``"*"`` (development) allows any origin by
echoing it, never the literal ``*``, and without ``Access-Control-Allow-Credentials``: the token travels
in a header, not in a cookie, so credentials are never needed. ``Access-Control-Allow-Headers`` names
``Authorization`` explicitly, as a ``*`` there does not cover it.
"""

from __future__ import annotations

import re

from flask import Flask
from flask import Response
from flask import current_app
from flask import request

from service.services import services_of

ALLOW_HEADERS = "Authorization, Content-Type"
ALLOW_METHODS = "GET, POST, OPTIONS"
MAX_AGE_SECONDS = 600  # browsers cache the preflight this long (Chrome caps it at 7200)

# /cds-services, /cds-services/{id}, /cds-services/{id}/feedback
_CDS_PATH = re.compile(r"^/cds-services(?:/[^/]+(?:/feedback)?)?/?$")


def register(app: Flask) -> None:
    """Answer preflights and add CORS headers to the CDS answers of this app."""
    app.before_request(_preflight)
    app.after_request(_add_headers)


def allowed_origin(origin: str | None) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when this origin is not allowed."""
    if not origin:
        return None
    cors = services_of(current_app).settings.cors
    if cors.any_origin or origin.rstrip("/").lower() in {o.lower() for o in cors.allow_origins}:
        return origin
    return None


def _preflight() -> Response | None:
    if request.method != "OPTIONS" or not _CDS_PATH.match(request.path):
        return None
    response = current_app.response_class(status=204)
    response.headers["Allow"] = ALLOW_METHODS
    if allowed_origin(request.headers.get("Origin")):
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
    return response  # _add_headers adds Allow-Origin and Vary


def _add_headers(response: Response) -> Response:
    if not _CDS_PATH.match(request.path):
        return response
    response.vary.add("Origin")  # the answer differs by Origin: caches must keep them apart
    origin = allowed_origin(request.headers.get("Origin"))
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
    return response

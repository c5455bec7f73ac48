"""The one place errors meet HTTP: ServiceError and Werkzeug's HTTPException become
OperationOutcome JSON; anything else becomes a bare 500 logged with a request id (no stack trace
in the response, ever)."""

from __future__ import annotations

import logging
import uuid

import orjson
from flask import Flask
from flask import Response
from flask import g
from werkzeug.exceptions import HTTPException

from service.errors import NotAuthenticated
from service.errors import ServiceError

log = logging.getLogger(__name__)

# Werkzeug statuses -> OperationOutcome issue codes.
_HTTP_ISSUE_CODES = {400: "invalid", 404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


def json_response(value: object, status: int = 200) -> Response:
    """A JSON answer (orjson), as every view of the service gives one."""
    return Response(orjson.dumps(value), status=status, mimetype="application/json")


def operation_outcome(status: int, code: str, message: str, expression: str | None = None) -> Response:
    """An OperationOutcome response with one error issue."""
    issue: dict[str, object] = {"severity": "error", "code": code, "diagnostics": message}
    if expression:
        issue["expression"] = [expression]
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return Response(orjson.dumps(body), status=status, mimetype="application/fhir+json")


def request_id() -> str:
    """The id of the current request (also in the structured log line)."""
    if "request_id" not in g:
        g.request_id = uuid.uuid4().hex
    return g.request_id


def register(app: Flask) -> None:
    """Install the three handlers on the app."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if isinstance(exc, NotAuthenticated):
            return Response(status=401, headers={"WWW-Authenticate": "Bearer"})  # no detail (best practices)
        response = operation_outcome(exc.status, exc.issue_code, exc.message, exc.expression)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return operation_outcome(status, _HTTP_ISSUE_CODES.get(status, "processing"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        rid = request_id()
        log.error("unexpected error, request %s: %s", rid, type(exc).__name__, exc_info=exc)
        return operation_outcome(500, "exception", f"internal error; request id {rid}")

"""What an operator sees: one structured JSON log line per request, and the metrics it counts.

The request line (logger ``lumbar_mri_cds.request``) carries ids and counts only: the request id
(also sent back as ``X-Request-Id`` and named in every 500), the hookInstance, the CDS service, the
token's issuer, status, latency, rule ids, ratings and indicators, which prefetch keys the EHR sent
and which had to be fetched or stayed unavailable, and FHIR request counts. It never carries tokens,
names, codes, request or response bodies; the patient id appears only as a salted hash
(``patient_hash_salt``), the same one the store keeps.

What a call was about comes in its ``CallRecord``: the hooks and feedback blueprints attach one to
each of their requests (``attach``) and their views fill it as they go (``current_call``). This
module knows nothing of the pipeline or the store.
``JsonFormatter`` renders every log record of the process as one JSON object per line; ``serve``
installs it through ``logging_config`` so gunicorn workers write these lines to stderr.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from datetime import UTC
from datetime import datetime
from types import TracebackType
from typing import Any

import orjson
from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import request

from service import call_record
from service.call_record import CallRecord
from service.security.pseudonyms import patient_hash
from service.services import services_of
from service.web import errors as web_errors
from service.web import metrics

REQUEST_LOGGER = "lumbar_mri_cds.request"
log = logging.getLogger(REQUEST_LOGGER)

# hookInstance is meant to be a UUID; anything else (it is caller-controlled text) is not logged.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,80}")

# Libraries whose debug lines carry URLs with patient ids (urllib3 logs every FHIR query it sends):
# kept at WARNING by ``logging_config`` whatever the configured level.
QUIET_LOGGERS = ("urllib3",)


def register(app: Flask) -> None:
    """Time, log and count every request (its Metrics are served by ``web/operations.py``).

    Register before the other hooks, so that the timer starts before CORS answers a preflight and
    the line is written after every other ``after_request`` changed the response.
    """
    metrics.install(app)
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_teardown)


def attach(call: CallRecord) -> None:
    """Make ``call`` this request's record: the request line and metrics read it when the answer goes."""
    g.call_record = call


def current_call() -> CallRecord:
    """This request's record (an empty one is attached when no view started one)."""
    call = g.get("call_record")
    if call is None:
        call = g.call_record = CallRecord()
    return call


def _start() -> None:
    g.started = time.perf_counter()
    web_errors.request_id()


def _finish(response: Response) -> Response:
    response.headers["X-Request-Id"] = web_errors.request_id()
    _observe(response.status_code, response)
    return response


def _teardown(exc: BaseException | None) -> None:
    if not g.get("observed"):  # an after_request hook failed or an error escaped every handler
        _observe(500, None)


def _observe(status: int, response: Response | None) -> None:
    """Write the request line and count the request; never lets a bug here break the answer."""
    g.observed = True
    try:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = (request.endpoint or "-").rpartition(".")[2]  # the view, without its blueprint
        service = _service_label()
        fields = _request_fields(endpoint, service, status, seconds)
        if response is not None and status >= 400:
            fields.update(_error_fields(response))
        if status == 404:
            fields["path"] = loggable_path(request.path)  # what was asked for (ids and names hashed)
        fields.update(_call_fields())
        _count(endpoint, service, status, seconds)
    except Exception:
        log.exception("request %s: could not observe the request", web_errors.request_id())
        return
    level = logging.WARNING if status >= 500 else logging.INFO
    # The route, not the raw path (it may carry ids); a 404 names its path in the shape loggable_path gives.
    route = request.url_rule.rule if request.url_rule is not None else fields.get("path", "-")
    if status == 404 and request.url_rule is not None:
        route = f"{route} ({fields['path']})"  # e.g. an unknown service id
    log.log(level, "%s %s %d", request.method, route, status, extra={"fields": fields})


# Path segments logged as they are: the service's own words. Any other segment may be an id or a
# name (an EHR misconfigured to send FHIR reads here asks for /Patient/<id>), so it is logged as a
# salted hash, which still shows whether two 404s asked for the same thing.
_OWN_SEGMENTS = frozenset({"cds-services", "feedback", "healthz", "readyz", "metrics", "openapi.json"})
# The first segment, when it looks like a word of a URL scheme (lower case, no digits run), is kept too:
# a mistyped base path ("/cds-service", "/api/cds-services") is the usual 404.
_BASE_WORD = re.compile(r"[a-z][a-z._-]{0,39}")
MAX_LOGGED_SEGMENTS = 8


def loggable_path(path: str) -> str:
    """The request path as a 404 log line shows it: our own words and a lowercase first segment as
    they are, every other segment as ``#`` + 8 hex characters of its salted hash."""
    salt = services_of(current_app).settings.patient_hash_salt
    segments = path.split("/")[1:]
    own = _OWN_SEGMENTS | services_of(current_app).catalogue.keys()  # the service ids (cards/services.toml)
    shown = [
        seg if seg in own or (n == 0 and _BASE_WORD.fullmatch(seg)) or seg == ""
        else "#" + patient_hash(salt, seg)[:8]
        for n, seg in enumerate(segments[:MAX_LOGGED_SEGMENTS])
    ]
    more = "/..." if len(segments) > MAX_LOGGED_SEGMENTS else ""
    return "/" + "/".join(shown) + more


def _service_label() -> str:
    service_id = current_call().service_id
    return service_id if service_id is not None else "-"


def _request_fields(endpoint: str, service: str, status: int, seconds: float) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": web_errors.request_id(),
        "method": request.method,
        "endpoint": endpoint,
        "service": service,
        "status": status,
        "latency_ms": round(seconds * 1000, 2),
    }
    issuer = current_call().issuer
    if issuer:
        fields["issuer"] = issuer
    return fields


def _error_fields(response: Response) -> dict[str, Any]:
    """The issue code and element of our own OperationOutcome (its text may quote the request)."""
    if response.mimetype != "application/fhir+json" or response.is_streamed:
        return {}
    try:
        issue = orjson.loads(response.get_data())["issue"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return {}
    out = {"issue": issue.get("code")}
    if issue.get("expression"):
        out["expression"] = issue["expression"][0]
    return out


def _call_fields() -> dict[str, Any]:
    """What a hook call was about and what it decided: ids, keys and counts only."""
    fields: dict[str, Any] = {}
    call = current_call()
    if call.hook_instance is not None:
        instance = call.hook_instance
        fields["hook_instance"] = instance if _SAFE_ID.fullmatch(instance) else "(not an id)"
        fields["patient"] = patient_hash(services_of(current_app).settings.patient_hash_salt, call.patient_id or "")
    if call.fhir_fetches:
        fields["fhir_requests"] = sum(f.requests_made for f in call.fhir_fetches)
        fields["fhir_fetched"] = [k for f in call.fhir_fetches for k in f.keys if k not in f.failed]
        fields["fhir_failed"] = [k for f in call.fhir_fetches for k in f.keys if k in f.failed]
    if call.orders_reviewed is not None:
        fields["orders_reviewed"] = call.orders_reviewed
        fields["rules"] = dict(call.order_ratings)  # rule id -> rating (the last order's, per rule)
        fields["cards"] = [{"rule": c.rule_id, "indicator": c.indicator, "modality": c.modality} for c in call.cards]
        if call.prefetch is not None:
            fields["prefetch_hits"] = [k for k, s in call.prefetch.items() if s == call_record.FROM_PREFETCH]
            fields["prefetch_misses"] = [k for k, s in call.prefetch.items() if s != call_record.FROM_PREFETCH]
            fields["unavailable"] = [k for k, s in call.prefetch.items() if s == call_record.UNAVAILABLE]
    return fields


def _count(endpoint: str, service: str, status: int, seconds: float) -> None:
    table = metrics.metrics_of(current_app)
    table.observe_request(endpoint, service, status, seconds)
    table.observe_call(service, current_call(), answered=status == 200)


class JsonFormatter(logging.Formatter):
    """Every log record as one JSON object on one line.

    An exception is written as its type and stack frames, without its message: messages of
    unexpected errors may quote request data.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = exception_summary(*record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def exception_summary(kind: type[BaseException], exc: BaseException | None, tb: TracebackType | None) -> dict[str, Any]:
    """An exception's type and frames (file:line function), its message left out."""
    frames = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(tb)]
    summary: dict[str, Any] = {"type": f"{kind.__module__}.{kind.__qualname__}", "frames": frames[-30:]}
    cause = exc.__cause__ if exc is not None else None
    if cause is not None:
        summary["cause"] = f"{type(cause).__module__}.{type(cause).__qualname__}"
    return summary


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: JSON lines on stderr for the app and gunicorn alike."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": level, "handlers": [], "propagate": False},
            **{name: {"level": _at_least_warning(level)} for name in QUIET_LOGGERS},
        },
    }


def _at_least_warning(level: str) -> str:
    return level if logging.getLevelName(level.upper()) in (logging.ERROR, logging.CRITICAL) else "WARNING"


def configure_logging(level: str) -> None:
    """Install ``logging_config`` in this process (for callers that do not go through gunicorn)."""
    import logging.config

    logging.config.dictConfig(logging_config(level))


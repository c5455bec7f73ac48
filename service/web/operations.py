"""The operations blueprint: ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``.

None of them takes a token: they hold no patient data.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint
from flask import Response
from flask import current_app
from flask.blueprints import BlueprintSetupState
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import StoreUnavailable
from service.services import services_of
from service.store import schema
from service.store import bounded
from service.web import metrics
from service.web import openapi
from service.web.errors import json_response

blueprint = Blueprint("operations", __name__)

_OPENAPI_KEY = "lumbar_mri_cds.openapi"
_READINESS_KEY = "lumbar_mri_cds.readiness"
READY_WAIT_SECONDS = 2.0  # a database server that has not answered by then is not ready (store/bounded.py)


@blueprint.record
def _prepare(state: BlueprintSetupState) -> None:
    """Render the OpenAPI document once per app, for this deployment's public base URL."""
    state.app.extensions[_OPENAPI_KEY] = openapi.document_body(services_of(state.app).settings.public_base_url)
    # Load balancers keep asking while the database is sick: a probe must not hold a request thread.
    may_hang = schema.may_hang(services_of(state.app).engine.url)
    state.app.extensions[_READINESS_KEY] = bounded.runner("readiness", READY_WAIT_SECONDS, threads=4, bounded=may_hang)


@blueprint.get("/healthz", endpoint="healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


@blueprint.get("/readyz", endpoint="readyz")
def readyz() -> Response:
    """Readiness: the store answers a query (a database server within READY_WAIT_SECONDS)."""
    try:
        current_app.extensions[_READINESS_KEY](_ping, services_of(current_app).engine)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreUnavailable(f"the store is not reachable ({type(exc).__name__})") from None
    return json_response({"status": "ready"})


def _ping(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


@blueprint.get("/metrics", endpoint="metrics")
def serve_metrics() -> Response:
    """Prometheus text exposition."""
    return Response(metrics.metrics_of(current_app).exposition(), content_type=CONTENT_TYPE_LATEST)


@blueprint.get("/openapi.json", endpoint="openapi")
def serve_openapi() -> Response:
    """The OpenAPI document of this deployment."""
    return Response(current_app.extensions[_OPENAPI_KEY], mimetype="application/json")


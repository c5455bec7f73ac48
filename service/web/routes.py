"""HTTP routes: discovery, the hook services, health. Feedback and CORS register themselves."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Mapping
from datetime import date
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from service import app as app_module
from service import config
from service.errors import StoreUnavailable
from service.errors import UnknownService
from service.intake import envelope
from service.intake import fhir_client
from service.pipeline import SERVICES
from service.security.jwt import Claims
from service.store.feedback import IssuedCard
from service.web import auth
from service.web import cors
from service.web import feedback
from service.web import observability

log = logging.getLogger(__name__)


def register(app: Flask) -> None:
    """Add every route to the app."""
    app.add_url_rule("/cds-services", "discovery", discovery, methods=["GET"])
    app.add_url_rule("/cds-services/<service_id>", "hook", call_service, methods=["POST"])
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])
    feedback.register(app)
    cors.register(app)


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status=status, mimetype="application/json")


def discovery() -> Response:
    """GET /cds-services: the two services and their prefetch templates (no token needed)."""
    services = app_module.services_of(current_app)
    templates = services.evaluator.templates
    return _json({
        "services": [
            {"hook": s.hook, "id": s.id, "title": s.title, "description": s.description, "prefetch": templates}
            for s in SERVICES.values()
        ]
    })


def call_service(service_id: str) -> Response:
    """POST /cds-services/{id}: verify, parse, evaluate, record, answer."""
    started = time.monotonic()
    spec = SERVICES.get(service_id)
    if spec is None:
        raise UnknownService(f"no CDS service with id {service_id!r}; see GET /cds-services")
    services = app_module.services_of(current_app)
    claims = auth.authenticate(services)
    g.issuer = claims.iss  # g.*: for the request log line and metrics (web/observability.py)
    if not request.is_json:
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    data = envelope.parse_json(request.get_data(cache=False), services.settings.limits)
    # The sandbox (trusted in development only) sends one order-select call without selections and
    # draftOrders on purpose; from anyone else that is a 400 (intake/envelope.py).
    from_sandbox = claims.iss == config.SANDBOX_ISSUER
    g.hook_request = hook_request = envelope.parse_request(data, hook=spec.hook, sandbox_quirks=from_sandbox)
    fetch = observability.counted(_fetcher(services, hook_request, claims, started))
    g.evaluation = evaluation = services.evaluator.evaluate(hook_request, date.today(), fetch)
    if evaluation.cards:
        services.recorder.record_cards([
            IssuedCard(
                card_uuid=c.card["uuid"],
                suggestion_uuids=c.suggestion_uuids,
                service_id=spec.id,
                rule_id=c.rule_id,
                indicator=c.card["indicator"],
                rating=evaluation.ratings.get(c.rule_id),
                hook_instance=hook_request.hook_instance,
                issuer=claims.iss,
                tenant=claims.tenant,
                patient_id=hook_request.patient_id,
            )
            for c in evaluation.cards
        ])
    return _json(evaluation.response)


# Time kept back from the request deadline for evaluating and answering after the FHIR reads.
DEADLINE_MARGIN_SECONDS = 0.2


def _fetcher(services: Any, hook_request: envelope.HookRequest, claims: Claims, started: float) -> Callable[..., Any] | None:
    """A fetch function for what prefetch lacks, or None when the FHIR server may not be asked."""
    base = hook_request.fhir_server
    if base is None:
        return None
    issuer = claims.issuer
    allowed = None if issuer.any_fhir_server else issuer.fhir_servers
    token = hook_request.fhir_authorization.access_token if hook_request.fhir_authorization else None
    if not fhir_client.base_allowed(base, allowed):

        def refuse(queries: Mapping[str, str], _partial: Any) -> fhir_client.FetchResult:
            log.warning("fhirServer not allowed for issuer %s; not contacted", issuer.iss)
            reason = "fhirServer is not one this EHR's issuer is trusted for; it was not contacted"
            return fhir_client.FetchResult(resources={}, failures={k: reason for k in queries}, requests_made=0)

        return refuse

    def fetch(queries: Mapping[str, str], partial: Any) -> fhir_client.FetchResult:
        deadline = started + services.settings.limits.deadline_seconds - DEADLINE_MARGIN_SECONDS
        return services.fetcher.fetch(
            base=base, access_token=token, queries=queries, continue_from=partial, deadline=deadline
        )

    return fetch


def healthz() -> Response:
    """Liveness: the process answers."""
    return _json({"status": "ok"})


def readyz() -> Response:
    """Readiness: the store answers a query."""
    services = app_module.services_of(current_app)
    try:
        with services.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        raise StoreUnavailable(f"the store is not reachable ({type(exc).__name__})") from None
    return _json({"status": "ready"})

"""The hooks blueprint: discovery (``GET /cds-services``) and the hook services (``POST /cds-services/{id}``).

A hook call: verify the token, parse the envelope under the limits, evaluate (with a FHIR fetcher for
what prefetch lacks, when the issuer may send its token to that server), record the cards, answer.
What the call was about goes into its ``CallRecord``, which the card recorder and the request log read.

The call's deadline (``web/deadline.py``) counts from the request's arrival. It is checked when the
view starts (time spent arriving and queued for a thread), after the token check (the replay store),
it bounds the FHIR reads, and it is checked once more before answering: a call that can no longer be
answered in time gets a fast 503 with ``Retry-After``, never a late 200.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from service import config
from service.call_record import FROM_FHIR
from service.call_record import FROM_PREFETCH
from service.call_record import UNAVAILABLE
from service.call_record import CallRecord
from service.call_record import CallCard
from service.call_record import FhirFetchNote
from service.errors import UnknownService
from service.intake import envelope
from service.intake import fhir_client
from service.pipeline import Evaluation
from service.security import fhir_servers
from service.security.jwt import Claims
from service.services import Services
from service.services import services_of
from service.web import auth
from service.web import deadline as deadlines
from service.web import observability
from service.web.errors import json_response

blueprint = Blueprint("hooks", __name__)


def begin_call(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Start the request's CallRecord, naming the CDS service when the URL names one of ours.

    A URL value preprocessor: it runs before every other request hook, so that even a request
    refused before its view (413, a CORS preflight) is counted under its service.
    """
    service_id = (values or {}).get("service_id")
    catalogue = services_of(current_app).catalogue
    observability.attach(CallRecord(service_id=service_id if service_id in catalogue else None))


blueprint.url_value_preprocessor(begin_call)


# strict_slashes=False: `/cds-services/` answers too. Clients that join a base URL and a path add that
# slash, and the CDS Hooks sandbox shows the 404 it would get as "no services".
@blueprint.get("/cds-services", endpoint="discovery", strict_slashes=False)
def discovery() -> Response:
    """The services of the catalogue (cards/services.toml) and their prefetch templates (no token needed)."""
    services = services_of(current_app)
    templates = services.evaluator.templates
    return json_response({
        "services": [
            {"hook": s.hook, "id": s.id, "title": s.title, "description": s.description, "prefetch": templates}
            for s in services.catalogue.values()
        ]
    })


@blueprint.post("/cds-services/<service_id>", endpoint="hook")
def call_service(service_id: str) -> Response:
    """Verify, parse, evaluate, record, answer; within the call's deadline."""
    services = services_of(current_app)
    spec = services.catalogue.get(service_id)
    if spec is None:
        raise UnknownService(f"no CDS service with id {service_id!r}; see GET /cds-services")
    deadline = deadlines.for_request(request.environ, services.settings.limits.deadline_seconds)
    deadline.check("waiting for a request thread")
    call = observability.current_call()
    claims = auth.authenticate(services)
    call.issuer, call.tenant = claims.iss, claims.tenant
    deadline.check("the token check")
    if not request.is_json:
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    data = envelope.parse_json(request.get_data(cache=False), services.settings.limits)
    # The sandbox (trusted in development only) sends one order-select call without selections and
    # draftOrders on purpose; from anyone else that is a 400 (intake/envelope.py).
    from_sandbox = claims.iss == config.SANDBOX_ISSUER
    hook_request = envelope.parse_request(data, hook=spec.hook, sandbox_quirks=from_sandbox)
    call.hook_instance, call.patient_id = hook_request.hook_instance, hook_request.patient_id
    fetcher = _fetcher(services, hook_request, claims, deadline)
    try:
        evaluation = services.evaluator.evaluate(hook_request, date.today(), fetcher, spec)
    finally:
        if fetcher is not None:
            call.fhir_fetches = [
                FhirFetchNote(keys=keys, failed=frozenset(result.failures), requests_made=result.requests_made)
                for keys, result in fetcher.fetches
            ]
    deadline.check("the evaluation", answering=True)  # a late answer is a 503: no card is shown, none recorded
    _note_evaluation(call, evaluation, services.evaluator.templates)
    if call.cards:
        services.recorder.record_call(call)
    return json_response(evaluation.response)


def _fetcher(
    services: Services, hook_request: envelope.HookRequest, claims: Claims, deadline: deadlines.Deadline
) -> fhir_client.CallFetcher | None:
    """The FHIR fetcher of this call, or None when the request names no FHIR server."""
    base = hook_request.fhir_server
    if base is None:
        return None
    if not fhir_servers.token_may_go_to(claims.issuer, base):
        reason = "fhirServer is not one this EHR's issuer is trusted for; it was not contacted"
        return fhir_client.CallFetcher.refusing(issuer=claims.iss, reason=reason)
    token = hook_request.fhir_authorization.access_token if hook_request.fhir_authorization else None
    return services.fetcher.for_call(base=base, access_token=token, deadline=deadline.for_waits())


def _note_evaluation(call: CallRecord, evaluation: Evaluation, templates: dict[str, str]) -> None:
    """Copy into the call record what the evaluation decided: ratings, cards, where the data came from."""
    call.orders_reviewed = evaluation.orders_reviewed
    call.order_ratings = list(evaluation.order_ratings)
    call.cards = [
        CallCard(
            card_uuid=c.card["uuid"],
            suggestion_uuids=c.suggestion_uuids,
            rule_id=c.rule_id,
            indicator=c.card["indicator"],
            rating=evaluation.card_ratings.get(c.card["uuid"]),
            modality=evaluation.modalities.get(c.card["uuid"]),
        )
        for c in evaluation.cards
    ]
    record = evaluation.record
    if record is not None:
        call.prefetch = {
            key: UNAVAILABLE if key in record.unavailable else FROM_FHIR if key in record.fetched_keys else FROM_PREFETCH
            for key in templates
        }


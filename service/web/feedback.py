"""The feedback blueprint: ``POST /cds-services/{id}/feedback``, what clinicians did with the cards (CDS Hooks 2.0).

The answer is ``200`` with an empty body, sent only once every item is committed: the spec defines
no response body, and an empty one cannot be mistaken for cards. The body is checked by
``intake/feedback_items.py`` under the same limits as a hook call's. Errors take the service's usual
route (``web/errors.py``): 400 OperationOutcome naming the bad item (``feedback[1].outcome``), 401
bare, 404 unknown service, 415 not JSON, 503 store unavailable or queued past the call's deadline.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from service import errors
from service.intake import feedback_items
from service.services import services_of
from service.web import auth
from service.web import deadline as deadlines
from service.web import hooks
from service.web import observability

blueprint = Blueprint("feedback", __name__)
blueprint.url_value_preprocessor(hooks.begin_call)


@blueprint.post("/cds-services/<service_id>/feedback", endpoint="feedback")
def receive_feedback(service_id: str) -> Response:
    """Validate and store the feedback; 200 (empty body) once it is durable."""
    services = services_of(current_app)
    # Queued past the deadline: the EHR has given up; a 503 says to send it again (a repeat of
    # stored feedback is stored once). Once stored, the 200 is sent however long it took.
    deadlines.for_request(request.environ, services.settings.limits.deadline_seconds).check("waiting for a request thread")
    claims = auth.authenticate(services)
    if service_id not in services.catalogue:
        raise errors.UnknownService(f"no CDS service with id {service_id!r}; see GET /cds-services")
    if not request.is_json:
        raise UnsupportedMediaType("feedback must be sent as application/json")
    items = feedback_items.parse_feedback_body(request.get_data(cache=False), services.settings.limits)
    services.recorder.record_feedback(service_id, items, issuer=claims.iss, tenant=claims.tenant)
    observability.current_call().feedback_outcomes = [item.outcome.value for item in items]
    answer = Response(status=200)
    del answer.headers["Content-Type"]  # no body, so no media type
    return answer

"""``POST /cds-services/{id}/feedback``: what clinicians did with the cards (CDS Hooks 2.0).

The answer is ``200`` with an empty body, sent only once every item is committed: the spec defines
no response body, and an empty one cannot be mistaken for cards. Errors take the service's usual
route (``web/errors.py``): 400 OperationOutcome naming the bad item (``feedback[1].outcome``), 401
bare, 404 unknown service, 415 not JSON, 503 store unavailable.
"""

from __future__ import annotations

from flask import Flask
from flask import Response
from flask import current_app
from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from service import errors
from service.pipeline import SERVICES
from service.web import auth


def register(app: Flask) -> None:
    """Add the feedback endpoint to the app."""
    app.add_url_rule("/cds-services/<service_id>/feedback", "feedback", receive_feedback, methods=["POST"])


def receive_feedback(service_id: str) -> Response:
    """Validate and store the feedback; 200 (empty body) once it is durable."""
    from service.app import services_of  # here, not at import time: app.py imports this module

    services = services_of(current_app)
    claims = auth.authenticate(services)
    if service_id not in SERVICES:
        raise errors.UnknownService(f"no CDS service with id {service_id!r}; see GET /cds-services")
    if not request.is_json:
        raise UnsupportedMediaType("feedback must be sent as application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise errors.InvalidRequest("the body is not valid JSON", expression="feedback")
    services.recorder.record_feedback(service_id, body, issuer=claims.iss, tenant=claims.tenant)
    answer = Response(status=200)
    del answer.headers["Content-Type"]  # no body, so no media type
    return answer

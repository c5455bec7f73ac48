"""The application factory: ``create_app(settings)`` builds one Flask app and its ``Services``.

What the app serves is the list of blueprints below; the app-wide hooks before it run on every
request, in the order registered (the request log first, so it times and logs everything).
"""

from __future__ import annotations

import logging
import os

from flask import Flask

from service import config
from service.services import Services
from service.services import build_services
from service.services import install
from service.services import services_of
from service.web import cors
from service.web import errors as web_errors
from service.web import feedback
from service.web import hooks
from service.web import limits
from service.web import observability
from service.web import operations

__all__ = ["Services", "build_services", "create_app", "services_of"]

log = logging.getLogger(__name__)

BLUEPRINTS = (
    hooks.blueprint,        # GET /cds-services, POST /cds-services/{id}
    feedback.blueprint,     # POST /cds-services/{id}/feedback
    operations.blueprint,   # GET /healthz, /readyz, /metrics, /openapi.json
)


def create_app(settings: config.Settings | None = None, *, announce: bool = True) -> Flask:
    """Create and configure an instance of the service (``announce=False``: `serve` has already
    printed the development warning once, in the master, rather than once per worker)."""
    if settings is None:
        settings = config.load_settings(config.config_path(os.environ), os.environ)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install(app, build_services(settings))
    web_errors.register(app)    # errors -> OperationOutcome, in one place
    observability.register(app)  # first hook: it times and logs every request, CORS preflights included
    limits.register(app)        # 413 for streamed bodies over the limit, before any view
    cors.register(app)          # preflights, and CORS headers on the CDS answers
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    if announce:
        warn_development(settings)
    return app


def warn_development(settings: config.Settings) -> None:
    """Say, in the development profile, that real patient data must not come here."""
    if settings.profile is config.Profile.DEVELOPMENT:
        log.warning(
            "DEVELOPMENT PROFILE: trusting the public CDS Hooks sandbox issuer, whose signing key is "
            "public, and the local issuer of `lumbar-mri-cds call`. Do not send real patient data to "
            "this service."
        )

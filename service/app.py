"""The application factory: ``create_app(settings)`` builds one Flask app and its ``Services``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from flask import Flask

from service import config
from service import pipeline
from service.intake import fhir_client
from service.security import jwt as jwt_check
from service.security import replay
from service.store import feedback
from service.store import outbox
from service.store import schema
from service.web import errors as web_errors
from service.web import limits
from service.web import observability
from service.web import openapi
from service.web import routes

log = logging.getLogger(__name__)

EXTENSION_KEY = "lumbar_mri_cds"
# FHIR reads in flight at once per worker: a call sends up to 8 at once, and a worker runs up to
# `serve --threads` (16) calls; the threads are started only when needed.
FETCH_THREADS = 128


@dataclass(kw_only=True)
class Services:
    """Everything a request needs, built once per app (style.md 3.5): no module-level state."""

    settings: config.Settings
    engine: schema.sa.Engine                 # the store (SQLite or PostgreSQL)
    verifier: jwt_check.TokenVerifier        # bearer-token checks (security/)
    fetcher: fhir_client.FhirFetcher         # FHIR reads for what prefetch lacks
    evaluator: pipeline.Evaluator            # value sets, rule table and cards, loaded and checked
    recorder: feedback.CardStore             # cards issued and feedback received

    def close(self) -> None:
        """Release pooled connections and threads."""
        self.fetcher.close()
        self.verifier.close()
        self.recorder.close()  # writes the cards still queued, before the engine goes
        self.engine.dispose()


def build_services(settings: config.Settings) -> Services:
    """Load and check everything once, at start-up; raises ConfigError with a clear message."""
    engine = schema.create_engine(settings.database_url)
    schema.create_schema(engine)
    return Services(
        settings=settings,
        engine=engine,
        verifier=jwt_check.TokenVerifier(settings, replay.build_replay(settings.replay, engine)),
        fetcher=fhir_client.FhirFetcher(
            timeout_seconds=settings.fhir.timeout_seconds,
            max_pages=settings.fhir.max_pages,
            max_bytes=settings.fhir.max_bytes,
            max_workers=FETCH_THREADS,
        ),
        evaluator=pipeline.Evaluator.load(),
        recorder=feedback.CardStore(engine, salt=settings.patient_hash_salt,
                                    outbox_dir=outbox.directory_for(settings.outbox_dir, settings.database_url)),
    )


def create_app(settings: config.Settings | None = None) -> Flask:
    """Create and configure an instance of the service."""
    if settings is None:
        settings = config.load_settings(config.config_path(os.environ), os.environ)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    services = build_services(settings)
    app.extensions[EXTENSION_KEY] = services
    web_errors.register(app)
    observability.register(app)  # first: it times and logs every request, CORS preflights included
    limits.register(app)
    routes.register(app)
    openapi.register(app, settings.public_base_url)
    if settings.profile is config.Profile.DEVELOPMENT:
        log.warning(
            "DEVELOPMENT PROFILE: trusting the public CDS Hooks sandbox issuer, whose signing key is "
            "public. Do not send real patient data to this service."
        )
    return app


def services_of(app: Flask) -> Services:
    """The Services object of this app."""
    return app.extensions[EXTENSION_KEY]

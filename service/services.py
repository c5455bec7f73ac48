"""``Services``: everything a request needs, built once per app by ``create_app``.

A leaf of the web edge: it imports nothing from ``web/``, so every blueprint and hook can import it
(``services_of(current_app)``) without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from flask import Flask

from service import config
from service import pipeline
from service.catalogue import Catalogue
from service.intake import fhir_client
from service.security import jwt as jwt_check
from service.security import replay
from service.security import signer
from service.store import card_store
from service.store import outbox
from service.store import schema

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
    recorder: card_store.CardStore           # cards issued and feedback received

    @property
    def catalogue(self) -> Catalogue:
        """The CDS services offered (cards/services.toml), as the evaluator loaded and checked them."""
        return self.evaluator.catalogue

    def close(self) -> None:
        """Release pooled connections and threads."""
        self.fetcher.close()
        self.verifier.close()
        self.recorder.close()  # writes the cards still queued, before the engine goes
        self.engine.dispose()


def build_services(settings: config.Settings) -> Services:
    """Load and check everything once, at start-up; raises ConfigError (or StoreUnavailable, for a
    database that cannot be reached) with a clear message."""
    engine = schema.create_engine(settings.database_url)
    try:
        schema.create_schema(engine)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise schema.unreachable(settings.database_url, exc) from None
    signer.local_signer(settings)  # development: the local issuer's key exists before it is read
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
        recorder=card_store.CardStore(engine, salt=settings.patient_hash_salt,
                                      outbox_dir=outbox.directory_for(settings.outbox_dir, settings.database_url)),
    )


def install(app: Flask, services: Services) -> None:
    """Make ``services`` the Services of ``app``."""
    app.extensions[EXTENSION_KEY] = services


def services_of(app: Flask) -> Services:
    """The Services of this app."""
    return app.extensions[EXTENSION_KEY]

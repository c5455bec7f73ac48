"""The Prometheus metrics of one app (served at ``GET /metrics`` by web/operations.py).

Every label value comes from a closed set (our service ids, rule ids, indicators, ratings, prefetch
keys, HTTP statuses), never from the request, so a caller cannot grow the number of series.

With several gunicorn workers each worker counts only its own requests. Set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory writable by the workers (``serve`` empties it of
old ``*.db`` files at start): prometheus-client then keeps the values in files there and
``/metrics`` answers for all workers together. Without it the registry is per app (style.md 3.5):
two apps in one process, as in the tests, never share a count.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess

from service.call_record import CallRecord

EXTENSION_KEY = "lumbar_mri_cds.metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "lumbar_mri_cds"

# The spec asks for answers "on the order of 500 ms"; the default deadline is 4 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class Metrics:
    """The service's counters and histograms, registered on one registry."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess_dir: str | None = None) -> None:
        self.registry = registry
        self.multiprocess_dir = multiprocess_dir
        # (metric, label values) -> child, so labels() (which validates and locks) runs once per label
        # set; the label sets are closed, so this stays small.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests answered, by endpoint, CDS service and status",
            ["endpoint", "service", "status"], registry=registry)
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "Time from request to answer, by endpoint, CDS service and status",
            ["endpoint", "service", "status"], buckets=LATENCY_BUCKETS, registry=registry)
        self.cards = Counter(
            f"{PREFIX}_cards", "Cards returned, by CDS service, rule id, indicator and modality of the ordered study",
            ["service", "rule", "indicator", "modality"], registry=registry)
        self.ratings = Counter(
            f"{PREFIX}_ratings", "Orders rated, by CDS service, rule id and PAMA rating",
            ["service", "rule", "rating"], registry=registry)
        self.prefetch = Counter(
            f"{PREFIX}_prefetch_keys", "Prefetch keys of reviewed orders, by where the data came from "
            "(prefetch = sent by the EHR, fhir = fetched, unavailable)",
            ["key", "source"], registry=registry)
        self.fhir_requests = Counter(
            f"{PREFIX}_fhir_requests", "HTTP requests sent to EHR FHIR servers", registry=registry)
        self.fhir_fetches = Counter(
            f"{PREFIX}_fhir_fetches", "Prefetch keys asked of EHR FHIR servers, by key and result (ok, failed)",
            ["key", "result"], registry=registry)
        self.feedback = Counter(
            f"{PREFIX}_feedback", "Feedback items stored, by CDS service and outcome",
            ["service", "outcome"], registry=registry)

    def observe_request(self, endpoint: str, service: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        labels = (endpoint, service, str(status))
        self._child(self.requests, labels).inc()
        self._child(self.latency, labels).observe(seconds)

    def observe_call(self, service: str, call: CallRecord, *, answered: bool) -> None:
        """Count what one call did: FHIR fetches, cards, ratings, prefetch use, and (answered) feedback."""
        for fetch in call.fhir_fetches:
            self.fhir_requests.inc(fetch.requests_made)
            for key in fetch.keys:
                self._child(self.fhir_fetches, (key, "failed" if key in fetch.failed else "ok")).inc()
        for card in call.cards:
            self._child(self.cards, (service, card.rule_id, card.indicator, card.modality or "-")).inc()
        for rule, rating in call.order_ratings:
            self._child(self.ratings, (service, rule, rating)).inc()
        for key, source in (call.prefetch or {}).items():
            self._child(self.prefetch, (key, source)).inc()
        if answered:
            for outcome in call.feedback_outcomes:
                self._child(self.feedback, (service, outcome)).inc()

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def exposition(self) -> bytes:
        """The Prometheus text of this app (or of every worker, in multiprocess mode)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape, as prometheus-client's multiprocess documentation says.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)


def prepare_multiprocess_dir(environ: Mapping[str, str]) -> None:
    """Before gunicorn forks: create the multiprocess directory, emptied of a previous run's files.

    prometheus-client's documentation asks for this: files left from an earlier run would be added
    to the new run's counts.
    """
    directory = environ.get(MULTIPROC_ENV)
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def install(app: Flask) -> Metrics:
    """Give the app its Metrics (``GET /metrics`` serves them: web/operations.py)."""
    # Read at start-up, like prometheus-client itself (it picks file-backed values at import time).
    directory = os.environ.get(MULTIPROC_ENV) or None
    metrics = Metrics(CollectorRegistry(auto_describe=True), multiprocess_dir=directory)
    app.extensions[EXTENSION_KEY] = metrics
    return metrics


def metrics_of(app: Flask) -> Metrics:
    """The Metrics of this app."""
    return app.extensions[EXTENSION_KEY]

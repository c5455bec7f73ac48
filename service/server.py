"""Serving under gunicorn (sync workers), in the foreground, from the `serve` command."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from service import config
from service.web import metrics
from service.web import observability


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose workers each build their own app with ``factory``."""

    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return worker_app(self.factory)


def worker_app(factory: Callable[[], Any]) -> Any:
    """Build a worker's app, then move what start-up allocated (modules, schemas, value sets, card
    content) out of the garbage collector's reach: its full collections then scan only what
    requests allocate (benchmarks/README.md)."""
    app = factory()
    gc.collect()
    gc.freeze()
    return app


def _service_app(settings: config.Settings) -> Any:
    from service.app import create_app

    return create_app(settings)


def run(settings: config.Settings, *, host: str, port: int, workers: int) -> None:
    """Serve until SIGTERM or SIGINT (gunicorn's graceful shutdown)."""
    # Check everything that can fail (card content, value sets, database, keys) in the master, so a
    # bad configuration stops the command with a clear message instead of a crash loop of workers.
    from service.services import build_services

    build_services(settings).close()
    metrics.prepare_multiprocess_dir(os.environ)
    options = gunicorn_options(settings, host=host, port=port, workers=workers)
    GunicornApp(lambda: _service_app(settings), options).run()


def gunicorn_options(settings: config.Settings, *, host: str, port: int, workers: int) -> dict[str, Any]:
    """The gunicorn settings `serve` uses (benchmarks/floor.py serves its floor app with the same)."""
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "timeout": max(30, int(settings.limits.deadline_seconds * 4)),
        "graceful_timeout": 10,
        "accesslog": None,          # one structured line per request comes from the app instead
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        # JSON lines on stderr, for gunicorn's own messages and the app's (web/observability.py)
        "logconfig_dict": observability.logging_config(settings.log_level),
        "proc_name": "lumbar-mri-cds",
    }

"""Serving under gunicorn (sync workers), in the foreground, from the `serve` command."""

from __future__ import annotations

import errno
import gc
import os
import socket
import tempfile
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from service import config
from service import errors
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
            if key in self.cfg.settings:  # control_socket: gunicorn >= 25.1 only
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

    return create_app(settings, announce=False)  # the master has said it once


def run(settings: config.Settings, *, host: str, port: int, workers: int) -> None:
    """Serve until SIGTERM or SIGINT (gunicorn's graceful shutdown)."""
    # Check everything that can fail (card content, value sets, database, keys, the port) in the
    # master, so a bad configuration stops the command with a short message instead of a traceback
    # or a crash loop of workers.
    from service.app import warn_development
    from service.services import build_services

    check_address(host, port)
    build_services(settings).close()
    warn_development(settings)
    metrics.prepare_multiprocess_dir(os.environ)
    options = gunicorn_options(settings, host=host, port=port, workers=workers)
    GunicornApp(lambda: _service_app(settings), options).run()


def check_address(host: str, port: int) -> None:
    """AddressInUse, with a hint, when another process already listens on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise errors.AddressInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            raise errors.AddressInUse(
                f"port {port} on {host} is already in use (another `lumbar-mri-cds serve`?); "
                f"choose another with --port, e.g. --port {port + 1}"
            ) from None


def control_socket_path(host: str, port: int, environ: Mapping[str, str]) -> str:
    """A gunicorn control socket (``gunicornc -s PATH``) of this instance's own: gunicorn's default
    is one path per user, which a second instance would take over from the first."""
    runtime = environ.get("XDG_RUNTIME_DIR")
    directory = Path(runtime) if runtime and Path(runtime).is_dir() else Path(tempfile.gettempdir()) / f"lumbar-mri-cds-{os.getuid()}"
    name = f"{host}-{port}" if port else f"pid{os.getpid()}"
    return str(directory / f"lumbar-mri-cds-{name.replace(':', '_').replace('/', '_')}.ctl")


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
        "control_socket": control_socket_path(host, port, os.environ),
    }

"""Serving, in the foreground, from the `serve` command: gunicorn's master over buffering workers.

The serving model (issue 15; figures in benchmarks/README.md, "Serving model"):

- **gunicorn's master** binds the socket, forks the workers, restarts one that dies (kill -9, OOM,
  its heartbeat missed for ``timeout`` s) and stops them all gracefully on SIGTERM.
- **Each worker is ``BufferedWorker``**: waitress's HTTP engine in the worker process. One event loop
  thread reads every request whole (headers and body) and writes every answer, so a slow or
  stalled client costs a socket and a buffer, never a thread; only complete requests are handed to a
  pool of ``threads`` request threads. A request still arriving after twice the call's deadline (at
  least 5 s) is closed: it could only be answered 503 anyway. A slow FHIR server or a slow store then costs a thread for at
  most the call's deadline, not a process.
- The time a request's first byte arrived is put into the WSGI environ (``ARRIVED_KEY``), so the
  call's deadline counts the time spent arriving and waiting for a thread, not only the view's.

Behind a reverse proxy (docker-compose.yml's nginx, deploy/nginx.conf) the proxy buffers as well and
its timeouts bound the clients; without one ``serve`` still survives slow clients on its own, and says
so at start-up when it listens on a non-loopback address (``--behind-proxy`` silences it).
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers import base as gunicorn_workers
from waitress import channel as waitress_channel
from waitress import parser as waitress_parser
from waitress import server as waitress_server
from waitress import task as waitress_task
from waitress.adjustments import Adjustments

from service import config
from service import errors
from service.web import metrics
from service.web import observability
from service.web.deadline import ARRIVED_KEY

log = logging.getLogger(__name__)

WORKER_CLASS = f"{__name__}.BufferedWorker"
DEFAULT_THREADS = 16          # request threads per worker: calls waiting on FHIR or the store at once
DEFAULT_CONNECTIONS = 1000    # open connections per worker (slow clients included) before accept pauses
IDLE_SECONDS = 30             # a connection that sends nothing for this long is closed
MIN_ARRIVAL_SECONDS = 5.0     # a request may take this long to arrive, or twice the deadline if longer
CLEANUP_SECONDS = 2           # how often a worker looks for idle connections and dawdling requests
BODY_SLACK_BYTES = 1_000_000  # bodies a bit over max_body_bytes still reach Flask, for its 413 OperationOutcome


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose workers each build their own app with ``factory``."""

    def __init__(self, factory: Callable[[], Any], options: dict[str, Any], *, max_request_bytes: int = 10_000_000,
                 arrival_seconds: float = 30.0) -> None:
        self.factory = factory
        self.options = options
        # read by BufferedWorker: larger bodies are refused unread; slower requests are closed
        self.max_request_bytes = max_request_bytes
        self.arrival_seconds = arrival_seconds
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


def run(settings: config.Settings, *, host: str, port: int, workers: int, threads: int = DEFAULT_THREADS,
        behind_proxy: bool = False) -> None:
    """Serve until SIGTERM or SIGINT (gunicorn's graceful shutdown)."""
    # Check everything that can fail (card content, value sets, database, keys, the port) in the
    # master, so a bad configuration stops the command with a short message instead of a traceback
    # or a crash loop of workers.
    from service.app import warn_development
    from service.services import build_services

    check_address(host, port)
    build_services(settings).close()
    warn_development(settings)
    warning = proxy_warning(host, behind_proxy=behind_proxy)
    if warning:
        log.warning(warning)
    metrics.prepare_multiprocess_dir(os.environ)
    options = gunicorn_options(settings, host=host, port=port, workers=workers, threads=threads)
    GunicornApp(lambda: _service_app(settings), options, max_request_bytes=max_request_bytes(settings),
                arrival_seconds=arrival_seconds(settings)).run()


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


def arrival_seconds(settings: config.Settings) -> float:
    """How long a request may take to arrive (head and body) before its connection is closed."""
    return max(MIN_ARRIVAL_SECONDS, 2 * settings.limits.deadline_seconds)


def max_request_bytes(settings: config.Settings) -> int:
    """The body size beyond which the worker refuses a request without reading it."""
    return settings.limits.max_body_bytes + BODY_SLACK_BYTES


def proxy_warning(host: str, *, behind_proxy: bool) -> str | None:
    """What `serve` says when it listens beyond loopback with no reverse proxy declared in front."""
    if behind_proxy or is_loopback(host):
        return None
    return (f"listening on {host} without a reverse proxy in front: the service buffers slow clients "
            "itself, but put a buffering proxy with timeouts (deploy/nginx.conf) between it and the "
            "network, then pass --behind-proxy")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def gunicorn_options(settings: config.Settings, *, host: str, port: int, workers: int,
                     threads: int = DEFAULT_THREADS) -> dict[str, Any]:
    """The gunicorn settings `serve` uses (benchmarks/floor.py serves its floor app with the same)."""
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": WORKER_CLASS,
        "threads": threads,
        "worker_connections": DEFAULT_CONNECTIONS,
        "keepalive": IDLE_SECONDS,
        "limit_request_line": 8190,
        # A worker whose event loop stops for this long is killed and replaced by the master.
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


class _ArrivalParser(waitress_parser.HTTPRequestParser):
    """waitress's request parser, noting when the request's first byte arrived."""

    arrived: float | None = None

    def received(self, data: bytes) -> int:
        if self.arrived is None:
            self.arrived = time.monotonic()
        return super().received(data)


class _ArrivalTask(waitress_task.WSGITask):
    """waitress's WSGI task, passing the arrival time to the app."""

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[ARRIVED_KEY] = getattr(self.request, "arrived", None) or time.monotonic()
        return environ


class _Channel(waitress_channel.HTTPChannel):
    parser_class = _ArrivalParser
    task_class = _ArrivalTask


class _Server(waitress_server.TcpWSGIServer):
    channel_class = _Channel
    arrival_seconds = 30.0

    def maintenance(self, now: float) -> None:
        """Close idle connections (waitress) and those whose request is arriving too slowly."""
        super().maintenance(now)
        cutoff = time.monotonic() - self.arrival_seconds
        for channel in list(self.active_channels.values()):
            arrived = getattr(channel.request, "arrived", None)
            if arrived is not None and arrived < cutoff:
                channel.will_close = True


class BufferedWorker(gunicorn_workers.Worker):  # type: ignore[misc]
    """A gunicorn worker serving with waitress: requests buffered whole by one event loop, then run
    on a pool of ``threads``; the master's heartbeat is kept by that loop."""

    def run(self) -> None:
        adjustments = Adjustments(
            threads=self.cfg.threads,
            connection_limit=self.cfg.worker_connections,
            channel_timeout=self.cfg.keepalive,
            cleanup_interval=CLEANUP_SECONDS,
            max_request_body_size=getattr(self.app, "max_request_bytes", 10_000_000),
            max_request_header_size=64 * 1024,
            asyncore_use_poll=True,     # select() fails beyond 1024 descriptors
            expose_tracebacks=False,
            ident="lumbar-mri-cds",
            clear_untrusted_proxy_headers=True,
        )
        dispatcher = waitress_task.ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adjustments.threads)
        socket_map: dict[int, Any] = {}
        for listener in self.sockets:
            sock = getattr(listener, "sock", listener)
            server = _Server(self.wsgi, socket_map, True, sock, dispatcher=dispatcher, adj=adjustments,
                             bind_socket=False, sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
            server.arrival_seconds = getattr(self.app, "arrival_seconds", _Server.arrival_seconds)
        try:
            while self.alive and self.ppid == os.getppid():
                self.notify()
                waitress_server.wasyncore.loop(timeout=1.0, map=socket_map, use_poll=True, count=1)
        finally:
            self._stop(dispatcher, socket_map)

    def _stop(self, dispatcher: Any, socket_map: dict[int, Any]) -> None:
        """Stop accepting, let running requests finish (up to graceful_timeout), close the rest."""
        for channel in list(socket_map.values()):
            if isinstance(channel, _Server):
                channel.accepting = False
                channel.del_channel()
        limit = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < limit and _busy(socket_map):
            self.notify()
            waitress_server.wasyncore.loop(timeout=0.2, map=socket_map, use_poll=True, count=1)
        dispatcher.shutdown(timeout=1)
        waitress_server.wasyncore.close_all(socket_map)


def _busy(socket_map: dict[int, Any]) -> bool:
    """Whether a channel still has a request in work or an answer not yet sent."""
    return any(
        isinstance(channel, waitress_channel.HTTPChannel) and (channel.requests or channel.total_outbufs_len)
        for channel in socket_map.values()
    )

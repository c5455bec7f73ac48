"""Faults: slow clients, a slow FHIR server, a hanging store and killed workers, against `serve`.

    python benchmarks/faults.py [--proxy] [--phases slow-clients,slow-fhir,store-hang,store-stall,kill]
                                [--database URL] [--worker-class buffered|sync|gthread|gevent]
                                [--duration S] [--json FILE]

Everything runs on this machine, on loopback, bounded in count and time:

- ``slow-clients``: 200 connections that each send a request line and then one header line every
  5 s, never finishing, while a caller makes 1 real call per second. Target: >= 95 % of the real
  calls answered 200 within the deadline (4 s).
- ``slow-fhir``: 20 callers in a closed loop, no prefetch, against a FHIR server answering every
  query after 0.5 s. Target: >= 15 calls/s, every answer within the deadline or a fast 503.
- ``store-hang``: another process holds the store's write lock for 10 s (SQLite: ``BEGIN EXCLUSIVE``
  on the database files; PostgreSQL: ``LOCK TABLE ... ACCESS EXCLUSIVE`` on every table) while 5
  calls a second arrive. Target: no answer later than the deadline, no 500.
- ``store-stall`` (PostgreSQL only): the service reaches the database through a TCP forwarder that,
  for 10 s, keeps every connection open and passes nothing on (a database process stopped or a disk
  stalled: no driver or server timeout fires) while 5 calls a second arrive. Target: as store-hang.
- ``kill``: 4 callers for the run while a worker is killed with SIGKILL every 2 s; afterwards every
  card uuid answered with a 200 is looked up in the store. Target: 0 cards lost.

``--proxy`` puts nginx (deploy/nginx.conf, the compose set-up; Debian: ``apt-get install nginx``) in
front and sends every call through it. ``--worker-class`` serves the same app with another gunicorn
worker (the serving-model comparison in benchmarks/README.md); the default is `serve` as shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import load  # noqa: E402  (benchmarks/load.py: tokens, servers, the realistic request)

from service.config import LimitsSettings  # noqa: E402
from service.intake.prefetch import build_templates  # noqa: E402
from service.security.replay import replay_database_url  # noqa: E402
from tests import serving  # noqa: E402
from tests.store import databases  # noqa: E402  (the stallable forwarder)

DEADLINE_SECONDS = LimitsSettings().deadline_seconds  # the configuration written here keeps the default
FAST_503_SECONDS = 1.0        # a 503 slower than this is not "fast"
# The slow FHIR server answers a search with the fixture's bundle for the prefetch key of its type.
PREFETCH_KEY_OF_TYPE = {query.split("?", 1)[0]: key for key, query in build_templates(()).items() if "?" in query}
PHASES = ("slow-clients", "slow-fhir", "store-hang", "store-stall", "kill")


# --- calls --------------------------------------------------------------------------------------

@dataclass
class Outcomes:
    """What the callers saw: (status, seconds) per call; status 0 = no answer (connection error)."""

    calls: list[tuple[int, float]] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)   # uuids of the cards answered with 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int, seconds: float, cards: list[str]) -> None:
        with self.lock:
            self.calls.append((status, seconds))
            self.cards.extend(cards)

    def summary(self, wall: float) -> dict[str, Any]:
        latencies = sorted(s for _, s in self.calls)
        statuses: dict[str, int] = {}
        for status, _ in self.calls:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        ok_in_time = sum(1 for st, s in self.calls if st == 200 and s <= DEADLINE_SECONDS)
        late = sum(1 for _, s in self.calls if s > DEADLINE_SECONDS)
        slow_503 = sum(1 for st, s in self.calls if st == 503 and s > FAST_503_SECONDS)
        n = len(self.calls)
        return {
            "calls": n, "statuses": statuses, "per_second": round(n / wall, 1) if wall else 0,
            "ok_per_second": round(statuses.get("200", 0) / wall, 1) if wall else 0,
            "ok_within_deadline_pct": round(100 * ok_in_time / n, 1) if n else 0.0,
            "later_than_deadline": late, "slow_503": slow_503,
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(1000 * latencies[min(n - 1, int(n * 0.99))], 1) if latencies else None,
            "max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        }


class Caller:
    """Makes signed hook calls with fresh tokens (signed beforehand, as an EHR would)."""

    def __init__(self, url: str, tokens: list[str], body: bytes) -> None:
        self._url = url
        self._tokens = tokens
        self._body = body
        self._lock = threading.Lock()

    def call(self, outcomes: Outcomes) -> None:
        with self._lock:
            token = self._tokens.pop()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        started = time.monotonic()
        status, cards = 0, []
        try:
            response = requests.post(self._url, data=self._body, headers=headers, timeout=(5, 30))
            status = response.status_code
            if status == 200:
                cards = [c["uuid"] for c in response.json().get("cards", [])]
        except requests.RequestException:
            pass
        outcomes.add(status, time.monotonic() - started, cards)


def paced(caller: Caller, rate: float, duration: float, outcomes: Outcomes, threads: int = 32) -> None:
    """``rate`` calls a second for ``duration`` seconds, each in its own thread (an open loop)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            pool.submit(caller.call, outcomes)
            n += 1
            time.sleep(max(0.0, start + n / rate - time.monotonic()))


def closed_loop(caller: Caller, callers: int, duration: float, outcomes: Outcomes) -> None:
    """``callers`` callers, each calling again as soon as it is answered, for ``duration`` seconds."""
    stop_at = time.monotonic() + duration

    def loop() -> None:
        while time.monotonic() < stop_at:
            caller.call(outcomes)

    threads = [threading.Thread(target=loop) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- fault makers ---------------------------------------------------------------------------------

START = b"POST /cds-services/order-select HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@contextlib.contextmanager
def slow_clients(port: int, count: int, interval: float = 5.0) -> Iterator[list[socket.socket]]:
    """``count`` connections sending a request's start, then a header line every ``interval`` s; one
    the server closes is opened again at once, so ``count`` stay open (a sustained slowloris)."""
    socks: list[socket.socket] = []
    stop = threading.Event()
    reopened = 0
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(START)
        socks.append(sock)

    def drip() -> None:
        nonlocal reopened
        n = 0
        while not stop.wait(interval):
            n += 1
            for i, sock in enumerate(socks):
                try:
                    sock.sendall(f"X-Slow-{n}: {n}\r\n".encode())
                except OSError:
                    sock.close()
                    with contextlib.suppress(OSError):
                        socks[i] = socket.create_connection(("127.0.0.1", port), timeout=5)
                        socks[i].sendall(START)
                        reopened += 1

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        yield socks
    finally:
        stop.set()
        thread.join()
        for sock in socks:
            sock.close()
        print(f"  slow connections: {count} held open; {reopened} reopened after the server closed them")


class SlowFhir(BaseHTTPRequestHandler):
    """A FHIR server answering every query with the benchmark patient's data after ``delay`` s."""

    delay = 0.5
    prefetch: dict[str, Any] = {}
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        time.sleep(self.delay)
        resource = self._answer(self.path)
        body = json.dumps(resource).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, path: str) -> dict[str, Any]:
        route = path.split("?", 1)[0].rstrip("/").split("/")
        if len(route) >= 2 and route[-2] == "Patient":
            return self.prefetch["patient"]
        key = PREFETCH_KEY_OF_TYPE.get(route[-1])
        if key is None:
            return {"resourceType": "Bundle", "type": "searchset", "entry": []}
        return self.prefetch[key]

    def log_message(self, *_args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the service hanging up on a slow answer (its deadline) is expected here


@contextlib.contextmanager
def slow_fhir_server(prefetch: dict[str, Any], delay: float) -> Iterator[str]:
    handler = type("Handler", (SlowFhir,), {"delay": delay, "prefetch": prefetch})
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/fhir"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def store_locked(database_url: str, seconds: float) -> Iterator[None]:
    """Hold every write lock of the store for ``seconds`` from another connection (in a thread)."""
    release = threading.Event()
    holding = threading.Event()

    def hold_sqlite(paths: list[str]) -> None:
        conns = []
        for path in paths:
            conn = sqlite3.connect(path, timeout=10, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            conns.append(conn)
        holding.set()
        release.wait(seconds)
        for conn in conns:
            conn.execute("ROLLBACK")
            conn.close()

    def hold_postgresql() -> None:
        import psycopg

        with psycopg.connect(database_url) as conn:
            conn.execute("LOCK TABLE seen_tokens, cards, card_suggestions, feedback IN ACCESS EXCLUSIVE MODE")
            holding.set()
            release.wait(seconds)
            conn.rollback()

    if database_url.startswith("sqlite:///"):
        store = sa.make_url(database_url)
        target = lambda: hold_sqlite([store.database, replay_database_url(store).database])  # noqa: E731
    else:
        target = hold_postgresql
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    holding.wait(10)
    try:
        yield
    finally:
        thread.join(seconds + 5)
        release.set()


# --- the service and the proxy ------------------------------------------------------------------

def serve_command(config_file: Path, port: int, worker_class: str) -> list[str]:
    """`lumbar-mri-cds serve` with its defaults, or (for the comparison) the same app under another worker."""
    if worker_class == "buffered":
        return [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--config", str(config_file)]
    return [sys.executable, str(Path(__file__)), "--serve-with", worker_class, "--config", str(config_file),
            "--port", str(port)]


def serve_with(worker_class: str, config_file: Path, port: int) -> None:
    """The service's app and gunicorn options, but another gunicorn worker class (the comparison)."""
    from service import config
    from service import server

    settings = config.load_settings(config_file, {})
    options = server.gunicorn_options(settings, host="127.0.0.1", port=port, workers=2)
    options["worker_class"] = worker_class
    if worker_class == "sync":
        options.pop("threads")
    from service.app import build_services

    build_services(settings).close()
    server.GunicornApp(lambda: server._service_app(settings), options).run()


def nginx_config(upstream_port: int, listen_port: int, workdir: Path) -> Path:
    """deploy/nginx.conf with the upstream and listen addresses of this run, temp files in workdir."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    text = text.replace("server cds:8000", f"server 127.0.0.1:{upstream_port}")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    text = text.replace("http {", "http {\n    client_body_temp_path %s/body;\n    proxy_temp_path %s/proxy;\n"
                        "    fastcgi_temp_path %s/fastcgi;\n    uwsgi_temp_path %s/uwsgi;\n    scgi_temp_path %s/scgi;\n"
                        % ((workdir,) * 5), 1)
    text = text.replace("access_log /dev/stdout", f"access_log {workdir}/access.log")
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


@contextlib.contextmanager
def nginx(upstream_port: int, listen_port: int, workdir: Path) -> Iterator[None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise SystemExit("nginx is not installed (Debian: apt-get install nginx)")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o777)
    conf = nginx_config(upstream_port, listen_port, workdir)
    command = [binary, "-p", str(workdir), "-c", str(conf), "-g",
               f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log;"]
    process = subprocess.Popen(command)
    try:
        serving.wait_healthy(process, listen_port, lambda: (workdir / "error.log").read_text(errors="replace"))
        yield
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# --- phases -------------------------------------------------------------------------------------

@dataclass
class Run:
    port: int            # where calls go (the proxy, or the service)
    master: int          # the service's gunicorn master
    tokens: load.Tokens
    body: dict[str, Any]
    database_url: str
    args: argparse.Namespace
    forwarder: databases.Forwarder | None  # between the service and PostgreSQL, for store-stall

    def caller(self, count: int, body: dict[str, Any] | None = None) -> Caller:
        tokens = self.tokens.file(count).read_text().split()
        return Caller(f"http://127.0.0.1:{self.port}{load.PATH}", tokens,
                      json.dumps(body or self.body).encode())


def slow_clients_phase(run: Run) -> dict[str, Any]:
    duration = run.args.duration
    caller = run.caller(int(duration) + 10)
    outcomes = Outcomes()
    with slow_clients(run.port, 200):
        time.sleep(1)
        started = time.monotonic()
        paced(caller, 1.0, duration, outcomes)
        wall = time.monotonic() - started
    return outcomes.summary(wall)


def slow_fhir_phase(run: Run, fhir_base: str) -> dict[str, Any]:
    duration = run.args.duration
    caller = run.caller(int(duration * 60) + 200, load.without_prefetch(run.body, fhir_base))
    outcomes = Outcomes()
    started = time.monotonic()
    closed_loop(caller, 20, duration, outcomes)
    return outcomes.summary(time.monotonic() - started)


def store_hang_phase(run: Run) -> dict[str, Any]:
    caller = run.caller(200)
    outcomes = Outcomes()
    started = time.monotonic()
    with store_locked(run.database_url, 10.0):
        paced(caller, 5.0, 10.0, outcomes)
    time.sleep(2)
    paced(caller, 5.0, 3.0, outcomes)  # and after: answering again
    return outcomes.summary(time.monotonic() - started)


def store_stall_phase(run: Run) -> dict[str, Any]:
    if run.forwarder is None:
        return {"skipped": "PostgreSQL only (--database postgresql://...)"}
    caller = run.caller(200)
    outcomes = Outcomes()
    started = time.monotonic()
    run.forwarder.stall()
    try:
        paced(caller, 5.0, 10.0, outcomes)
    finally:
        run.forwarder.resume()
    time.sleep(2)
    paced(caller, 5.0, 3.0, outcomes)  # and after: answering again
    return outcomes.summary(time.monotonic() - started)


def kill_phase(run: Run) -> dict[str, Any]:
    duration = run.args.duration
    caller = run.caller(int(duration * 400) + 100)
    outcomes = Outcomes()
    killed = 0
    stop_at = time.monotonic() + duration
    loader = threading.Thread(target=closed_loop, args=(caller, 4, duration, outcomes))
    loader.start()
    while time.monotonic() < stop_at - 1:
        time.sleep(2)
        workers = serving.worker_pids(run.master)
        if workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(workers[0], signal.SIGKILL)
                killed += 1
    loader.join()
    summary = outcomes.summary(duration)
    time.sleep(1.0)  # the card writers' last batches
    summary.update(workers_killed=killed, cards_answered=len(outcomes.cards))
    summary["_cards"] = outcomes.cards
    return summary


def count_missing(database_url: str, uuids: list[str]) -> int:
    import sqlalchemy as sa

    from service.store import schema

    engine = schema.create_engine(database_url)
    found: set[str] = set()
    with engine.connect() as conn:
        for n in range(0, len(uuids), 500):
            chunk = uuids[n:n + 500]
            found |= set(conn.execute(sa.select(schema.cards.c.card_uuid).where(schema.cards.c.card_uuid.in_(chunk))).scalars())
    engine.dispose()
    return len(set(uuids) - found)


def show(name: str, summary: dict[str, Any]) -> None:
    shown = {k: v for k, v in summary.items() if not k.startswith("_")}
    print(f"{name}: {json.dumps(shown)}", flush=True)


def run_phases(run: Run, phases: list[str], fhir_base: str, results: dict[str, Any]) -> None:
    for phase in phases:
        if phase == "slow-clients":
            results[phase] = slow_clients_phase(run)
        elif phase == "slow-fhir":
            results[phase] = slow_fhir_phase(run, fhir_base)
        elif phase == "store-hang":
            results[phase] = store_hang_phase(run)
        elif phase == "store-stall":
            results[phase] = store_stall_phase(run)
        elif phase == "kill":
            results[phase] = kill_phase(run)
        else:
            raise SystemExit(f"unknown phase {phase!r}")
        if phase != "kill":
            show(phase, results[phase])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated, of: " + ", ".join(PHASES))
    parser.add_argument("--proxy", action="store_true", help="send every call through nginx (deploy/nginx.conf)")
    parser.add_argument("--database", help="database_url (default: SQLite in a temporary directory)")
    parser.add_argument("--worker-class", default="buffered", choices=["buffered", "sync", "gthread", "gevent"])
    parser.add_argument("--duration", type=float, default=20, help="seconds of the slow-clients, slow-fhir and kill phases")
    parser.add_argument("--json", type=Path, help="write the figures to FILE")
    parser.add_argument("--serve-with", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_with:
        serve_with(args.serve_with, args.config, args.port)
        return
    phases = [p for p in args.phases.split(",") if p]
    body = json.loads(load.FIXTURE.read_bytes())
    results: dict[str, Any] = {"load_before": os.getloadavg(), "proxy": args.proxy, "worker_class": args.worker_class}
    print(f"machine: {os.cpu_count()} cores, load average {results['load_before'][0]:.2f}; "
          f"worker class {args.worker_class}{', behind nginx' if args.proxy else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lumbar-faults-") as tmp, \
            slow_fhir_server(body["prefetch"], 0.5) as fhir_base:
        workdir = Path(tmp)
        service_port = serving.free_port()
        front_port = serving.free_port() if args.proxy else service_port
        tokens = load.Tokens(workdir, f"http://127.0.0.1:{front_port}{load.PATH}")
        database_url = args.database or f"sqlite:///{workdir / 'faults.db'}"
        stall = "store-stall" in phases and not database_url.startswith("sqlite")
        forwarding = databases.forwarded(database_url) if stall else contextlib.nullcontext((database_url, None))
        with forwarding as (service_database, forwarder):
            config_file = serving.write_config(workdir, port=front_port, jwks_file=tokens.jwks_file, issuer=load.ISSUER,
                                               database_url=service_database, fhir_servers=(fhir_base,))
            command = serve_command(config_file, service_port, args.worker_class)
            with load.running(command, service_port, workdir / "service.log") as service, \
                    nginx(service_port, front_port, workdir / "nginx") if args.proxy else contextlib.nullcontext():
                run = Run(front_port, service.pid, tokens, body, database_url, args, forwarder)
                run_phases(run, phases, fhir_base, results)
        if "kill" in results:  # the service has stopped (SIGTERM: queued cards written); count what is stored
            cards = results["kill"].pop("_cards")
            results["kill"]["cards_lost"] = count_missing(database_url, cards)
            show("kill", results["kill"])
    results["load_after"] = os.getloadavg()
    print(f"machine: load average after {results['load_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

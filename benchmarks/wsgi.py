"""In-process CPU per call of the whole request path: the service's WSGI app against the floor's.

    python benchmarks/wsgi.py [--calls N] [--profile service|floor] [--top K]

No sockets, no gunicorn, no load generator: each call is a WSGI environ built beforehand (the
realistic 62 kB order-select request with its own signed ES384 token) handed to the app as gunicorn
would, and the answer read to the end. What is timed is everything the two apps do in Python, with
the same production configuration `load.py` uses (SQLite store, replay cache, card writer thread,
JSON log lines, metrics). CPU time (``time.process_time``, every thread of the process) per call is
the figure: on a shared machine it moves much less than latency does. The ratio floor/service is
what the throughput ratio of `load.py` approaches when both are CPU-bound.

``--profile`` runs cProfile over the calls of one app and prints the functions by own time and by
cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # `service`, `tests` and `benchmarks` from this checkout

from benchmarks import floor  # noqa: E402
from benchmarks import load  # noqa: E402
from service import config  # noqa: E402
from service import server  # noqa: E402
from service.app import create_app  # noqa: E402
from service.web import observability  # noqa: E402
from tests import serving  # noqa: E402

PORT = 8000  # only part of the audience URL: nothing listens


def environ(body: bytes, token: str) -> dict[str, Any]:
    """What gunicorn hands the app for one hook call."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": load.PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(PORT),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": f"127.0.0.1:{PORT}",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_ACCEPT": "application/json",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def call(app: Callable[..., Any], env: dict[str, Any]) -> int:
    """One WSGI call, the answer read to the end; its status."""
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        status.append(s)
        return lambda _data: None

    result = app(env, start_response)
    try:
        for _chunk in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(status[0].split()[0])


def measure(app: Callable[..., Any], environs: list[dict[str, Any]], profile: cProfile.Profile | None = None) -> dict[str, float]:
    """CPU ms per call over these environs (each used once), and wall-clock p50/p99."""
    walls = []
    cpu_start = time.process_time()
    if profile is not None:
        profile.enable()
    for env in environs:
        start = time.perf_counter()
        status = call(app, env)
        walls.append(time.perf_counter() - start)
        if status != 200:
            raise SystemExit(f"a call answered {status}")
    if profile is not None:
        profile.disable()
    cpu = time.process_time() - cpu_start
    q = statistics.quantiles(walls, n=100)
    return {"cpu_ms": cpu * 1000 / len(environs), "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="measured calls per app and round")
    parser.add_argument("--rounds", type=int, default=10, help="service/floor rounds (alternating)")
    parser.add_argument("--profile", choices=("service", "floor"), help="cProfile this app's calls instead")
    parser.add_argument("--only", choices=("service", "floor"), help="run this app's calls only (for instructions.py)")
    parser.add_argument("--top", type=int, default=40, help="rows of the profile to print")
    args = parser.parse_args()
    body = load.FIXTURE.read_bytes()
    with tempfile.TemporaryDirectory(prefix="lumbar-wsgi-") as tmp:
        workdir = Path(tmp)
        tokens = load.Tokens(workdir, f"http://127.0.0.1:{PORT}{load.PATH}")
        config_file = serving.write_config(workdir, port=PORT, jwks_file=tokens.jwks_file, issuer=load.ISSUER)
        settings = config.load_settings(config_file, {})
        # As `serve` does; the lines go to a file, as a worker's stderr would.
        observability.configure_logging(settings.log_level)
        log_file = (workdir / "service.log").open("w")
        for handler in logging.getLogger().handlers:
            handler.setStream(log_file)  # type: ignore[attr-defined]
        # Built as a gunicorn worker builds them (service/server.py).
        apps = {"service": server.worker_app(lambda: create_app(settings)),
                "floor": server.worker_app(lambda: floor.create_app(settings))}
        warm = 300
        needed = warm * 2 + args.calls * (1 if args.profile else 2 * args.rounds)
        pool = iter(tokens.file(needed).read_text().split())

        def environs(n: int) -> list[dict[str, Any]]:
            return [environ(body, next(pool)) for _ in range(n)]

        for app in apps.values():
            measure(app, environs(warm))
        if args.only:
            measure(apps[args.only], environs(args.calls))
            apps["service"].extensions["lumbar_mri_cds"].close()
            return
        if args.profile:
            profiler = cProfile.Profile()
            r = measure(apps[args.profile], environs(args.calls), profiler)
            print(f"{args.profile}: {r['cpu_ms']:.2f} ms CPU per call under cProfile ({args.calls} calls)")
            for order in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
                print(out.getvalue())
            return
        rows: dict[str, list[dict[str, float]]] = {"service": [], "floor": []}
        for _ in range(args.rounds):
            for name, app in apps.items():
                rows[name].append(measure(app, environs(args.calls)))
        for name, runs in rows.items():
            print(f"{name:<8} CPU per call {statistics.median(r['cpu_ms'] for r in runs):5.2f} ms "
                  f"(rounds {min(r['cpu_ms'] for r in runs):.2f}-{max(r['cpu_ms'] for r in runs):.2f}); "
                  f"wall p50 {statistics.median(r['p50_ms'] for r in runs):5.2f} ms, "
                  f"p99 {statistics.median(r['p99_ms'] for r in runs):5.2f} ms")
        # Rounds alternate, so both apps see the same neighbours: the ratio of each round is steadier
        # than either figure on a shared machine.
        ratios = sorted(f["cpu_ms"] / s["cpu_ms"] for s, f in zip(rows["service"], rows["floor"], strict=True))
        print(f"floor/service CPU ratio {statistics.median(ratios):.2f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}; "
              "the throughput ratio of load.py approaches it when both are CPU-bound)")
        apps["service"].extensions["lumbar_mri_cds"].close()


if __name__ == "__main__":
    main()

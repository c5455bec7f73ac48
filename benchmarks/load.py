"""HTTP end to end: `lumbar-mri-cds serve` against the floor, driven by wrk with signed hook calls.

    python benchmarks/load.py [--duration 10] [--repeats 3] [--connections 4] [--rss-requests 10000]
                              [--no-fhir] [--profile FILE] [--json FILE]

One run, all on this machine (loopback only, every loop bounded in time or count):

1. Writes a production configuration (tests/serving.py's: local JWKS file, SQLite in a temporary
   directory) and starts ``lumbar-mri-cds serve --workers 2`` and the floor (benchmarks/floor.py: the
   same gunicorn settings, orjson parse + PyJWT verify + ``{"cards": []}``); with Node installed,
   also the in-memory Medplum FHIR server (tests/fhirserver), loaded with fixtures/patients/*.json
   and the benchmark patient.
2. Memory: drives the service with --rss-requests calls per worker and reads each worker's RSS
   (/proc) after 100 and after --rss-requests calls per worker (the leak check).
3. Throughput: alternates service and floor at full speed (--connections, closed loop) --repeats
   times and prints requests/s, p50, p99 and the service/floor ratio of each pair, and the workers'
   CPU time per call (from /proc: steadier than requests/s when other work shares the cores).
4. Latency at half load: the service paced at half its median maximum throughput; p50, p99.
5. FHIR: one connection, the realistic request with prefetch, then the same request with no
   prefetch (the service fetches everything from the Medplum server); the added latency and the
   FHIR requests made per call.

With --profile FILE, an extra full-speed run is sampled with py-spy (``pip install py-spy``; it needs
ptrace rights: root, or CAP_SYS_PTRACE) and the functions taking the most samples are printed.

Every request is the realistic order-select call (fixtures/requests/benchmark-realistic.json: ~20
Conditions, ~60 Observations) with its own pre-signed ES384 token (a fresh ``jti``). wrk and the
servers share the machine's cores: read the figures with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.security import signer as signing  # noqa: E402
from tests import serving  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURE = ROOT / "fixtures" / "requests" / "benchmark-realistic.json"
PATIENTS = ROOT / "fixtures" / "patients"
ISSUER = "https://ehr.benchmark.test"
KID = "bench-key-1"
PATH = "/cds-services/order-select"
SPARE_TOKENS = 50
TOKEN_LIFETIME_SECONDS = 1800  # the service refuses more than an hour; a whole run fits in this


# --- tokens -------------------------------------------------------------------------------------

def _sign_chunk(args: tuple[bytes, str, int]) -> list[str]:
    pem, audience, count = args
    signer = signing.Signer(key=serialization.load_pem_private_key(pem, password=None), iss=ISSUER, kid=KID)
    exp = int(time.time()) + TOKEN_LIFETIME_SECONDS
    return [signer.token(audience, exp=exp) for _ in range(count)]


class Tokens:
    """Signs fresh tokens as the EHR would (two processes: ES384 signing is ~0.5 ms a token)."""

    def __init__(self, directory: Path, audience: str) -> None:
        self._key = ec.generate_private_key(ec.SECP384R1())
        self._pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._audience = audience
        self._directory = directory
        self._files = 0
        self.jwks_file = directory / "jwks.json"
        self.jwks_file.write_text(json.dumps(signing.public_jwks(self._key, KID)))

    def file(self, count: int) -> Path:
        """A file of `count` new tokens (and a few spare: wrk builds one request to check the script)."""
        count += SPARE_TOKENS
        chunks = [(self._pem, self._audience, min(2000, count - n)) for n in range(0, count, 2000)]
        with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
            lines = [t for chunk in pool.map(_sign_chunk, chunks) for t in chunk]
        self._files += 1
        path = self._directory / f"tokens-{self._files}.txt"
        path.write_text("\n".join(lines) + "\n")
        return path


@dataclass(frozen=True)
class Server:
    port: int    # on 127.0.0.1
    master: int  # the gunicorn master's pid (its children are the workers)


# --- servers ------------------------------------------------------------------------------------

@contextlib.contextmanager
def running(command: list[str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    """Start a server whose output goes to `log` (a pipe nobody reads would fill up and stall it, as
    the service writes a log line per call); wait for /healthz; SIGTERM afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            serving.wait_healthy(process, port, lambda: log.read_text(errors="replace"))
            yield process
        finally:
            serving.stop(process)


def floor_command(config_file: Path, port: int, workers: int) -> list[str]:
    return [sys.executable, str(HERE / "floor.py"), "--config", str(config_file), "--port", str(port),
            "--workers", str(workers)]


def cpu_seconds(master: int) -> float:
    """User + system CPU time of all the master's workers (all their threads), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in serving.worker_pids(master):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def fhir_server(body: dict[str, Any]) -> Iterator[str | None]:
    """The Medplum FHIR server with every fixture patient and the benchmark patient; None without Node."""
    if shutil.which("node") is None:
        print("node not found: skipping the FHIR run", file=sys.stderr)
        yield None
        return
    from tests.fhirserver import runner

    with runner.running_fhir_server() as base:
        for path in sorted(PATIENTS.glob("*.json")):
            runner.load_bundle(base, path.read_bytes())
        runner.load_bundle(base, prefetch_bundle(body))
        yield base


def prefetch_bundle(body: dict[str, Any]) -> dict[str, Any]:
    """A collection Bundle of every resource in the request's prefetch (to load into a FHIR server)."""
    entries = []
    for value in body["prefetch"].values():
        if value.get("resourceType") == "Bundle":
            entries += [{"resource": e["resource"]} for e in value.get("entry", [])]
        else:
            entries.append({"resource": value})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def without_prefetch(body: dict[str, Any], fhir_base: str) -> dict[str, Any]:
    """The same call with no prefetch: the service must fetch everything from `fhir_base`."""
    out = copy.deepcopy(body)
    out.pop("prefetch", None)
    out["fhirServer"] = fhir_base
    out["fhirAuthorization"] = {"access_token": "benchmark-token", "token_type": "Bearer", "expires_in": 300,
                                "scope": "patient/*.read", "subject": "lumbar-mri-cds"}
    return out


# --- wrk ----------------------------------------------------------------------------------------

def wrk(port: int, tokens: Path, body: Path, *, duration: float, connections: int, rate: float = 0,
        limit: int = 0, master: int | None = None) -> dict[str, Any]:
    """One wrk run (one thread); its RESULT line as a dict, with requests/s (and, given the server's
    master pid, its workers' CPU milliseconds per call) added."""
    cpu_before = cpu_seconds(master) if master else 0.0
    command = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "10s",
               "-s", str(HERE / "hook.lua"), f"http://127.0.0.1:{port}", "--",
               str(tokens), str(body), PATH, "1", str(rate), str(limit)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for text in process.stdout:  # type: ignore[union-attr]
        lines.append(text)
        if text.strip() == "LIMIT":  # the count is reached: wrk would otherwise wait out -d
            process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    line = next((x for x in lines if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{''.join(lines)}\n{process.stderr.read()}")  # type: ignore[union-attr]
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if master:
        result["cpu_ms_per_call"] = (cpu_seconds(master) - cpu_before) * 1000 / max(1, result["requests"])
    errors = result["non_2xx"] + result["connect_errors"] + result["read_errors"] + result["write_errors"] + result["timeouts"]
    result["errors"] = errors
    return result


def ms(us: float) -> float:
    return us / 1000.0


def row(label: str, r: dict[str, Any]) -> str:
    return (f"  {label:<34} {r['rps']:8.1f} req/s   p50 {ms(r['p50_us']):6.2f} ms   p99 {ms(r['p99_us']):6.2f} ms"
            + (f"   CPU {r['cpu_ms_per_call']:5.2f} ms/call" if "cpu_ms_per_call" in r else "")
            + f"   ({r['requests']} calls{', ' + str(r['errors']) + ' ERRORS' if r['errors'] else ''})")


def check(r: dict[str, Any], what: str, *, replay_matters: bool) -> None:
    if r["errors"]:
        raise SystemExit(f"{what}: {r['errors']} failed calls: {r}")
    if replay_matters and r["token_wraps"]:
        raise SystemExit(f"{what}: the token pool ran out (tokens reused); raise the pool size")


# --- phases -------------------------------------------------------------------------------------

def memory_phase(service: Server, tokens: Tokens, body: Path, args: argparse.Namespace) -> dict[str, Any]:
    master, port = service.master, service.port
    workers = serving.worker_pids(master)
    early = 100 * len(workers)
    late = args.rss_requests * len(workers)
    first = wrk(port, tokens.file(early), body, duration=300, connections=args.connections, limit=early)
    check(first, "memory (first calls)", replay_matters=True)
    at_early = {pid: rss_mib(pid) for pid in workers}
    rest = wrk(port, tokens.file(late - early), body, duration=1200, connections=args.connections, limit=late - early,
               master=master)
    check(rest, "memory (rest)", replay_matters=True)
    at_late = {pid: rss_mib(pid) for pid in serving.worker_pids(master)}
    print(f"\nMemory: RSS of each worker (calls spread over {len(workers)} workers)")
    for pid in workers:
        grown = (at_late[pid] - at_early[pid]) / at_early[pid] * 100
        print(f"  worker {pid}: after ~100 calls {at_early[pid]:6.1f} MiB, after ~{args.rss_requests} calls "
              f"{at_late[pid]:6.1f} MiB ({grown:+.1f} %)")
    print(row("(these calls, closed loop)", rest))
    return {"workers": workers, "rss_early_mib": at_early, "rss_late_mib": at_late, "calls": early + rest["requests"],
            "run": rest}


def throughput_phase(service: Server, floor: Server, tokens: Tokens, body: Path, estimate: float,
                     args: argparse.Namespace) -> dict[str, Any]:
    # The floor has no replay cache, so for it a pool sized by a short probe is enough.
    probe = wrk(floor.port, tokens.file(2000), body, duration=3, connections=args.connections)
    pairs = []
    print(f"\nThroughput: {args.connections} connections, closed loop, {args.duration:g} s a run, service and floor alternating")
    for n in range(args.repeats):
        s = wrk(service.port, tokens.file(int(estimate * args.duration * 1.5) + 200), body,
                duration=args.duration, connections=args.connections, master=service.master)
        check(s, "service", replay_matters=True)
        f = wrk(floor.port, tokens.file(int(probe["rps"] * args.duration * 1.5) + 200), body,
                duration=args.duration, connections=args.connections, master=floor.master)
        check(f, "floor", replay_matters=False)
        estimate = max(estimate, s["rps"])
        print(row(f"service, run {n + 1}", s))
        print(row(f"floor,   run {n + 1}", f) + f"   ratio {s['rps'] / f['rps']:.2f}")
        pairs.append((s, f))
    ratios = [s["rps"] / f["rps"] for s, f in pairs]
    service_rps = statistics.median(s["rps"] for s, _ in pairs)
    floor_rps = statistics.median(f["rps"] for _, f in pairs)
    service_cpu = statistics.median(s["cpu_ms_per_call"] for s, _ in pairs)
    floor_cpu = statistics.median(f["cpu_ms_per_call"] for _, f in pairs)
    print(f"  median: service {service_rps:.1f} req/s, floor {floor_rps:.1f} req/s; "
          f"service/floor ratio median {statistics.median(ratios):.2f} (runs: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"  worker CPU per call (less sensitive to other load): service {service_cpu:.2f} ms, floor {floor_cpu:.2f} ms; "
          f"floor/service {floor_cpu / service_cpu:.2f}")
    return {"pairs": pairs, "ratios": ratios, "service_rps": service_rps, "floor_rps": floor_rps,
            "service_cpu_ms": service_cpu, "floor_cpu_ms": floor_cpu}


def half_load_phase(service: Server, tokens: Tokens, body: Path, max_rps: float, args: argparse.Namespace) -> dict[str, Any]:
    rate = max_rps / 2
    duration = max(args.duration, 10)
    r = wrk(service.port, tokens.file(int(rate * duration * 1.2) + 200), body, duration=duration,
            connections=args.connections, rate=rate, master=service.master)
    check(r, "half load", replay_matters=True)
    print(f"\nLatency at half the maximum throughput (paced at {rate:.0f} req/s, {duration:g} s)")
    print(row("service", r))
    return {"rate": rate, "run": r}


def fhir_phase(service: Server, tokens: Tokens, body: dict[str, Any], body_file: Path, base: str, workdir: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    empty = workdir / "empty-prefetch.json"
    empty.write_bytes(json.dumps(without_prefetch(body, base)).encode())
    duration = max(args.duration, 10)
    pool = 2000 + int(duration * 1000)
    with_prefetch = wrk(service.port, tokens.file(pool), body_file, duration=duration, connections=1, master=service.master)
    check(with_prefetch, "FHIR run, with prefetch", replay_matters=True)
    fetched = wrk(service.port, tokens.file(pool), empty, duration=duration, connections=1, master=service.master)
    check(fetched, "FHIR run, empty prefetch", replay_matters=True)
    calls = fhir_requests_per_call(without_prefetch(body, base))
    print(f"\nFHIR: one connection, {duration:g} s each; Medplum in-memory server on loopback")
    print(row("service, full prefetch", with_prefetch))
    print(row("service, empty prefetch (fetches)", fetched))
    print(f"  added by fetching: p50 +{ms(fetched['p50_us'] - with_prefetch['p50_us']):.2f} ms, "
          f"p99 +{ms(fetched['p99_us'] - with_prefetch['p99_us']):.2f} ms; {calls} FHIR requests per call")
    return {"with_prefetch": with_prefetch, "empty_prefetch": fetched, "fhir_requests_per_call": calls}


def fhir_requests_per_call(body: dict[str, Any]) -> int:
    """HTTP requests the pipeline sends to the FHIR server for this call (same code path, in-process)."""
    from service import pipeline
    from service.intake import envelope
    from service.intake import fhir_client

    request = envelope.parse_request(body, hook="order-select")
    evaluator = pipeline.Evaluator.load()
    with fhir_client.FhirFetcher(timeout_seconds=2.0, max_pages=10, max_bytes=20_000_000) as fetcher:
        call = fetcher.for_call(base=request.fhir_server, access_token="benchmark-token",
                                deadline=time.monotonic() + 3.8)
        evaluation = evaluator.evaluate(request, date.today(), call)
    return evaluation.record.fhir_requests if evaluation.record else 0


def profile_phase(service: Server, tokens: Tokens, body: Path, estimate: float, out: Path,
                  args: argparse.Namespace) -> None:
    """py-spy on one worker during an extra full-speed run (not one of the measured runs)."""
    pid = serving.worker_pids(service.master)[0]
    duration = max(args.duration, 10)
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "250",
                            "--format", "raw", "--output", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1)
    wrk(service.port, tokens.file(int(estimate * duration * 1.5) + 200), body, duration=duration,
        connections=args.connections)
    spy.wait(timeout=60)
    print(f"\nProfile of worker {pid} (py-spy, wall clock of its busy threads: waiting on SQLite's fsync counts,")
    print(f"waiting for the next connection does not). Share of samples per function, inclusive; stacks: {out}")
    for share, frame in profile_summary(out):
        print(f"  {share:5.1f} %  {frame}")


def _frame(raw: str) -> str:
    """`func (/path/to/file.py:123)` -> `func (file.py)`: one entry per function, whatever the line."""
    name, _, where = raw.strip().partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0].rstrip(')')})"


def profile_summary(path: Path, top: int = 30) -> list[tuple[float, str]]:
    """Inclusive share of samples of the frames in service/ and of a few library frames of interest."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = {_frame(f) for f in stack.split(";")}
        for frame in frames:
            counts[frame] = counts.get(frame, 0) + int(n)
    wanted = ("hooks.py", "pipeline.py", "cards.py", "actions.py", "extract.py", "prefetch.py", "envelope.py",
              "jwt.py", "replay.py", "card_store.py", "card_writer.py", "observability.py", "metrics.py", "auth.py", "cors.py",
              "api_jws.py", "algorithms.py", "wsgi.py", "app.py", "default.py")
    rows = [(n * 100 / max(1, total), f) for f, n in counts.items() if any(f"({w})" in f for w in wanted)]
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="service/floor run pairs")
    parser.add_argument("--connections", type=int, default=4, help="concurrent connections at full speed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rss-requests", type=int, default=10_000, help="calls per worker before the second RSS reading")
    parser.add_argument("--no-fhir", action="store_true", help="skip the run against the Medplum FHIR server")
    parser.add_argument("--profile", type=Path, help="also record a py-spy profile of one worker into FILE")
    parser.add_argument("--json", type=Path, help="write every figure to FILE")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    body = json.loads(FIXTURE.read_bytes())
    load_before = os.getloadavg()
    results: dict[str, Any] = {"cores": os.cpu_count(), "load_before": load_before}
    print(f"machine: {os.cpu_count()} cores, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="lumbar-load-") as tmp, \
            fhir_server(body) if not args.no_fhir else contextlib.nullcontext() as fhir_base:
        workdir = Path(tmp)
        service_port, floor_port = serving.free_port(), serving.free_port()
        tokens = Tokens(workdir, f"http://127.0.0.1:{service_port}{PATH}")
        config_file = serving.write_config(workdir, port=service_port, jwks_file=tokens.jwks_file, issuer=ISSUER,
                                           fhir_servers=(fhir_base,) if fhir_base else ())
        body_file = workdir / "request.json"
        body_file.write_bytes(FIXTURE.read_bytes())
        with running(serving.serve_command(config_file, service_port, args.workers), service_port, workdir / "service.log") as service, \
                running(floor_command(config_file, floor_port, args.workers), floor_port, workdir / "floor.log") as floor:
            service_server, floor_server = Server(service_port, service.pid), Server(floor_port, floor.pid)
            print(f"service: lumbar-mri-cds serve --workers {args.workers} (pid {service.pid}); "
                  f"floor: benchmarks/floor.py --workers {args.workers}; body {body_file.stat().st_size} bytes")
            memory = memory_phase(service_server, tokens, body_file, args)
            results["memory"] = memory
            results["throughput"] = throughput_phase(service_server, floor_server, tokens, body_file,
                                                     memory["run"]["rps"], args)
            results["half_load"] = half_load_phase(service_server, tokens, body_file,
                                                   results["throughput"]["service_rps"], args)
            if fhir_base:
                results["fhir"] = fhir_phase(service_server, tokens, body, body_file, fhir_base, workdir, args)
            if args.profile:
                profile_phase(service_server, tokens, body_file, results["throughput"]["service_rps"],
                              args.profile, args)
    results["load_after"] = os.getloadavg()
    print(f"\nmachine: load average after {results['load_after'][0]:.2f} {results['load_after'][1]:.2f} "
          f"{results['load_after'][2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Feedback posts per second through a real `lumbar-mri-cds serve --workers 2`, on SQLite and PostgreSQL.

    python benchmarks/feedback.py [--posts 2000] [--concurrency 8] [--workers 2] [--databases sqlite,postgresql]

For each database: write a production-profile configuration with a test EHR issuer (a fresh ES384
key, its JWKS in a file), issue the cards to give feedback on straight into the store, start the
server, sign one token per post beforehand (each with its own `jti`, as an EHR would), then post
one feedback item per request from a thread pool and print posts/s and latency percentiles. Every
post goes through the whole path: token check (and its replay-table insert), validation, the card
lookup and a committed insert. PostgreSQL gets a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from service.security import signer as signing
from service.store import card_store
from service.store import schema

ISSUER = "https://ehr.bench.example"
KID = "bench-key"
POSTGRES_URL = os.environ.get("LUMBAR_MRI_CDS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=2000, help="feedback posts per database")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP384R1())
    print(f"{args.posts} posts, {args.concurrency} client threads, {args.workers} workers, one item per post")
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory() as tmp, database(kind.strip(), Path(tmp)) as url:
            if url is None:
                print(f"{kind:<11} skipped: PostgreSQL not reachable")
                continue
            print(f"{kind:<11} " + run(url, Path(tmp), key, args))


class database:
    """A database URL: a SQLite file in `tmp`, or a fresh PostgreSQL schema (None if unreachable)."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp, self.schema, self.admin = kind, tmp, None, None

    def __enter__(self) -> str | None:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp / 'bench.db'}"
        try:
            self.admin = psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True)
        except psycopg.OperationalError:
            return None
        self.schema = f"lmc_bench_{uuid.uuid4().hex[:10]}"
        self.admin.execute(f'CREATE SCHEMA "{self.schema}"')
        return f"{POSTGRES_URL}?options=-csearch_path%3D{self.schema}"

    def __exit__(self, *_exc: object) -> None:
        if self.admin is not None:
            self.admin.execute(f'DROP SCHEMA "{self.schema}" CASCADE')
            self.admin.close()


def run(url: str, tmp: Path, key: ec.EllipticCurvePrivateKey, args: argparse.Namespace) -> str:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp, key, base, url)
    cards = issue_cards(url, args.posts)
    server = start_server(config, port, args.workers, tmp)
    try:
        wait_ready(base, server)
        path = "/cds-services/order-select/feedback"
        tokens = [sign(key, base + path) for _ in range(args.posts)]
        latencies = post_all(base + path, cards, tokens, args.concurrency)
    finally:
        server.terminate()
        server.wait(15)
    elapsed, times = latencies
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
    return (
        f"{len(times) / elapsed:8.0f} posts/s   p50 {statistics.median(times) * 1000:6.1f} ms"
        f"   p90 {p(0.90):6.1f} ms   p99 {p(0.99):6.1f} ms"
    )


def write_config(tmp: Path, key: ec.EllipticCurvePrivateKey, base: str, url: str) -> Path:
    (tmp / "jwks.json").write_text(json.dumps(signing.public_jwks(key, KID)))
    config = tmp / "bench.toml"
    config.write_text(
        f'profile = "production"\npublic_base_url = "{base}"\ndatabase_url = "{url}"\nlog_level = "WARNING"\n'
        f'[cors]\nallow_origins = []\n'
        f'[[issuers]]\niss = "{ISSUER}"\njwks_file = "jwks.json"\nfhir_servers = ["http://127.0.0.1:9/fhir"]\n'
    )
    return config


def issue_cards(url: str, n: int) -> list[card_store.IssuedCard]:
    """The cards the feedback is about, written before the clock starts."""
    engine = schema.create_engine(url)
    schema.create_schema(engine)
    store = card_store.CardStore(engine, salt="bench")
    cards = [
        card_store.IssuedCard(
            card_uuid=str(uuid.uuid4()), suggestion_uuids=(str(uuid.uuid4()),), service_id="order-select",
            rule_id=("acute-uncomplicated", "no-indication", "red-flag")[i % 3], indicator="warning",
            rating="not-appropriate", hook_instance=str(uuid.uuid4()), issuer=ISSUER, tenant=None,
            patient_id=f"bench-{i}")
        for i in range(n)
    ]
    for start in range(0, n, 100):
        store.record_cards(cards[start:start + 100])
    store.close()
    engine.dispose()
    return cards


def start_server(config: Path, port: int, workers: int, tmp: Path) -> subprocess.Popen[bytes]:
    command = shutil.which("lumbar-mri-cds")
    argv = [command] if command else [sys.executable, "-m", "service.cli"]
    argv += ["serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
    log = (tmp / "server.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if requests.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def sign(key: ec.EllipticCurvePrivateKey, aud: str) -> str:
    return signing.Signer(key=key, iss=ISSUER, kid=KID).token(aud, exp=int(time.time()) + 600)


def post_all(url: str, cards: list[card_store.IssuedCard], tokens: list[str], concurrency: int) -> tuple[float, list[float]]:
    local = threading.local()

    def post(i: int) -> float:
        session = getattr(local, "session", None) or setattr(local, "session", requests.Session()) or local.session
        card = cards[i]
        item = {"card": card.card_uuid, "outcome": "overridden" if i % 2 else "accepted",
                "outcomeTimestamp": "2025-03-03T10:00:00Z"}
        if i % 2 == 0:
            item["acceptedSuggestions"] = [{"id": card.suggestion_uuids[0]}]
        started = time.perf_counter()
        answer = session.post(url, json={"feedback": [item]}, headers={"Authorization": f"Bearer {tokens[i]}"}, timeout=30)
        took = time.perf_counter() - started
        if answer.status_code != 200:
            raise SystemExit(f"post {i}: HTTP {answer.status_code}: {answer.text[:200]}")
        return took

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = list(pool.map(post, range(len(cards))))
    return time.perf_counter() - started, times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()

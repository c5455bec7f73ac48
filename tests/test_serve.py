"""End to end through a real `lumbar-mri-cds serve` process (gunicorn, 2 workers, real HTTP)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import time
from datetime import date

import pytest
import requests

from tests import fhir
from tests.conftest import ISSUER
from tests.serving import free_port
from tests.serving import serving
from tests.serving import write_config


@pytest.fixture(scope="module")
def server(tmp_path_factory, jwks_file):
    port = free_port()
    directory = tmp_path_factory.mktemp("serve")
    config = write_config(directory, port=port, jwks_file=jwks_file, issuer=ISSUER)
    with serving(config, port) as process:
        yield f"http://127.0.0.1:{port}", process


def call(base, signer, path, body, **extra):
    token = signer.token(path, aud=base + path)
    return requests.post(base + path, json=body, headers={"Authorization": f"Bearer {token}", **extra}, timeout=10)


@pytest.mark.parametrize(("name", "rules"), [
    ("acute-uncomplicated", ["acute-uncomplicated"]),
    ("cauda-equina", ["cauda-equina"]),
    ("trauma-ct-first", ["trauma-ct-first"]),
    ("pregnancy-contrast", ["acute-uncomplicated", "pregnancy-contrast"]),
])
def test_fixture_over_real_http(server, signer, name, rules):
    base, _ = server
    response = call(base, signer, "/cds-services/order-select", fhir.load_request(name, shift_to=date.today()))
    assert response.status_code == 200
    assert [c["source"]["topic"]["code"] for c in response.json()["cards"]] == rules


@pytest.mark.parametrize("name", ["sandbox-empty-order", "sandbox-medication-order", "sandbox-dstu2-medication-order"])
def test_sandbox_shapes_over_real_http(server, signer, name):
    base, _ = server
    response = call(base, signer, "/cds-services/order-select", fhir.load_request(name), Origin="https://sandbox.cds-hooks.org")
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_order_select_without_selections_from_an_ehr_is_a_400(server, signer):
    """Only the sandbox's own tokens get the empty answer for this shape (tests/web/test_hooks.py)."""
    base, _ = server
    response = call(base, signer, "/cds-services/order-select", fhir.load_request("sandbox-no-draft-orders"))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["context.selections"]


def test_discovery_and_token_checks_over_real_http(server, signer):
    base, _ = server
    assert requests.get(base + "/cds-services", timeout=5).status_code == 200
    body = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    assert requests.post(base + "/cds-services/order-select", json=body, timeout=5).status_code == 401
    # a token for another URL (aud) is refused
    token = signer.token("/cds-services/order-sign", aud=base + "/cds-services/order-sign")
    response = requests.post(base + "/cds-services/order-select", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert response.status_code == 401


def test_garbage_gets_a_clean_error_not_a_500(server, signer):
    base, _ = server
    path = "/cds-services/order-select"
    token = signer.token(path, aud=base + path)
    response = requests.post(base + path, data=b"\xff\xfe{", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "Traceback" not in response.text


def test_sigterm_stops_the_server_cleanly(tmp_path, jwks_file):
    port = free_port()
    config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    with serving(config, port, workers=1) as process:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_serve_refuses_a_bad_configuration(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "bad.toml"
    config.write_text('profile = "production"\n')  # no issuers
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--config", str(config)], capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"at least one [[issuers]]" in result.stderr


def test_feedback_round_trip_survives_a_restart(tmp_path, jwks_file, signer):
    """Cards from a real serve process, feedback on them, a restart, and the report counts it all."""
    import json
    import subprocess
    import sys

    port = free_port()
    config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    base = f"http://127.0.0.1:{port}"
    with serving(config, port):
        card = call(base, signer, "/cds-services/order-select", fhir.load_request("acute-uncomplicated", shift_to=date.today())).json()["cards"][0]
        feedback = {"feedback": [{
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": card["overrideReasons"][1], "userComment": "PT done at another clinic"},
            "outcomeTimestamp": "2026-11-26T10:00:00Z",
        }]}
        response = call(base, signer, "/cds-services/order-select/feedback", feedback)
        assert response.status_code == 200, response.text
    with serving(config, port):  # a restart: the same database, nothing lost
        accepted = {"feedback": [{"card": card["uuid"], "outcome": "accepted",
                                  "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                                  "outcomeTimestamp": "2026-11-26T10:05:00Z"}]}
        assert call(base, signer, "/cds-services/order-select/feedback", accepted).status_code == 200
    result = subprocess.run([sys.executable, "-m", "service.cli", "report", "--config", str(config), "--json"],
                            capture_output=True, timeout=60, check=True)
    report = json.loads(result.stdout)
    rule = report["rules"]["acute-uncomplicated"]
    assert rule["cards"] == 1
    assert (rule["accepted"], rule["overridden"]) == (1, 0)  # one card: its latest outcome counts
    assert report["cards_total"] == 1


def serve_once(*args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "service.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_serve_with_an_unreachable_database_says_so_in_a_line(tmp_path, jwks_file):
    port = free_port()
    dead = free_port()  # nothing listens there
    config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER,
                          database_url=f"postgresql://cds:pa55word@127.0.0.1:{dead}/cds")
    result = serve_once("--config", str(config), "--port", str(port))
    assert result.returncode == 5
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
    assert f"the database postgresql://cds:***@127.0.0.1:{dead}/cds cannot be used" in result.stderr
    assert "pa55word" not in result.stderr


def test_serve_on_a_port_in_use_hints_at_port(tmp_path, jwks_file):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
        result = serve_once("--config", str(config), "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_add_up_across_the_default_two_workers_without_any_setting(tmp_path, jwks_file):
    """`serve` makes a private multiprocess directory itself when PROMETHEUS_MULTIPROC_DIR is unset.

    One worker is held on a half-sent request while the other answers the calls, so both workers
    count some: a scrape, whichever worker answers it, must report the sum.
    """
    import socket

    from tests.web.test_metrics import samples
    from tests.web.test_metrics import value

    port = free_port()
    config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    base = f"http://127.0.0.1:{port}"
    calls = 6
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with serving(config, port, env={"PROMETHEUS_MULTIPROC_DIR": None, "TMPDIR": str(scratch)}):  # unset
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            held.sendall(b"GET /cds-services HTTP/1.1\r\n")  # one sync worker now waits for the rest
            time.sleep(0.3)
            for _ in range(calls):  # answered by the other worker
                assert requests.get(base + "/cds-services", timeout=10, headers={"Connection": "close"}).status_code == 200
            held.sendall(b"Host: localhost\r\nConnection: close\r\n\r\n")
            assert held.recv(64).startswith(b"HTTP/1.1 200")
        for _ in range(4):
            found = samples(requests.get(base + "/metrics", timeout=10, headers={"Connection": "close"}).text)
            assert value(found, "lumbar_mri_cds_requests_total", endpoint="discovery", service="-", status="200") == calls + 1
        assert list(scratch.glob("lumbar-mri-cds-metrics-*"))  # made by serve...
    assert not list(scratch.glob("lumbar-mri-cds-metrics-*"))  # ...and removed when it stops


def test_each_instance_has_a_control_socket_of_its_own(tmp_path, jwks_file):
    import os

    from service.server import control_socket_path

    ports = [free_port(), free_port()]
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    configs = []
    for port in ports:
        directory = tmp_path / str(port)
        directory.mkdir()
        configs.append(write_config(directory, port=port, jwks_file=jwks_file, issuer=ISSUER))
    paths = [control_socket_path("127.0.0.1", port, {**os.environ, **env}) for port in ports]
    assert paths[0] != paths[1]
    with serving(configs[0], ports[0], workers=1, env=env), serving(configs[1], ports[1], workers=1, env=env):
        for path in paths:
            deadline = time.monotonic() + 10
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert stat.S_ISSOCK(os.stat(path).st_mode), path


# --- issue 15: slow clients ---------------------------------------------------------------------


def test_slow_clients_do_not_stop_the_service(tmp_path, jwks_file, signer):
    """Connections that send a request's start and then dawdle (slowloris) cost a socket each, not a
    worker or a thread: with 1 worker of 2 threads and 30 of them open, real calls are answered; the
    dawdlers are closed once their request has taken 5 s to arrive."""
    port = free_port()
    config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    base = f"http://127.0.0.1:{port}"
    with serving(config, port, workers=1, extra=["--threads", "2"], env={"LUMBAR_MRI_CDS_DEADLINE_SECONDS": "2.0"}):
        slow = []
        try:
            for n in range(30):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"POST /cds-services/order-select HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
                if n % 2:
                    sock.sendall(b"\r\n{")  # headers done, body stalled
                slow.append(sock)
            time.sleep(0.5)
            for _ in range(3):
                started = time.monotonic()
                response = call(base, signer, "/cds-services/order-select",
                                fhir.load_request("acute-uncomplicated", shift_to=date.today()))
                assert response.status_code == 200
                assert time.monotonic() - started < 2
            # and a request still arriving after twice the deadline (at least 5 s) is closed
            for sock in slow:
                sock.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(100) == b""
        finally:
            for sock in slow:
                sock.close()


@pytest.mark.parametrize(("host", "behind_proxy", "warns"), [
    ("127.0.0.1", False, False), ("::1", False, False), ("localhost", False, False),
    ("0.0.0.0", False, True), ("192.0.2.10", False, True), ("::", False, True), ("0.0.0.0", True, False),
])
def test_serve_warns_beyond_loopback_without_a_proxy(host, behind_proxy, warns):
    from service import server as serving_model

    warning = serving_model.proxy_warning(host, behind_proxy=behind_proxy)
    assert (warning is not None) == warns
    if warns:
        assert "--behind-proxy" in warning and "deploy/nginx.conf" in warning


def test_cards_answered_by_a_killed_worker_are_not_lost(tmp_path, jwks_file, signer):
    """kill -9 of a worker whose card writer could not commit yet (the store's cards table locked):
    the worker that replaces it recovers the cards from the outbox, so feedback on them is accepted."""
    import sqlite3

    import sqlalchemy as sa

    from service.store import schema
    from tests.serving import worker_pids

    port = free_port()
    database = tmp_path / "serve.db"
    config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    base = f"http://127.0.0.1:{port}"
    with serving(config, port, workers=1) as process:
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the replay file is another one: calls are still answered
        uuids = []
        for _ in range(5):
            response = call(base, signer, "/cds-services/order-select",
                            fhir.load_request("acute-uncomplicated", shift_to=date.today()))
            assert response.status_code == 200
            uuids += [c["uuid"] for c in response.json()["cards"]]
        (worker,) = worker_pids(process.pid)
        os.kill(worker, signal.SIGKILL)
        lock.execute("ROLLBACK")
        lock.close()
        engine = schema.create_engine(f"sqlite:///{database}")
        deadline = time.monotonic() + 20
        found: set[str] = set()
        while time.monotonic() < deadline and found != set(uuids):
            time.sleep(0.2)
            with engine.connect() as conn:
                found = set(conn.execute(sa.select(schema.cards.c.card_uuid)).scalars())
        engine.dispose()
        assert found >= set(uuids)
        feedback = {"feedback": [{"card": uuids[0], "outcome": "overridden", "outcomeTimestamp": "2026-01-01T10:00:00Z",
                                  "overrideReason": {"reason": {"code": "patient-preference"}}}]}
        response = call(base, signer, "/cds-services/order-select/feedback", feedback)
        assert response.status_code == 200, response.text


def test_calls_queued_behind_a_slow_fhir_server_are_never_answered_late(tmp_path, jwks_file, signer):
    """One request thread, a FHIR server answering after 1.2 s, a 2 s deadline, 3 calls at once: the
    calls that waited for the thread are answered (200, 412 or a fast 503) within their deadline,
    counted from when they arrived, not from when the thread took them."""
    import threading
    from http.server import BaseHTTPRequestHandler
    from http.server import ThreadingHTTPServer

    class SlowFhir(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            time.sleep(1.2)
            body = b'{"resourceType": "Bundle", "type": "searchset", "entry": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    fhir_server = ThreadingHTTPServer(("127.0.0.1", 0), SlowFhir)
    fhir_server.daemon_threads = True
    threading.Thread(target=fhir_server.serve_forever, daemon=True).start()
    fhir_base = f"http://127.0.0.1:{fhir_server.server_address[1]}/fhir"
    port = free_port()
    config = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER, fhir_servers=(fhir_base,))
    base = f"http://127.0.0.1:{port}"
    request_body = fhir.load_request("acute-uncomplicated", shift_to=date.today())
    request_body["prefetch"].pop("conditions")  # fetched from the slow server
    request_body["fhirServer"] = fhir_base
    request_body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                         "scope": "patient/*.read", "subject": "cds"}
    try:
        with serving(config, port, workers=1, extra=["--threads", "1"],
                     env={"LUMBAR_MRI_CDS_DEADLINE_SECONDS": "2.0"}):
            results = []

            def one() -> None:
                started = time.monotonic()
                response = call(base, signer, "/cds-services/order-select", request_body)
                results.append((response.status_code, time.monotonic() - started))

            callers = [threading.Thread(target=one) for _ in range(3)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
    finally:
        fhir_server.shutdown()
        fhir_server.server_close()
    statuses = sorted(status for status, _ in results)
    assert all(took < 2.0 + 0.3 for _, took in results), results  # never answered after the deadline
    assert statuses[0] == 200 and 503 in statuses, results       # the first is served, a queued one refused fast

"""`audit --fhir-server`: $export kick-off against a test FHIR server (202 twice, then the manifest),
with the hook path's allowlist and token rules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from werkzeug import Request
from werkzeug import Response

from service.audit import bulk
from service.security import fhir_servers
from tests.audit.conftest import read_summary
from tests.audit.conftest import run_cli

TOKEN = "secret-bulk-token"


def _config(tmp_path: Path, base: str, jwks: Path) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(f'profile = "production"\npublic_base_url = "https://cds.example.org"\n'
                    f'patient_hash_salt = "s"\n[[issuers]]\niss = "https://ehr.example.test"\n'
                    f'jwks_file = "{jwks}"\nfhir_servers = ["{base}"]\n')
    (tmp_path / "token").write_text(TOKEN + "\n")
    return path


class FakeBulkServer:
    """$export: 202 with Content-Location; the status URL answers 202 twice, then the manifest."""

    def __init__(self, httpserver, files: dict[str, bytes], *, file_base: str | None = None) -> None:
        self.base = httpserver.url_for("/fhir")
        self.polls: list[float] = []
        self.auth: dict[str, str | None] = {}
        self.kick_off_query: dict[str, str] = {}
        file_base = file_base or self.base
        self.manifest = {"transactionTime": "2026-01-01T00:00:00Z", "request": f"{self.base}/$export",
                         "requiresAccessToken": True, "error": [],
                         "output": [{"type": name.split(".")[0], "url": f"{file_base}/files/{name}"} for name in files]}
        httpserver.expect_request("/fhir/$export").respond_with_handler(self.kick_off)
        httpserver.expect_request("/fhir/status/42").respond_with_handler(self.status)
        for name, body in files.items():
            httpserver.expect_request(f"/fhir/files/{name}").respond_with_handler(self.file(name, body))

    def kick_off(self, request: Request) -> Response:
        self.auth["kick-off"] = request.headers.get("Authorization")
        self.kick_off_query = dict(request.args)
        assert request.headers.get("Prefer") == "respond-async"
        return Response(status=202, headers={"Content-Location": f"{self.base}/status/42"})

    def status(self, request: Request) -> Response:
        self.auth["status"] = request.headers.get("Authorization")
        self.polls.append(time.monotonic())
        if len(self.polls) <= 2:
            return Response(status=202, headers={"Retry-After": "1", "X-Progress": f"{50 * len(self.polls)}%"})
        return Response(bulk.orjson.dumps(self.manifest), status=200, content_type="application/json")

    def file(self, name: str, body: bytes):
        def handler(request: Request) -> Response:
            self.auth[name] = request.headers.get("Authorization")
            return Response(body, status=200, content_type="application/fhir+ndjson")
        return handler


def _files(export_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(export_dir.glob("*.ndjson"))}


def test_kick_off_polls_honouring_retry_after_then_downloads_and_audits(capsys, tmp_path, httpserver, small_export, jwks_file):
    server = FakeBulkServer(httpserver, _files(small_export))
    config = _config(tmp_path, server.base, jwks_file)
    code, _, err = run_cli(capsys, "audit", "--fhir-server", server.base, "--token-file", str(tmp_path / "token"),
                           "--config", str(config), "--out", str(tmp_path / "out"), "--since", "2025-01-01")
    assert code == 0, err
    assert len(server.polls) == 3
    assert server.polls[1] - server.polls[0] >= 0.95 and server.polls[2] - server.polls[1] >= 0.95  # Retry-After: 1
    assert "Patient" in server.kick_off_query["_type"].split(",") and "Condition" in server.kick_off_query["_type"]
    assert set(server.auth.values()) == {f"Bearer {TOKEN}"}
    assert len(server.auth) == 2 + len(_files(small_export))
    assert TOKEN not in err
    assert sorted(p.name for p in (tmp_path / "out" / "export").iterdir())[0] == "Condition.001.ndjson"
    assert read_summary(tmp_path / "out")["orders"] > 20


def test_a_fhir_server_no_issuer_may_send_tokens_to_is_not_contacted(capsys, tmp_path, httpserver, jwks_file):
    server = FakeBulkServer(httpserver, {})
    config = _config(tmp_path, "https://ehr.example.test/fhir", jwks_file)
    code, _, err = run_cli(capsys, "audit", "--fhir-server", server.base, "--token-file", str(tmp_path / "token"),
                           "--config", str(config), "--out", str(tmp_path / "out"))
    assert code == 6
    assert "is not a FHIR server any configured issuer's tokens may be sent to" in err
    assert server.auth == {}


def test_a_file_outside_the_base_that_requires_the_token_is_refused(capsys, tmp_path, httpserver, small_export, jwks_file):
    server = FakeBulkServer(httpserver, {"Patient.ndjson": b"{}\n"}, file_base="http://elsewhere.invalid/fhir")
    config = _config(tmp_path, server.base, jwks_file)
    code, _, err = run_cli(capsys, "audit", "--fhir-server", server.base, "--token-file", str(tmp_path / "token"),
                           "--config", str(config), "--out", str(tmp_path / "out"))
    assert code == 6
    assert "lies outside" in err and "the token is not sent there" in err
    assert TOKEN not in err


def test_a_file_that_dot_segments_lead_out_of_the_base_is_refused(capsys, tmp_path, httpserver, small_export, jwks_file):
    # Same host and port: only the resolved path tells that ".." leaves /fhir for another base.
    server = FakeBulkServer(httpserver, {"Patient.ndjson": b"{}\n"})
    server.manifest["output"][0]["url"] = f"{server.base}/../other-tenant/fhir/files/Patient.ndjson"
    config = _config(tmp_path, server.base, jwks_file)
    code, _, err = run_cli(capsys, "audit", "--fhir-server", server.base, "--token-file", str(tmp_path / "token"),
                           "--config", str(config), "--out", str(tmp_path / "out"))
    assert code == 6
    assert "lies outside" in err and "the token is not sent there" in err
    assert "Patient.ndjson" not in server.auth


def test_a_failed_export_exits_6_with_the_servers_diagnostics(capsys, tmp_path, httpserver, jwks_file):
    httpserver.expect_request("/fhir/$export").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "no bulk access"}]},
        status=403)
    base = httpserver.url_for("/fhir")
    config = _config(tmp_path, base, jwks_file)
    code, _, err = run_cli(capsys, "audit", "--fhir-server", base, "--config", str(config), "--out", str(tmp_path / "out"))
    assert code == 6
    assert "expected 202 Accepted, got HTTP 403: no bulk access" in err


@pytest.mark.parametrize(("value", "seconds"), [(None, 2.0), ("3", 3.0), ("0", 0.0), ("-5", 0.0), ("100000", 300.0),
                                                ("soon", 2.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after(value, seconds):
    assert bulk.retry_after(value) == seconds


@pytest.mark.parametrize(("url", "inside"), [
    ("https://ehr.example/fhir/status/1", True), ("https://ehr.example/fhir", True),
    ("https://ehr.example/fhirx/status", False), ("https://other.example/fhir/x", False),
    ("http://ehr.example/fhir/x", False), ("https://ehr.example:8443/fhir/x", False),
    ("https://user:pw@ehr.example/fhir/x", False),
    # Dot segments are resolved before the check, as for the hook's next links (fhir_servers.resolve_under).
    ("https://ehr.example/fhir/../admin/export", False), ("https://ehr.example/fhir/%2e%2e/admin", False),
    ("https://ehr.example/fhir/a/%2Fb", False), ("https://ehr.example/fhir/a/../status/1", True),
])
def test_the_token_goes_only_under_the_base(url, inside):
    assert (fhir_servers.resolve_under("https://ehr.example/fhir", url) is not None) is inside

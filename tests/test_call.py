"""`lumbar-mri-cds call` against a real development-profile `serve`, as a newcomer uses it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import requests
import sqlalchemy as sa

from service import config
from tests.conftest import ISSUER
from tests.fhir import FIXTURES
from tests.serving import free_port
from tests.serving import serving
from tests.serving import write_config
from tests.serving import write_development_config

FIXTURE = FIXTURES / "requests" / "acute-uncomplicated.json"


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """A development-profile server whose data directory (and so the local issuer's key) is its own."""
    directory = tmp_path_factory.mktemp("dev")
    env = {"XDG_DATA_HOME": str(directory / "data"), config.CONFIG_ENV: ""}
    port = free_port()
    with serving(write_development_config(directory), port, env=env) as process:
        yield f"http://127.0.0.1:{port}", directory, env, process


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**_base_env(), **env})


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("LUMBAR_MRI_CDS_")}


def test_call_prints_the_card_like_evaluate(dev_server):
    base, directory, env, _ = dev_server
    result = cli("call", str(FIXTURE), "--url", base, "--as-of", "2026-11-26", env=env)
    assert result.returncode == 0, result.stderr
    assert "[WARNING] Lumbar MRI not recommended: acute low back pain without red flags" in result.stdout
    assert "Rating: ServiceRequest/example-request-id = not-appropriate" in result.stdout
    # the key was made on first use in the data directory: private key 0600, beside its public JWKS
    key = directory / "data" / "lumbar-mri-cds" / "local-issuer.key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    jwks = json.loads((directory / "data" / "lumbar-mri-cds" / config.LOCAL_JWKS_FILE).read_text())
    assert "d" not in jwks["keys"][0]


def test_call_json_and_a_fresh_hook_instance_each_time(dev_server):
    base, directory, env, _ = dev_server
    for _ in range(2):
        result = cli("call", str(FIXTURE), "--url", base, "--as-of", "2026-11-26", "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["cards"][0]["source"]["topic"]["code"] == "acute-uncomplicated"
    engine = sa.create_engine(f"sqlite:///{directory / 'dev.db'}")
    try:
        with engine.connect() as conn:
            instances = conn.execute(sa.text("SELECT hook_instance FROM cards")).scalars().all()
    finally:
        engine.dispose()
    fixture_instance = json.loads(FIXTURE.read_text())["hookInstance"]
    assert len(set(instances)) == len(instances) >= 2
    assert fixture_instance not in instances


def test_call_a_malformed_request_exits_3_with_the_servers_reason(dev_server, tmp_path):
    base, _, env, _ = dev_server
    request = json.loads(FIXTURE.read_text())
    del request["context"]["selections"]
    bad = tmp_path / "no-selections.json"
    bad.write_text(json.dumps(request))
    result = cli("call", str(bad), "--url", base, env=env)
    assert result.returncode == 3
    assert "answered 400: context.selections is required for the order-select hook" in result.stderr


def test_call_with_no_server_says_so(tmp_path):
    result = cli("call", str(FIXTURE), "--url", f"http://127.0.0.1:{free_port()}",
                 env={"XDG_DATA_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "is `lumbar-mri-cds serve` running there?" in result.stderr
    assert "Traceback" not in result.stderr


def test_call_refuses_the_production_profile(tmp_path, jwks_file):
    production = write_config(tmp_path, port=8000, jwks_file=jwks_file, issuer=ISSUER)
    result = cli("call", str(FIXTURE), "--config", str(production), env={"XDG_DATA_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "never trusts it" in result.stderr
    assert not (tmp_path / "lumbar-mri-cds").exists()  # no key made for production


def test_a_production_server_refuses_calls_signed_by_the_local_issuer(tmp_path, jwks_file):
    port = free_port()
    production = write_config(tmp_path, port=port, jwks_file=jwks_file, issuer=ISSUER)
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    with serving(production, port) as process:
        result = cli("call", str(FIXTURE), "--url", f"http://127.0.0.1:{port}", env=env)
    assert result.returncode == 1
    assert "answered 401" in result.stderr
    assert f"iss '{config.LOCAL_ISSUER}' is not a configured issuer" in process.captured.decode()


def test_the_development_warning_is_printed_once_not_per_worker(dev_server):
    base, _, _, process = dev_server
    assert requests.get(base + "/healthz", timeout=5).status_code == 200  # both workers are up by now
    output = process.output()
    assert output.count("DEVELOPMENT PROFILE") == 1, output[-3000:]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_call_curl_prints_a_command_that_makes_the_same_call(dev_server):
    import shlex

    base, _, env, _ = dev_server
    result = cli("call", str(FIXTURE), "--url", base, "--curl", env=env)
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout)
    assert command[:5] == ["curl", "-sS", "-X", "POST", base + "/cds-services/order-select"]
    answered = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert answered.returncode == 0, answered.stderr
    assert "cards" in json.loads(answered.stdout)  # the file's own dates: the card depends on today


def test_call_to_something_else_says_so(httpserver, tmp_path):
    httpserver.expect_request("/cds-services/order-select").respond_with_data("<html>hello</html>", content_type="text/html")
    result = cli("call", str(FIXTURE), "--url", httpserver.url_for("/").rstrip("/"), env={"XDG_DATA_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "without JSON: is lumbar-mri-cds serving there?" in result.stderr
    assert "Traceback" not in result.stderr

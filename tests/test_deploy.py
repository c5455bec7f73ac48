"""The deployment files agree with the configuration format and the service's interface.

No Docker engine runs here: docker-compose.yml is validated by `docker compose config` (or the
older `docker-compose config`) when a client is installed, and always parsed and checked against
what the service reads (configuration keys, environment overrides, endpoints).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from service import config
from service.cli import cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY_CONFIG = ROOT / "deploy" / "config.toml"
DEMO_CONFIG = ROOT / "deploy" / "demo.toml"
SEED = ROOT / "deploy" / "seed.py"
PATIENTS = ROOT / "fixtures" / "patients"
SECRETS = {"POSTGRES_PASSWORD": "test-password", "PATIENT_HASH_SALT": "test-salt"}

yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def substituted(value: str) -> str:
    """A compose value with ${VAR}, ${VAR:-default} and ${VAR:?message} filled in as for `up`."""
    def fill(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in SECRETS:
            return SECRETS[name]
        if op == ":-":
            return rest
        raise AssertionError(f"{name} has no value in this test")
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", fill, value)


def service_environment(compose) -> dict[str, str]:
    return {k: substituted(str(v)) for k, v in compose["services"]["cds"]["environment"].items()}


def test_check_config_accepts_the_sample_configuration_and_warns_of_its_placeholder_issuer():
    result = CliRunner().invoke(cli, ["check-config", "--config", str(DEPLOY_CONFIG)], env={config.CONFIG_ENV: ""})
    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.output
    assert "profile: production" in result.output
    assert "issuer https://ehr.example.org is a placeholder" in result.output


def test_check_config_accepts_the_demo_configuration(tmp_path):
    result = CliRunner().invoke(cli, ["check-config", "--config", str(DEMO_CONFIG)],
                                env={config.CONFIG_ENV: "", "XDG_DATA_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "profile: development" in result.output
    assert f"iss: {config.SANDBOX_ISSUER}" in result.output


def mounted_configuration(compose, environ: dict[str, str]) -> Path:
    """The file the cds service mounts as its configuration, with these compose variables."""
    cds = compose["services"]["cds"]
    target = cds["environment"][config.CONFIG_ENV]
    for volume in cds["volumes"]:
        source = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: environ.get(m[1], m[2]), volume)
        if source.split(":")[1] == target:
            return (ROOT / source.split(":")[0]).resolve()
    raise AssertionError(f"nothing mounted at {target}")


def test_compose_mounts_the_demo_by_default_and_the_production_shape_on_request(compose):
    assert mounted_configuration(compose, {}) == DEMO_CONFIG
    assert mounted_configuration(compose, {"CDS_CONFIG": "./deploy/config.toml"}) == DEPLOY_CONFIG


@pytest.mark.parametrize("path", [DEMO_CONFIG, DEPLOY_CONFIG], ids=["demo", "production"])
def test_the_configurations_with_the_compose_environment(compose, path, tmp_path):
    environment = {**service_environment(compose), "XDG_DATA_HOME": str(tmp_path)}
    settings = config.load_settings(path, environment)
    assert settings.database_url == "postgresql://cds:test-password@postgres:5432/cds"
    assert settings.patient_hash_salt == "test-salt"


def test_a_password_with_url_characters_reaches_the_database_intact(compose, monkeypatch):
    """POSTGRES_PASSWORD is passed on its own and escaped into the URL, whatever it holds."""
    import sqlalchemy as sa

    password = "p@ss/w:rd?#%x"
    monkeypatch.setitem(SECRETS, "POSTGRES_PASSWORD", password)
    settings = config.load_settings(DEPLOY_CONFIG, service_environment(compose))
    url = sa.make_url(settings.database_url)
    assert (url.username, url.password, url.host, url.port, url.database) == ("cds", password, "postgres", 5432, "cds")


def test_check_config_refuses_a_password_pasted_unescaped(tmp_path):
    result = CliRunner().invoke(cli, ["check-config", "--config", str(DEPLOY_CONFIG)],
                                env={config.CONFIG_ENV: "", "LUMBAR_MRI_CDS_DATABASE_URL": "postgresql://cds:p@ss/word@postgres:5432/cds"})
    assert result.exit_code == 2
    assert "must be percent-encoded" in result.output
    assert "LUMBAR_MRI_CDS_DATABASE_PASSWORD" in result.output


def test_every_port_is_published_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_the_seed_service_loads_the_fixture_patients_into_hapi_fhir(compose):
    seed = compose["services"]["seed"]
    mounts = {m.split(":")[1]: (ROOT / m.split(":")[0]).resolve() for m in seed["volumes"]}
    command = seed["command"]
    assert mounts[command[1]] == SEED
    assert mounts[command[command.index("--patients") + 1]] == PATIENTS
    assert command[command.index("--fhir") + 1] == "http://hapi-fhir:8080/fhir"
    assert seed["image"] == compose["services"]["cds"]["image"]  # it imports the package's date shifting
    assert seed["restart"] == "no"


def test_the_image_installs_pinned_dependencies():
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "deploy" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not pinned in deploy/requirements.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {text}"
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install -r requirements\.txt", text)
    assert re.search(r"pip install --no-deps \.", text) and "pip check" in text


def test_the_sample_configuration_with_the_compose_environment(compose):
    environment = service_environment(compose)
    settings = config.load_settings(DEPLOY_CONFIG, environment)
    assert settings.profile is config.Profile.PRODUCTION
    assert settings.patient_hash_salt == "test-salt"
    assert settings.limits.deadline_seconds == 4.0
    hapi_base = "http://hapi-fhir:8080/fhir"
    assert any(hapi_base in issuer.fhir_servers for issuer in settings.issuers)
    assert not any("salt is empty" in note for note in settings.warnings())


def test_every_environment_variable_is_one_the_service_reads(compose):
    known = {config.CONFIG_ENV} | {config.ENV_PREFIX + suffix for suffix in config._ENV_OVERRIDES}
    known.add("PROMETHEUS_MULTIPROC_DIR")
    assert set(service_environment(compose)) <= known


def test_the_service_runs_serve_with_the_mounted_configuration(compose):
    cds = compose["services"]["cds"]
    command = cds["command"]
    assert command[:2] == ["lumbar-mri-cds", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert int(command[command.index("--workers") + 1]) >= 2
    port = command[command.index("--port") + 1]
    assert "--behind-proxy" in command  # the proxy below is in front
    assert "ports" not in cds and str(port) in [str(p) for p in cds["expose"]]  # reached through the proxy only
    assert cds["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith(tuple(cds["tmpfs"]))


def test_healthchecks_ask_readyz_and_postgres(compose):
    services = compose["services"]
    assert "/readyz" in " ".join(services["cds"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["cds"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_postgres_and_hapi_fhir_are_the_ones_the_configuration_names(compose):
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "cds"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "cds"
    hapi = services["hapi-fhir"]
    assert hapi["image"].startswith("hapiproject/hapi:")
    assert hapi["environment"]["hapi.fhir.fhir_version"] == "R4"
    raw = tomllib.loads(DEPLOY_CONFIG.read_text())
    assert "http://hapi-fhir:8080/fhir" in raw["issuers"][0]["fhir_servers"]
    assert "@postgres:5432/cds" in raw["database_url"]


def test_the_dockerfile_serves_the_installed_package():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M)
    assert base and (int(base[1]), int(base[2])) >= (3, 11)
    for needed in ("pyproject.toml", "service", "cards"):
        assert re.search(rf"^COPY .*\b{needed}\b", text, re.M), needed
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and '"serve"' in cmd[1] and '"0.0.0.0"' in cmd[1]
    assert "/readyz" in re.search(r"HEALTHCHECK[\s\S]*?CMD (.*)", text)[1]
    assert f"{config.CONFIG_ENV}=/etc/lumbar-mri-cds/config.toml" in text
    assert re.search(r"^USER (?!root)", text, re.M)


def _compose_client() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        if subprocess.run([*command, "version"], capture_output=True).returncode == 0:
            return command
    return None


def test_docker_compose_config_validates_the_file():
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client installed")
    env = {**os.environ, **SECRETS}
    result = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, f"{shlex.join(client)} config: {result.stderr}"
    missing = {k: v for k, v in env.items() if k not in SECRETS}
    result = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=missing, cwd=ROOT)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr  # secrets are required, never defaulted


# --- the demo's seed: fixture patients as transaction Bundles ------------------------------------

def test_the_patient_fixtures_are_transaction_bundles_of_puts():
    for path in sorted(PATIENTS.glob("*.json")):
        bundle = json.loads(path.read_text())
        assert bundle["type"] == "transaction", path.name
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}


def test_seed_loads_every_bundle_into_a_fhir_server_and_prints_the_sandbox_link(tmp_path):
    """deploy/seed.py against a real FHIR server (tests/fhirserver): every transaction is accepted,
    the ids are kept and the dates are moved to today."""
    from datetime import date
    from urllib.parse import parse_qs
    from urllib.parse import urlsplit

    import requests

    from tests.fhirserver.runner import running_fhir_server

    with running_fhir_server() as base:
        result = subprocess.run([sys.executable, str(SEED), "--fhir", base, "--patients", str(PATIENTS), "--wait", "30",
                                 "--public-fhir", "http://localhost:8080/fhir"],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        patient = requests.get(f"{base}/Patient/pat-acute", timeout=10)
        assert patient.status_code == 200
        conditions = requests.get(f"{base}/Condition", params={"patient": "pat-acute"}, timeout=10).json()
        onsets = {e["resource"]["id"]: e["resource"].get("onsetDateTime") for e in conditions["entry"]}
    # the episode began 14 days before the fixtures' day (2026-11-26), so 14 days before today
    assert onsets["cond-acute-lbp"].startswith(str(date.fromordinal(date.today().toordinal() - 14)))
    assert len(re.findall(r"^  [\w-]+: Patient/", result.stdout, re.M)) == len(list(PATIENTS.glob("*.json")))
    link = re.search(r"https://sandbox\.cds-hooks\.org/\?\S+", result.stdout)[0]
    query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    assert query == {"fhirServiceUrl": "http://localhost:8080/fhir", "patientId": "pat-acute",
                     "serviceDiscoveryURL": "http://localhost:8000/cds-services", "hook": "order-select", "screen": "pama"}


def test_seed_reports_a_fhir_server_that_never_answers(tmp_path):
    from tests.serving import free_port

    result = subprocess.run([sys.executable, str(SEED), "--fhir", f"http://127.0.0.1:{free_port()}/fhir",
                             "--patients", str(PATIENTS), "--wait", "1"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert "did not answer within 1 s" in result.stderr


def test_the_quick_starts_virtual_environment_is_ignored_by_git():
    """The README's quick start makes .venv in the clone; `git status` must not list it."""
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".venv/" in ignored or ".venv" in ignored
    if shutil.which("git") and (ROOT / ".git").exists():
        check = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=ROOT)
        assert check.returncode == 0


# --- the reverse proxy (issue 15) ------------------------------------------------------------------

NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def test_the_proxy_publishes_the_service_through_its_nginx_conf(compose):
    proxy = compose["services"]["proxy"]
    assert proxy["image"].startswith("nginx:")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in proxy["volumes"]}
    assert (ROOT / mounts["/etc/nginx/nginx.conf"]).resolve() == NGINX_CONF
    listen = re.search(r"^\s*listen (\d+);", NGINX_CONF.read_text(), re.M)[1]
    assert any(str(p).endswith(f":{listen}") for p in proxy["ports"])
    cds_port = compose["services"]["cds"]["command"][compose["services"]["cds"]["command"].index("--port") + 1]
    assert f"server cds:{cds_port};" in NGINX_CONF.read_text()


def test_the_nginx_conf_buffers_and_times_out():
    text = NGINX_CONF.read_text()
    for directive in ("proxy_request_buffering on", "proxy_buffering on", "client_header_timeout",
                      "client_body_timeout", "send_timeout", "proxy_read_timeout", "proxy_next_upstream off"):
        assert directive in text, directive
    limit = re.search(r"client_max_body_size (\d+)m;", text)
    assert limit and int(limit[1]) * 1_000_000 >= config.LimitsSettings().max_body_bytes


def test_nginx_accepts_the_conf(tmp_path):
    """`nginx -t` on deploy/nginx.conf (Debian: apt-get install nginx; .ci/run installs it)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    # The compose network's `cds` host does not resolve here: point the upstream at loopback, and
    # keep nginx's pid and temp files in tmp_path.
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.read_text().replace("server cds:", "server 127.0.0.1:")
                    .replace("http {", f"http {{\n    client_body_temp_path {tmp_path}/body;\n    proxy_temp_path {tmp_path}/proxy;", 1))
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf),
                             "-g", f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr

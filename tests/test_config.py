"""Settings and profiles (load_settings) and `lumbar-mri-cds check-config`."""

from __future__ import annotations

import json
import textwrap

import pytest

from service import config
from service.cli import cli
from service.cli import main
from service.errors import ConfigError

SANDBOX = config.SANDBOX_ISSUER


@pytest.fixture
def ehr_jwks(tmp_path, ec_key):
    import jwt as pyjwt

    jwk = pyjwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ehr-1", "use": "sig"}
    path = tmp_path / "keys" / "ehr-jwks.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"keys": [jwk]}))
    return path


PRODUCTION = """
profile = "production"
public_base_url = "https://cds.example.org"
database_url = "postgresql://cds:s3cret@db.example.org/cds"
patient_hash_salt = "a-long-random-secret"

[cors]
allow_origins = ["https://sandbox.cds-hooks.org"]

[[issuers]]
iss = "https://ehr.example.org"
jwks_file = "keys/ehr-jwks.json"
fhir_servers = ["https://ehr.example.org/fhir"]
tenants = ["hospital-a"]
"""


def write(tmp_path, text: str, name: str = "config.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# --- profiles ------------------------------------------------------------------------------------


def test_no_configuration_is_the_development_profile(tmp_path):
    settings = config.load_settings(None, {"XDG_DATA_HOME": str(tmp_path)})
    assert settings.profile is config.Profile.DEVELOPMENT
    assert [i.iss for i in settings.issuers] == [SANDBOX, config.LOCAL_ISSUER]
    assert settings.issuers[0].jwks_url == config.SANDBOX_JWKS_URL
    assert settings.issuers[0].jwks_file == config.SANDBOX_JWKS_FILE  # verified offline (shipped key)
    assert settings.issuers[0].any_fhir_server
    # `lumbar-mri-cds call`'s issuer: its public key in the data directory
    assert settings.issuers[1].jwks_file == tmp_path / "lumbar-mri-cds" / config.LOCAL_JWKS_FILE
    assert settings.cors.any_origin
    assert settings.public_base_url is None
    assert settings.database_url == f"sqlite:///{tmp_path / 'lumbar-mri-cds' / 'lumbar-mri-cds.db'}"
    assert any("must not see real patient data" in w for w in settings.warnings())


def test_production_example_loads(tmp_path, ehr_jwks):
    settings = config.load_settings(write(tmp_path, PRODUCTION), {})
    assert settings.profile is config.Profile.PRODUCTION
    (issuer,) = settings.issuers  # no sandbox added in production
    assert issuer.jwks_file == ehr_jwks  # relative to the configuration file, not the cwd
    assert issuer.tenants == ("hospital-a",)
    assert settings.cors.allow_origins == ("https://sandbox.cds-hooks.org",)
    # ehr.example.org is a reserved example domain: the only thing check-config would point out
    assert settings.warnings() == [
        "issuer https://ehr.example.org is a placeholder (a reserved example domain): replace it with your "
        "EHR's issuer and keys, or no real call will be accepted"
    ]
    real = config.load_settings(write(tmp_path, PRODUCTION.replace("ehr.example.org", "ehr.hospital-a.org")), {})
    assert real.warnings() == []


def test_production_without_a_salt_is_pointed_out(tmp_path, ehr_jwks):
    path = write(tmp_path, PRODUCTION.replace('patient_hash_salt = "a-long-random-secret"\n', ""))
    assert any("patient_hash_salt is empty" in w for w in config.load_settings(path, {}).warnings())


def test_development_profile_with_issuers_still_trusts_the_sandbox(tmp_path, ehr_jwks):
    path = write(tmp_path, PRODUCTION.replace('profile = "production"', 'profile = "development"'))
    settings = config.load_settings(path, {})
    assert [i.iss for i in settings.issuers] == ["https://ehr.example.org", SANDBOX, config.LOCAL_ISSUER]


REFUSED = {
    "no-issuers": ('profile = "production"\npublic_base_url = "https://cds.example.org"', "at least one"),
    "sandbox-issuer": (PRODUCTION + f'\n[[issuers]]\niss = "{SANDBOX}"\njwks_url = "{config.SANDBOX_JWKS_URL}"',
                       "refuses the CDS Hooks sandbox issuer"),
    "sandbox-keys-under-another-iss": (
        PRODUCTION + f'\n[[issuers]]\niss = "https://my-ehr.example"\njwks_url = "{config.SANDBOX_JWKS_URL}"',
        "refuses the CDS Hooks sandbox's keys",
    ),
    "local-issuer": (PRODUCTION + f'\n[[issuers]]\niss = "{config.LOCAL_ISSUER}"\njwks_file = "keys/ehr-jwks.json"',
                     "refuses the local issuer"),
    "no-public-base-url": (PRODUCTION.replace('public_base_url = "https://cds.example.org"', ""), "needs public_base_url"),
    "cors-any-origin": (PRODUCTION.replace('["https://sandbox.cds-hooks.org"]', '["*"]'), "any origin"),
    "any-fhir-server": (PRODUCTION + "any_fhir_server = true", "development profile only"),
}


@pytest.mark.parametrize(("text", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_production_refuses(tmp_path, ehr_jwks, text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        config.load_settings(write(tmp_path, text), {})
    assert str(tmp_path / "config.toml") in str(caught.value)


INVALID = {
    "misspelt-issuer-key": (PRODUCTION.replace("tenants =", "tenant ="), "unknown setting\\(s\\) tenant"),
    "any-fhir-server-not-bool": (PRODUCTION + 'any_fhir_server = "false"', "true or false"),
    "issuer-twice": (PRODUCTION + PRODUCTION[PRODUCTION.index("[[issuers]]"):], "more than once"),
    "both-key-sources": (PRODUCTION + 'jwks_url = "https://ehr.example.org/jwks"', "exactly one of"),
    "no-key-source": (PRODUCTION.replace('jwks_file = "keys/ehr-jwks.json"', ""), "exactly one of"),
    "jwks-url-not-http": (PRODUCTION.replace('jwks_file = "keys/ehr-jwks.json"', 'jwks_url = "file:///etc/jwks"'),
                          "jwks_url must be an http"),
    "fhir-server-not-url": (PRODUCTION.replace('"https://ehr.example.org/fhir"', '"ehr/fhir"'), "not an absolute"),
    "tenants-not-list": (PRODUCTION.replace('["hospital-a"]', '"hospital-a"'), "arrays of strings"),
    "base-url-with-query": (PRODUCTION.replace("https://cds.example.org", "https://cds.example.org/?x=1"), "query"),
    "base-url-relative": (PRODUCTION.replace("https://cds.example.org", "/cds"), "absolute http"),
    "cors-origin-with-path": (PRODUCTION.replace('["https://sandbox.cds-hooks.org"]', '["https://x.example/app"]'),
                              "not an origin"),
    "bad-profile": (PRODUCTION.replace('"production"', '"staging"'), "profile must be"),
    "in-memory-sqlite": (PRODUCTION.replace("postgresql://cds:s3cret@db.example.org/cds", "sqlite:///:memory:"),
                         "in-memory SQLite"),
    "in-memory-sqlite-short": (PRODUCTION.replace("postgresql://cds:s3cret@db.example.org/cds", "sqlite://"),
                               "in-memory SQLite"),
    "not-toml": ("profile = ", "not valid TOML"),
    "replay-url-not-redis": (PRODUCTION + '[replay]\nurl = "https://cache.example.org"\n', "replay.url must be a Redis URL"),
    "replay-when-down-unknown": (PRODUCTION + '[replay]\nwhen_down = "ignore"\n', "'refuse' or 'memory'"),
    "replay-unknown-key": (PRODUCTION + '[replay]\nwhen_dwn = "memory"\n', "unknown setting\\(s\\) replay.when_dwn"),
}


@pytest.mark.parametrize(("text", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_configuration(tmp_path, ehr_jwks, text, message):
    with pytest.raises(ConfigError, match=message):
        config.load_settings(write(tmp_path, text), {})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        config.load_settings(tmp_path / "absent.toml", {})


def test_plain_http_is_accepted_and_pointed_out(tmp_path, ehr_jwks):
    text = (PRODUCTION.replace("https://cds.example.org", "http://cds.internal:8000")
            .replace('"https://ehr.example.org/fhir"', '"http://ehr.internal/fhir"'))
    settings = config.load_settings(write(tmp_path, text), {})
    warnings = "\n".join(settings.warnings())
    assert "http://cds.internal:8000" in warnings and "http://ehr.internal/fhir" in warnings


def test_environment_overrides(tmp_path, ehr_jwks):
    environ = {"LUMBAR_MRI_CDS_PUBLIC_BASE_URL": "https://other.example.org/",
               "LUMBAR_MRI_CDS_CORS_ALLOW_ORIGINS": "https://a.example, https://b.example"}
    settings = config.load_settings(write(tmp_path, PRODUCTION), environ)
    assert settings.public_base_url == "https://other.example.org"
    assert settings.cors.allow_origins == ("https://a.example", "https://b.example")


def test_replay_store_settings(runner, tmp_path, ehr_jwks):
    default = config.load_settings(write(tmp_path, PRODUCTION), {})
    assert default.replay == config.ReplaySettings(url=None, when_down=config.ReplayWhenDown.REFUSE)
    text = PRODUCTION + '[replay]\nurl = "redis://:pw@cache.example.org:6379/0"\nwhen_down = "memory"\n'
    settings = config.load_settings(write(tmp_path, text), {})
    assert settings.replay.url == "redis://:pw@cache.example.org:6379/0"
    assert settings.replay.when_down is config.ReplayWhenDown.MEMORY
    assert any("replayed once on another" in w for w in settings.warnings())
    environ = {"LUMBAR_MRI_CDS_REPLAY_URL": "redis://other:6379/1", "LUMBAR_MRI_CDS_REPLAY_WHEN_DOWN": "refuse"}
    overridden = config.load_settings(write(tmp_path, text), environ)
    assert overridden.replay == config.ReplaySettings(url="redis://other:6379/1", when_down=config.ReplayWhenDown.REFUSE)
    out = runner.invoke(cli, ["check-config", "--config", str(write(tmp_path, text))]).output
    assert "replay store: redis://:***@cache.example.org:6379/0; when it is down: memory" in out and ":pw@" not in out


def test_outbox_dir(tmp_path, ehr_jwks):
    settings = config.load_settings(write(tmp_path, PRODUCTION), {"HOME": "/home/cds"})
    assert settings.outbox_dir == config.Path("/home/cds/.local/share/lumbar-mri-cds/outbox")  # PostgreSQL
    settings = config.load_settings(write(tmp_path, 'outbox_dir = "spool"\n' + PRODUCTION), {})
    assert settings.outbox_dir == tmp_path / "spool"  # relative to the configuration file
    environ = {"LUMBAR_MRI_CDS_OUTBOX_DIR": "/tmp/outbox"}
    assert config.load_settings(write(tmp_path, PRODUCTION), environ).outbox_dir == config.Path("/tmp/outbox")
    sqlite = PRODUCTION.replace("postgresql://cds:s3cret@db.example.org/cds", "sqlite:///cds.db")
    assert config.load_settings(write(tmp_path, sqlite), {}).outbox_dir is None  # beside the database file


def test_environment_can_switch_to_production_but_not_past_its_rules(tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        config.load_settings(None, {"LUMBAR_MRI_CDS_PROFILE": "production", "HOME": str(tmp_path)})


# --- check-config --------------------------------------------------------------------------------


def test_check_config_development(runner, tmp_path):
    result = runner.invoke(cli, ["check-config"], env={"LUMBAR_MRI_CDS_CONFIG": "", "XDG_DATA_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "profile: development" in result.output
    assert f"iss: {SANDBOX}" in result.output
    assert "kid 44823f3d-0b01-4a6c-a80e-b9d3e8a7226f (verified offline)" in result.output
    assert f"iss: {config.LOCAL_ISSUER}" in result.output
    assert (tmp_path / "lumbar-mri-cds" / config.LOCAL_JWKS_FILE).is_file()  # created on first use
    assert "must not see real patient data" in result.output
    assert "any origin" in result.output


def test_check_config_production(runner, tmp_path, ehr_jwks):
    result = runner.invoke(cli, ["check-config", "--config", str(write(tmp_path, PRODUCTION))])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "profile: production" in out
    assert "public_base_url: https://cds.example.org" in out
    assert f"jwks_file {ehr_jwks}: loaded, kid ehr-1" in out
    assert "may go to: https://ehr.example.org/fhir" in out
    assert "tenants: hospital-a" in out
    assert "CORS origins: https://sandbox.cds-hooks.org" in out
    assert "postgresql://cds:***@db.example.org/cds" in out and "s3cret" not in out
    assert "is a placeholder" in out


def test_check_config_reads_the_environment_variable(runner, tmp_path, ehr_jwks):
    result = runner.invoke(cli, ["check-config"], env={"LUMBAR_MRI_CDS_CONFIG": str(write(tmp_path, PRODUCTION))})
    assert "profile: production" in result.output


def test_check_config_invalid_exits_2(runner, tmp_path):
    result = runner.invoke(cli, ["check-config", "--config", str(write(tmp_path, 'profile = "production"'))])
    assert result.exit_code == 2
    assert "at least one [[issuers]]" in result.output


def test_check_config_unusable_jwks_file_exits_2_naming_it(runner, tmp_path, ehr_jwks):
    ehr_jwks.write_text("{not json")
    result = runner.invoke(cli, ["check-config", "--config", str(write(tmp_path, PRODUCTION))])
    assert result.exit_code == 2
    assert str(ehr_jwks) in result.output


def test_check_config_exit_code_through_the_entry_point(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["check-config", "--config", str(write(tmp_path, 'profile = "production"'))])
    assert caught.value.code == 2
    assert "at least one [[issuers]]" in capsys.readouterr().err


def url_config(tmp_path, jwks_url: str):
    return write(tmp_path, PRODUCTION.replace('jwks_file = "keys/ehr-jwks.json"', f'jwks_url = "{jwks_url}"'))


def test_check_config_fetch(runner, tmp_path, httpserver, ehr_jwks):
    httpserver.expect_request("/jwks.json").respond_with_json(json.loads(ehr_jwks.read_text()))
    path = url_config(tmp_path, httpserver.url_for("/jwks.json"))
    result = runner.invoke(cli, ["check-config", "--config", str(path)])
    assert "not fetched now" in result.output and httpserver.log == []
    assert "plain http:// URL configured" in result.output  # the test server's jwks_url
    result = runner.invoke(cli, ["check-config", "--config", str(path), "--fetch"])
    assert result.exit_code == 0, result.output
    assert "fetched, kid ehr-1" in result.output


def test_check_config_fetch_failure_exits_1(runner, tmp_path, httpserver):
    httpserver.expect_request("/jwks.json").respond_with_data("gone", status=404)
    result = runner.invoke(cli, ["check-config", "--config", str(url_config(tmp_path, httpserver.url_for("/jwks.json"))),
                                 "--fetch"])
    assert result.exit_code == 1
    assert "FAILED: JWKS" in result.output and "HTTP 404" in result.output

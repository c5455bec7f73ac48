"""Settings: one frozen object, built once at start-up from a TOML file and the environment.

Nothing reads ``os.environ`` or a file after start-up: ``load_settings`` takes both as arguments, and
``create_app`` / the CLI build the object once (style.md 3.4). Relative paths in a configuration file
are resolved against the file's own directory, never against the working directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.parse import urlsplit

from service.errors import ConfigError

ENV_PREFIX = "LUMBAR_MRI_CDS_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

# The public CDS Hooks sandbox signs with a key whose private half is published in its repository
# (cds-hooks-notes.md, "The CDS Hooks sandbox as a client"): trusted in development only.
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JWKS_URL = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
# Its public key, shipped with the package (public members only, from keys/jwk-keypair.json of
# github.com/cds-hooks/sandbox): the development profile verifies sandbox tokens whose `jku` is
# SANDBOX_JWKS_URL with it, offline and behind proxies; the URL is fetched only for another `kid`.
SANDBOX_JWKS_FILE = Path(__file__).resolve().parent / "security" / "sandbox-jwks.json"

# The development profile's own issuer: `lumbar-mri-cds call` signs with a key created on first use
# in the data directory (security/signer.py); its public half there is this issuer's jwks_file.
# Never trusted in production.
LOCAL_ISSUER = "urn:lumbar-mri-cds:local-cli"
LOCAL_JWKS_FILE = "local-issuer.jwks.json"


class Profile(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerSettings:
    iss: str                            # the exact `iss` claim of the EHR's tokens
    jwks_file: Path | None = None       # a JWKS on disk; a token's `jku` is then ignored
    jwks_url: str | None = None         # a JWKS over HTTP(S); a token's `jku` is honoured only if equal
                                        # (both: built-in sandbox issuer only, the file's keys first)
    fhir_servers: tuple[str, ...] = ()  # FHIR bases this issuer's access tokens may be sent to
    any_fhir_server: bool = False       # development only: accept any fhirServer from this issuer
    tenants: tuple[str, ...] = ()       # when set, the token's `tenant` must be one of these


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsSettings:
    allow_origins: tuple[str, ...] = ()  # exact origins; "*" = any origin (development default)

    @property
    def any_origin(self) -> bool:
        return "*" in self.allow_origins


@dataclass(frozen=True, slots=True, kw_only=True)
class FhirSettings:
    timeout_seconds: float = 2.0        # total time of each FHIR request (connect, headers, body)
    max_pages: int = 10                 # `next` links followed per search
    max_bytes: int = 20_000_000         # bytes read per FHIR server per hook call


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsSettings:
    max_body_bytes: int = 5_000_000     # larger hook bodies get 413
    max_json_depth: int = 64            # deeper JSON nesting gets 400
    max_resources: int = 5_000          # resources across prefetch and draftOrders
    max_string_length: int = 100_000    # any single JSON string
    deadline_seconds: float = 4.0       # a hook call never takes longer than this


class ReplayWhenDown(StrEnum):
    """What a token check does while the replay store cannot be reached (README, "Replay store")."""

    REFUSE = "refuse"   # 503 with Retry-After: no token is accepted unchecked (the default)
    MEMORY = "memory"   # each worker remembers the ids it accepts, in memory, until the store is back


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaySettings:
    url: str | None = None                               # redis://… ; None: the database (SQLite file beside it)
    when_down: ReplayWhenDown = ReplayWhenDown.REFUSE     # see ReplayWhenDown


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    profile: Profile
    public_base_url: str | None          # None (development only): `aud` is checked against the URL called
    database_url: str
    issuers: tuple[IssuerSettings, ...]
    cors: CorsSettings = field(default_factory=CorsSettings)
    fhir: FhirSettings = field(default_factory=FhirSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    patient_hash_salt: str = ""          # salts the patient-id hashes in logs and the store
    outbox_dir: Path | None = None       # issued cards on local disk until written; None: beside a SQLite store
    log_level: str = "INFO"
    source: Path | None = None           # the configuration file, if any

    def issuer(self, iss: str) -> IssuerSettings | None:
        """The configured issuer with this `iss`, if any."""
        return next((i for i in self.issuers if i.iss == iss), None)

    def warnings(self) -> list[str]:
        """Things an operator should know about this configuration (printed by check-config)."""
        notes = []
        if self.profile is Profile.DEVELOPMENT:
            notes.append(
                "development profile: trusts the public CDS Hooks sandbox, whose signing key is "
                "public; this service must not see real patient data"
            )
        if self.profile is Profile.PRODUCTION and not self.patient_hash_salt:
            notes.append("patient_hash_salt is empty: the patient-id hashes in logs and the store can be reversed by guessing ids")
        for url in _plain_http_urls(self):
            notes.append(f"plain http:// URL configured: {url}")
        for issuer in self.issuers:
            if _placeholder(issuer.iss):
                notes.append(f"issuer {issuer.iss} is a placeholder (a reserved example domain): replace it with "
                             "your EHR's issuer and keys, or no real call will be accepted")
            if issuer.any_fhir_server:
                notes.append(f"issuer {issuer.iss}: its access tokens may be sent to any fhirServer it names")
            elif not issuer.fhir_servers:
                notes.append(f"issuer {issuer.iss}: no fhir_servers, so only prefetch is used for its calls")
        if self.cors.any_origin:
            notes.append("CORS: any origin may call this service from a browser")
        if self.replay.when_down is ReplayWhenDown.MEMORY:
            notes.append("replay.when_down = memory: while the replay store is down, a token id is "
                         "remembered by one worker only, so a captured token could be replayed once on another")
        return notes


# Domains reserved for examples and tests (RFC 2606, RFC 6761): an issuer there is a placeholder.
_RESERVED_SUFFIXES = (".example", ".test", ".invalid", ".localhost", "example.com", "example.org", "example.net")


def _placeholder(iss: str) -> bool:
    host = (urlsplit(iss).hostname or "").rstrip(".")
    return any(host == s.lstrip(".") or host.endswith("." + s.lstrip(".")) for s in _RESERVED_SUFFIXES)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """Where the development SQLite file lives: $XDG_DATA_HOME/lumbar-mri-cds (not the cwd)."""
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "/tmp")) / ".local" / "share")
    return Path(base) / "lumbar-mri-cds"


def config_path(environ: Mapping[str, str]) -> Path | None:
    """The configuration file named by the environment, if any."""
    value = environ.get(CONFIG_ENV)
    return Path(value) if value else None


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read TOML, apply LUMBAR_MRI_CDS_* overrides, pick the profile, validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path)
    where = str(path) if path else "the environment"
    base_dir = path.resolve().parent if path else Path.cwd()
    raw = _apply_environment(raw, environ)
    profile_name = raw.get("profile", "production" if path else "development")
    try:
        profile = Profile(profile_name)
    except ValueError:
        raise ConfigError(f"{where}: profile must be 'production' or 'development', not {profile_name!r}") from None
    settings = Settings(
        profile=profile,
        public_base_url=_optional_url(raw, "public_base_url", where),
        database_url=_database_url(raw, base_dir, environ, where),
        issuers=_issuers(raw, base_dir, profile, where, default_data_dir(environ)),
        cors=_cors(raw, profile, where),
        fhir=_section(FhirSettings, raw, "fhir", where),
        limits=_section(LimitsSettings, raw, "limits", where),
        replay=_replay(raw, where),
        patient_hash_salt=str(raw.get("patient_hash_salt", "")),
        outbox_dir=_outbox_dir(raw, base_dir, environ, where),
        log_level=str(raw.get("log_level", "INFO")).upper(),
        source=path,
    )
    _validate(settings, where)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


# Environment variables that override single settings (documented in the README).
_ENV_OVERRIDES: dict[str, tuple[str | None, str, type]] = {
    "PROFILE": (None, "profile", str),
    "PUBLIC_BASE_URL": (None, "public_base_url", str),
    "DATABASE_URL": (None, "database_url", str),
    "DATABASE_PASSWORD": (None, "database_password", str),
    "LOG_LEVEL": (None, "log_level", str),
    "PATIENT_HASH_SALT": (None, "patient_hash_salt", str),
    "OUTBOX_DIR": (None, "outbox_dir", str),
    "CORS_ALLOW_ORIGINS": ("cors", "allow_origins", list),
    "FHIR_TIMEOUT_SECONDS": ("fhir", "timeout_seconds", float),
    "MAX_BODY_BYTES": ("limits", "max_body_bytes", int),
    "DEADLINE_SECONDS": ("limits", "deadline_seconds", float),
    "REPLAY_URL": ("replay", "url", str),
    "REPLAY_WHEN_DOWN": ("replay", "when_down", str),
}


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for suffix, (section, key, kind) in _ENV_OVERRIDES.items():
        value = environ.get(ENV_PREFIX + suffix)
        if value is None or value == "":
            continue
        try:
            parsed: Any = [v.strip() for v in value.split(",") if v.strip()] if kind is list else kind(value)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{suffix}: not a valid {kind.__name__}: {value!r}") from None
        target = raw.setdefault(section, {}) if section else raw
        target[key] = parsed
    return raw


def _optional_url(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ConfigError(f"{where}: {key} must be an absolute http(s) URL, not {value!r}")
    if urlsplit(value).query or urlsplit(value).fragment or "?" in value or "#" in value:
        raise ConfigError(f"{where}: {key} must not have a query or fragment: {value!r}")
    return value.rstrip("/")


def _database_url(raw: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str], where: str) -> str:
    value = raw.get("database_url")
    if value is None:
        return f"sqlite:///{default_data_dir(environ) / 'lumbar-mri-cds.db'}"
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"{where}: database_url must be a URL such as sqlite:///path or postgresql://…")
    if raw.get("database_password") is not None:
        value = _with_password(value, str(raw["database_password"]), where)
    _check_userinfo(value, where)
    if value in ("sqlite://", "sqlite:///:memory:"):
        # Each SQLite connection would get a database of its own: the card writer thread, the replay
        # cache and every worker would see empty databases without tables.
        raise ConfigError(f"{where}: database_url cannot be an in-memory SQLite database; use a file "
                          "(sqlite:///path) or PostgreSQL")
    prefix = "sqlite:///"
    if value.startswith(prefix) and not value.startswith(prefix + "/"):
        # sqlite:///relative.db: relative to the configuration file, not to the working directory
        value = prefix + str(base_dir / value[len(prefix):])
    return value


def _outbox_dir(raw: Mapping[str, Any], base_dir: Path, environ: Mapping[str, str], where: str) -> Path | None:
    """The configured card outbox directory (relative to the file's directory); for a database that is
    not a SQLite file, the default is $XDG_DATA_HOME/lumbar-mri-cds/outbox."""
    value = raw.get("outbox_dir")
    if value is not None:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: outbox_dir must be a directory path")
        return base_dir / value
    if str(raw.get("database_url", "sqlite")).startswith("sqlite"):
        return None  # beside the SQLite file (store.outbox.directory_for)
    return default_data_dir(environ) / "outbox"


def _with_password(url: str, password: str, where: str) -> str:
    """The URL with this password, percent-encoded (any character may appear in a password)."""
    scheme, rest = url.split("://", 1)
    authority, slash, path = rest.partition("/")
    user = authority.rpartition("@")[0].partition(":")[0]
    host = authority.rpartition("@")[2]
    if not user or scheme.startswith("sqlite"):
        raise ConfigError(f"{where}: database_password needs a database_url with a user name, e.g. postgresql://cds@host/db")
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}{slash}{path}"


def _check_userinfo(url: str, where: str) -> None:
    """ConfigError for a user or password pasted into the URL unescaped: '@', '/', '?', '#' or a bare
    '%' would make it name another host or database, or another password."""
    rest = url.split("://", 1)[1]
    if url.startswith("sqlite") or "@" not in rest:
        return
    userinfo = rest.rpartition("@")[0]  # up to the last '@': the host part never holds one
    if re.search(r"[@/?#]|%(?![0-9A-Fa-f]{2})", userinfo):
        raise ConfigError(
            f"{where}: database_url: the user or password holds a character that must be percent-encoded "
            "('@' '/' '?' '#' '%'); encode it (urllib.parse.quote(password, safe='')) or give the password "
            f"alone as {ENV_PREFIX}DATABASE_PASSWORD"
        )


def _issuers(raw: Mapping[str, Any], base_dir: Path, profile: Profile, where: str, data_dir: Path) -> tuple[IssuerSettings, ...]:
    entries = raw.get("issuers", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: [[issuers]] must be an array of tables")
    issuers = [_issuer(entry, n, base_dir, where) for n, entry in enumerate(entries)]
    names = [i.iss for i in issuers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: issuer(s) configured more than once: {', '.join(repeated)}")
    if profile is Profile.DEVELOPMENT and not any(i.iss == SANDBOX_ISSUER for i in issuers):
        issuers.append(IssuerSettings(iss=SANDBOX_ISSUER, jwks_url=SANDBOX_JWKS_URL, jwks_file=SANDBOX_JWKS_FILE,
                                      any_fhir_server=True))
    if profile is Profile.DEVELOPMENT and not any(i.iss == LOCAL_ISSUER for i in issuers):
        issuers.append(local_issuer(data_dir))
    return tuple(issuers)


def local_issuer(data_dir: Path) -> IssuerSettings:
    """The development profile's local issuer (`lumbar-mri-cds call`), keys in `data_dir`."""
    return IssuerSettings(iss=LOCAL_ISSUER, jwks_file=data_dir / LOCAL_JWKS_FILE, any_fhir_server=True)


def _issuer(entry: Any, n: int, base_dir: Path, where: str) -> IssuerSettings:
    at = f"{where}: issuers[{n}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str) or not entry["iss"]:
        raise ConfigError(f"{at}: needs an `iss` string")
    # A misspelt key (`tenant` for `tenants`) would silently switch a check off: refuse it.
    unknown = sorted(set(entry) - _ISSUER_KEYS)
    if unknown:
        raise ConfigError(f"{at} ({entry['iss']}): unknown setting(s) {', '.join(unknown)}")
    if not isinstance(entry.get("any_fhir_server", False), bool):
        raise ConfigError(f"{at} ({entry['iss']}): any_fhir_server must be true or false")
    jwks_file = entry.get("jwks_file")
    jwks_url = entry.get("jwks_url")
    if (jwks_file is None) == (jwks_url is None):
        raise ConfigError(f"{at} ({entry['iss']}): give exactly one of jwks_file or jwks_url")
    if jwks_url is not None and urlsplit(str(jwks_url)).scheme not in ("http", "https"):
        raise ConfigError(f"{at}: jwks_url must be an http(s) URL")
    servers = entry.get("fhir_servers", [])
    tenants = entry.get("tenants", [])
    if not _str_list(servers) or not _str_list(tenants):
        raise ConfigError(f"{at}: fhir_servers and tenants must be arrays of strings")
    for base in servers:
        if urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).netloc:
            raise ConfigError(f"{at}: fhir_servers entry {base!r} is not an absolute http(s) URL")
    return IssuerSettings(
        iss=entry["iss"],
        jwks_file=(base_dir / jwks_file) if jwks_file is not None else None,
        jwks_url=jwks_url,
        fhir_servers=tuple(s.rstrip("/") for s in servers),
        any_fhir_server=bool(entry.get("any_fhir_server", False)),
        tenants=tuple(tenants),
    )


_ISSUER_KEYS = {"iss", "jwks_file", "jwks_url", "fhir_servers", "any_fhir_server", "tenants"}


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _cors(raw: Mapping[str, Any], profile: Profile, where: str) -> CorsSettings:
    section = raw.get("cors", {})
    default = ["*"] if profile is Profile.DEVELOPMENT else []
    origins = section.get("allow_origins", default) if isinstance(section, dict) else None
    if not _str_list(origins):
        raise ConfigError(f"{where}: cors.allow_origins must be an array of origins")
    for origin in origins:
        parts = urlsplit(origin.rstrip("/"))
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
            raise ConfigError(
                f"{where}: cors.allow_origins entry {origin!r} is not an origin "
                "(scheme://host[:port], no path) or \"*\""
            )
    return CorsSettings(allow_origins=tuple(o.rstrip("/") for o in origins))


def _section(cls: type, raw: Mapping[str, Any], name: str, where: str) -> Any:
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    defaults = cls()
    values = {}
    for key, value in section.items():
        if not hasattr(defaults, key):
            raise ConfigError(f"{where}: unknown setting {name}.{key}")
        kind = type(getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}: {name}.{key} must be a positive number")
        values[key] = kind(value)
    return replace(defaults, **values)


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _replay(raw: Mapping[str, Any], where: str) -> ReplaySettings:
    section = raw.get("replay", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [replay] must be a table")
    unknown = sorted(set(section) - {"url", "when_down"})
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) replay.{', replay.'.join(unknown)}")
    url = section.get("url")
    if url is not None and (not isinstance(url, str) or urlsplit(url).scheme not in _REDIS_SCHEMES):
        raise ConfigError(f"{where}: replay.url must be a Redis URL (redis://, rediss:// or unix://)")
    when_down = section.get("when_down", ReplayWhenDown.REFUSE.value)
    try:
        return ReplaySettings(url=url or None, when_down=ReplayWhenDown(when_down))
    except ValueError:
        raise ConfigError(f"{where}: replay.when_down must be 'refuse' or 'memory', not {when_down!r}") from None


def _validate(settings: Settings, where: str) -> None:
    if settings.profile is Profile.PRODUCTION:
        if not settings.issuers:
            raise ConfigError(f"{where}: the production profile needs at least one [[issuers]] entry")
        if settings.issuer(LOCAL_ISSUER):
            raise ConfigError(
                f"{where}: the production profile refuses the local issuer {LOCAL_ISSUER} "
                "(lumbar-mri-cds call; development only)"
            )
        if settings.issuer(SANDBOX_ISSUER):
            raise ConfigError(
                f"{where}: the production profile refuses the CDS Hooks sandbox issuer "
                f"({SANDBOX_ISSUER}): its private key is public"
            )
        for issuer in settings.issuers:
            if issuer.jwks_url and urlsplit(issuer.jwks_url).hostname == urlsplit(SANDBOX_ISSUER).hostname:
                raise ConfigError(
                    f"{where}: the production profile refuses the CDS Hooks sandbox's keys "
                    f"({issuer.jwks_url}, configured for {issuer.iss}): their private half is public"
                )
        if settings.public_base_url is None:
            raise ConfigError(f"{where}: the production profile needs public_base_url (the JWT audience)")
        if settings.cors.any_origin:
            raise ConfigError(f"{where}: the production profile does not allow CORS from any origin ('*')")
        for issuer in settings.issuers:
            if issuer.any_fhir_server:
                raise ConfigError(f"{where}: any_fhir_server is for the development profile only ({issuer.iss})")


def _plain_http_urls(settings: Settings) -> list[str]:
    urls = [settings.public_base_url or ""]
    for issuer in settings.issuers:
        urls += [issuer.jwks_url or "", *issuer.fhir_servers]
    return [u for u in urls if u.startswith("http://")]

"""What a configuration would trust, as the lines ``lumbar-mri-cds check-config`` prints (cli.py).

``describe`` is ``load_settings`` plus a printout (style.md 3.4): the profile, the audience, every
issuer with where its keys come from and whether they load, the FHIR bases its access tokens may go
to, its tenants, the CORS origins, the database (password masked) and every warning. Exit codes: 0 the
configuration is usable; 2 it is not (``ConfigError``, message on stderr); 1 it is valid but a JWKS
fetched with ``--fetch`` could not be used.
"""

from __future__ import annotations


from service import errors
from service.config import IssuerSettings
from service.config import Profile
from service.config import Settings
from service.security import keys
from service.security import signer
from service.store import schema


def describe(settings: Settings, *, fetch: bool = False) -> tuple[list[str], list[str]]:
    """The report's lines and the problems found; raises ConfigError when a jwks_file is unusable."""
    signer.local_signer(settings)  # development: `call`'s key, created as `serve` would
    store = keys.KeyStore(settings.issuers, refuse_published_keys=settings.profile is Profile.PRODUCTION)
    try:
        lines = [
            f"configuration: {settings.source or '(none: built-in defaults and environment)'}",
            f"profile: {settings.profile}",
            f"public_base_url: {_audience(settings)}",
            f"database: {schema.masked_url(settings.database_url)}",
            f"replay store: {_replay_store(settings)}",
            f"CORS origins: {_origins(settings)}",
            f"issuers ({len(settings.issuers)}):",
        ]
        problems: list[str] = []
        for issuer in settings.issuers:
            lines += _issuer_lines(issuer, store, fetch, problems)
    finally:
        store.close()
    lines.append("warnings:" if settings.warnings() else "warnings: none")
    lines += [f"  - {note}" for note in settings.warnings()]
    return lines, problems


def _replay_store(settings: Settings) -> str:
    where = schema.masked_url(settings.replay.url) if settings.replay.url else "the database"
    return f"{where}; when it is down: {settings.replay.when_down}"


def _audience(settings: Settings) -> str:
    if settings.public_base_url is None:
        return "(none: `aud` is checked against the URL each request reached; development only)"
    return f"{settings.public_base_url}  (JWT aud = this + the path called, e.g. /cds-services/<id>)"


def _origins(settings: Settings) -> str:
    if settings.cors.any_origin:
        return "any origin (*)"
    return ", ".join(settings.cors.allow_origins) or "none (browser-based clients cannot call)"


def _issuer_lines(issuer: IssuerSettings, store: keys.KeyStore, fetch: bool, problems: list[str]) -> list[str]:
    lines = [f"  - iss: {issuer.iss}"]
    shipped = store.shipped_set(issuer)
    if shipped is not None:
        lines.append(f"    keys: shipped {issuer.jwks_file}: loaded, kid {', '.join(shipped.kids)} (verified offline)")
        lines.append(f"    jwks_url {issuer.jwks_url}: fetched only for another kid; a token's jku must be exactly it")
    elif issuer.jwks_file is not None:
        key_set = store.key_set(issuer)
        kids = ", ".join(key_set.kids) if key_set else "?"
        lines.append(f"    keys: jwks_file {issuer.jwks_file}: loaded, kid {kids}")
        lines.append("    a token's jku is ignored (the keys are pinned in the file; nothing is fetched)")
    elif fetch:
        try:
            key_set = store.key_set(issuer, fetch=True)
            kids = ", ".join(key_set.kids) if key_set else "?"
            lines.append(f"    keys: jwks_url {issuer.jwks_url}: fetched, kid {kids}")
        except errors.NotAuthenticated as exc:
            lines.append(f"    keys: jwks_url {issuer.jwks_url}: FAILED: {exc.message}")
            problems.append(f"issuer {issuer.iss}: {exc.message}")
    else:
        lines.append(f"    keys: jwks_url {issuer.jwks_url} (fetched on first use; not fetched now, see --fetch)")
        lines.append(f"    a token's jku is honoured only if it is exactly {issuer.jwks_url}")
    if issuer.any_fhir_server:
        lines.append("    FHIR servers its access tokens may go to: any (development)")
    else:
        lines.append(f"    FHIR servers its access tokens may go to: {', '.join(issuer.fhir_servers) or 'none'}")
    lines.append(f"    tenants: {', '.join(issuer.tenants) or '(not checked)'}")
    return lines

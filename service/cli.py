"""The `lumbar-mri-cds` command: serve, evaluate, call, rules, report, check-config.

Errors become exit codes in one place (``main``), as click's ``Command.main`` does; the codes are
fixed and tested: 0 ok, 1 unexpected, 2 configuration, 3 invalid request, 4 data unobtainable,
5 store unavailable, 6 bulk export missing, malformed or not obtainable.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import MutableMapping
from datetime import date
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path
from typing import Any

import click
import orjson

from service import config
from service import config_check
from service.audit import command as audit_command
from service.errors import ConfigError
from service.errors import InvalidRequest
from service.errors import ServiceError

CONFIG_HELP = f"TOML configuration file (default: ${config.CONFIG_ENV}, else the development profile)"


def config_option(func: Any) -> Any:
    """The --config option every command that reads settings takes."""
    return click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help=CONFIG_HELP)(func)


def load(config_file: Path | None) -> config.Settings:
    """Settings from --config, else from the environment."""
    return config.load_settings(config_file or config.config_path(os.environ), os.environ)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lumbar-mri-cds")
def cli() -> None:
    """A CDS Hooks service that reviews lumbar spine imaging orders (MRI, CT, radiography) against imaging guidelines."""


cli.add_command(audit_command.audit)


@cli.command("check-config")
@config_option
@click.option("--fetch", is_flag=True, help="Also fetch every jwks_url and list its keys.")
@click.pass_context
def check_config(ctx: click.Context, config_file: Path | None, fetch: bool) -> None:
    """Validate a configuration and say what it would trust."""
    try:
        settings = load(config_file)
        lines, problems = config_check.describe(settings, fetch=fetch)
    except ConfigError as exc:
        click.echo(f"invalid configuration: {exc}", err=True)
        ctx.exit(ConfigError.exit_code)
    click.echo("\n".join(lines))
    if problems:
        click.echo("\n".join(f"problem: {p}" for p in problems), err=True)
        ctx.exit(1)
    click.echo("configuration OK")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="port to listen on")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="worker processes")
@click.option("--threads", default=16, show_default=True, type=click.IntRange(1, 256),
              help="request threads per worker (calls waiting on FHIR or the store at once)")
@click.option("--behind-proxy", is_flag=True,
              help="a buffering reverse proxy is in front: no warning when listening on a non-loopback address")
@config_option
def serve(host: str, port: int, workers: int, threads: int, behind_proxy: bool, config_file: Path | None) -> None:
    """Serve in the foreground: gunicorn's master over buffering workers (stops cleanly on SIGTERM/SIGINT)."""
    settings = load(config_file)
    metrics_dir_for_workers(os.environ)
    from service import server  # gunicorn, waitress (and prometheus-client, see below) imported only now

    server.run(settings, host=host, port=port, workers=workers, threads=threads, behind_proxy=behind_proxy)


METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir_for_workers(environ: MutableMapping[str, str]) -> None:
    """Give the workers a shared Prometheus directory, so /metrics adds up all of them.

    Without PROMETHEUS_MULTIPROC_DIR set, a fresh private directory is made and removed when `serve` ends.
    prometheus-client decides between per-process and file-backed counters when it is imported,
    which is why this runs before anything imports it.
    """
    if environ.get(METRICS_ENV):
        return
    directory = tempfile.mkdtemp(prefix="lumbar-mri-cds-metrics-")
    environ[METRICS_ENV] = directory
    master = os.getpid()

    def remove() -> None:
        if os.getpid() == master:  # forked workers inherit this handler: only the master cleans up
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)


@cli.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the raw CDS Hooks response")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), help="evaluate as of this date (default: today)")
def evaluate(request_file: Path, as_json: bool, today: Any) -> None:
    """Run one CDS Hooks request file (with prefetch) through the rules, offline: no server, no token."""
    from service import pipeline
    from service.intake import envelope
    from service.render import text

    data = envelope.parse_json(request_file.read_bytes())
    hook = data.get("hook") if isinstance(data, dict) else None
    evaluator = pipeline.Evaluator.load()
    spec = evaluator.service_for(hook)
    if spec is None:
        raise InvalidRequest(f"{request_file}: hook must be one of {', '.join(s.hook for s in evaluator.catalogue.values())}")
    hook_request = envelope.parse_request(data, hook=spec.hook)
    evaluation = evaluator.evaluate(hook_request, today.date() if today else date.today(), fetcher=None, service=spec)
    if as_json:
        click.echo(orjson.dumps(evaluation.response, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(text.render_text(evaluation.response, orders_reviewed=evaluation.orders_reviewed))


@cli.command("call")
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="base URL of the running service")
@click.option("--json", "as_json", is_flag=True, help="print the raw CDS Hooks response")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="the day the request's story is written for: its dates are moved so that this day is today "
                   "(the fixtures: 2026-11-26)")
@click.option("--curl", "as_curl", is_flag=True,
              help="print the equivalent curl command (a token valid 5 minutes, the file as it is) instead of calling")
@config_option
def call_command(request_file: Path, url: str, as_json: bool, as_of: Any, as_curl: bool, config_file: Path | None) -> None:
    """Send one request file to a running service, signed as the development profile's local issuer,
    with a fresh hookInstance; print the answer as `evaluate` does."""
    from service import client
    from service.intake import envelope
    from service.render import text

    data = envelope.parse_json(request_file.read_bytes())
    if not isinstance(data, dict):
        raise InvalidRequest(f"{request_file}: not a CDS Hooks request (a JSON object)")
    if as_curl:
        if as_of:
            raise click.UsageError("--curl sends the file as it is: it cannot be combined with --as-of")
        click.echo(client.curl_command(data, request_file, base_url=url, settings=load(config_file)))
        return
    result = client.call(data, base_url=url, settings=load(config_file), as_of=as_of.date() if as_of else None)
    if as_json:
        click.echo(orjson.dumps(result.response, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(text.render_text(result.response, orders_reviewed=None))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the model as JSON")
def rules(as_json: bool) -> None:
    """The decision model for a clinical reviewer: what each fact reads (code systems, how many codes,
    the source of each list, the window) and the rule table in order."""
    from service.facts.codes import ValueSets
    from service.rules import describe
    from service.rules import table

    model = describe.describe_model(ValueSets.load(), table.load_table())
    if as_json:
        click.echo(orjson.dumps(model, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(describe.render_text(model))


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON (the shape in the README)")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="cards issued on or after this date (UTC)")
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), help="cards issued on or before this date (UTC)")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="also write an HTML report with weekly charts to this file")
@click.option("--dedup-minutes", type=click.FloatRange(min=0), default=10, show_default=True,
              help="a card re-fired for the same patient, rule and service within this many minutes counts once "
                   "(0: every card counts)")
def report(config_file: Path | None, as_json: bool, since: Any, until: Any, html_file: Path | None,
           dedup_minutes: float) -> None:
    """Card and feedback analytics per rule: cards issued, accepted, overridden, override reasons."""
    import sqlalchemy as sa

    from service.rules import table as rule_table
    from service.store import report as store_report
    from service.store import schema

    since_day, until_day = (since.date() if since else None), (until.date() if until else None)
    if since_day and until_day and since_day > until_day:
        raise click.UsageError(f"--since {since_day} is after --until {until_day}: the period would be empty")
    database_url = load(config_file).database_url
    scope = store_report.Scope(
        database=schema.masked_url(database_url), since=since_day, until=until_day,
        generated_at=datetime.now(timezone.utc), dedup=timedelta(minutes=dedup_minutes),
        labels={r.code: r.display for r in rule_table.load_table().override_reasons},
    )
    engine = schema.open_existing(database_url)  # never creates an empty store to report on
    try:
        found = store_report.decisions(engine, since=since_day, until=until_day, dedup=scope.dedup)
        result = store_report.summarize(found)
        if html_file is not None:
            html_file.write_text(store_report.render_html(result, store_report.weeks_of(found), scope), "utf-8")
    except sa.exc.SQLAlchemyError as exc:
        raise schema.unreachable(database_url, exc) from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(orjson.dumps({**scope.as_json(), **result}, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(store_report.render_text(result, scope), nl=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group, turning our errors into fixed exit codes."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        code = cli.main(args=argv, prog_name="lumbar-mri-cds", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(ConfigError.exit_code)
    except ServiceError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

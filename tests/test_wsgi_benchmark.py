"""benchmarks/wsgi.py measures the real request path: signed calls that get cards, not refusals."""

from __future__ import annotations

import orjson
import pytest

from benchmarks import load
from benchmarks import wsgi
from tests.conftest import Signer


def answer(app, env) -> tuple[int, bytes]:
    statuses: list[str] = []
    chunks = app(env, lambda status, headers, exc_info=None: statuses.append(status))
    return int(statuses[0].split()[0]), b"".join(chunks)


def test_a_benchmark_call_is_checked_and_answered_with_cards(app, signer: Signer) -> None:
    body = load.FIXTURE.read_bytes()
    env = wsgi.environ(body, signer.token(load.PATH))
    status, data = answer(app, env)
    assert status == 200
    assert [c["source"]["topic"]["code"] for c in orjson.loads(data)["cards"]]  # the decision ran
    replayed = wsgi.environ(body, env["HTTP_AUTHORIZATION"].removeprefix("Bearer "))
    assert wsgi.call(app, replayed) == 401  # the token check is the service's own, replay cache included


def test_measure_stops_at_a_failed_call(app) -> None:
    with pytest.raises(SystemExit, match="401"):
        wsgi.measure(app, [wsgi.environ(b"{}", "not-a-token")])

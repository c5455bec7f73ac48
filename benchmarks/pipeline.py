"""In-process time per request of the decision pipeline (no HTTP, no token), on a realistic chart.

    python benchmarks/pipeline.py [--requests N] [--fixture NAME]

Parses the request body and evaluates it exactly as the hook view does (envelope -> prefetch ->
facts -> rules -> cards and rating, resources validated with fhir.resources), and prints p50/p90/p99.
Then the cost of code matching alone (SNOMED CT by hierarchy, ICD-10 by prefix, RxNorm by ingredient,
all precomputed at load): the codings one request looks up, replayed against ``ValueSets.concepts``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

from service import pipeline
from service.facts.codes import ValueSets
from service.intake import envelope

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "requests"
AS_OF = date(2026, 11, 26)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--fixture", default="benchmark-realistic")
    args = parser.parse_args()
    body = (FIXTURES / f"{args.fixture}.json").read_bytes()
    evaluator = pipeline.Evaluator.load()
    data = envelope.parse_json(body)
    counts = {k: len(v.get("entry", [])) for k, v in data["prefetch"].items() if isinstance(v, dict) and "entry" in v}

    def once() -> float:
        start = time.perf_counter()
        request = envelope.parse_request(envelope.parse_json(body), hook="order-select")
        evaluator.evaluate(request, AS_OF)
        return (time.perf_counter() - start) * 1000

    for _ in range(200):  # warm up imports, pydantic schemas, caches
        once()
    samples = sorted(once() for _ in range(args.requests))
    q = statistics.quantiles(samples, n=100)
    print(f"fixture {args.fixture}: {len(body)} bytes, prefetch {counts}")
    print(f"{args.requests} requests in-process: p50 {q[49]:.2f} ms  p90 {q[89]:.2f} ms  p99 {q[98]:.2f} ms  "
          f"mean {statistics.fmean(samples):.2f} ms")
    lookups = recorded_lookups(evaluator, body)
    per_lookup = replay(evaluator.value_sets, lookups)
    print(f"code matching: {len(lookups)} lookups per request, {per_lookup * len(lookups) / 1000:.1f} us per request "
          f"({per_lookup:.0f} ns per lookup, best of 5 replays)")


class _Recorder:
    """Stands in for the evaluator's ValueSets for one request, recording every (system, code) looked up."""

    def __init__(self, inner: ValueSets) -> None:
        self.inner = inner
        self.calls: list[tuple[object, object]] = []

    def concepts(self, system: object, code: object) -> frozenset[str]:
        self.calls.append((system, code))
        return self.inner.concepts(system, code)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def recorded_lookups(evaluator: pipeline.Evaluator, body: bytes) -> list[tuple[object, object]]:
    """The codings one evaluation of the request matches against the value sets."""
    real = evaluator.value_sets
    recorder = _Recorder(real)
    evaluator.value_sets = recorder  # type: ignore[assignment]
    try:
        evaluator.evaluate(envelope.parse_request(envelope.parse_json(body), hook="order-select"), AS_OF)
    finally:
        evaluator.value_sets = real
    return recorder.calls


def replay(vs: ValueSets, lookups: list[tuple[object, object]], rounds: int = 2000) -> float:
    """Nanoseconds per lookup, best of 5 timed replays of the recorded lookups."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            for system, code in lookups:
                vs.concepts(system, code)  # type: ignore[arg-type]
        best = min(best, (time.perf_counter() - start) / (rounds * max(len(lookups), 1)))
    return best * 1e9


if __name__ == "__main__":
    main()

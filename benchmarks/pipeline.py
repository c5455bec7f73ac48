"""In-process time per request of the decision pipeline (no HTTP, no token), on a realistic chart.

    python benchmarks/pipeline.py [--requests N] [--fixture NAME]

Parses the request body and evaluates it exactly as the hook view does (envelope -> prefetch ->
facts -> rules -> cards and rating, resources validated with fhir.resources), and prints p50/p90/p99.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

from service import pipeline
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


if __name__ == "__main__":
    main()

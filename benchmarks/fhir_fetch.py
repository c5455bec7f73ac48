"""Added latency when prefetch is empty and the service fetches everything from the FHIR server.

    python benchmarks/fhir_fetch.py [--requests N] [--fixture NAME]

Starts the in-memory Medplum FHIR server of the tests (Node.js), loads the fixture patient, and runs
the same request through the pipeline with full prefetch and with empty prefetch (the service's own
concurrent, pooled FhirFetcher fills the gaps). Prints p50/p99 of each, the difference, and the
number of FHIR requests per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import pipeline  # noqa: E402
from service.intake import envelope  # noqa: E402
from service.intake.fhir_client import FhirFetcher  # noqa: E402
from tests import fhir  # noqa: E402
from tests.fhirserver.runner import load_bundle  # noqa: E402
from tests.fhirserver.runner import running_fhir_server  # noqa: E402


def quantiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100)
    return q[49], q[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--fixture", default="acute-uncomplicated")
    args = parser.parse_args()
    evaluator = pipeline.Evaluator.load()
    fetcher = FhirFetcher(timeout_seconds=2.0)
    with running_fhir_server() as base:
        load_bundle(base, json.loads((fhir.FIXTURES / "patients" / f"{args.fixture}.json").read_text()))
        full = fhir.load_request(args.fixture)
        empty = json.loads(json.dumps(full))
        empty["prefetch"] = {}
        empty["fhirServer"] = base
        counted: list[int] = []

        def run(body: dict) -> list[float]:
            samples = []
            for _ in range(args.requests):
                start = time.perf_counter()
                request = envelope.parse_request(body, hook=body["hook"])
                call = fetcher.for_call(base=base, access_token=None, deadline=time.monotonic() + 4.0)
                evaluation = evaluator.evaluate(request, fhir.AS_OF, call)
                counted.extend(result.requests_made for _, result in call.fetches)
                samples.append((time.perf_counter() - start) * 1000)
                assert evaluation.cards, "the fixture should produce a card"
            return samples

        run(full), run(empty)  # warm up
        counted.clear()
        with_prefetch, without = run(full), run(empty)
    fetcher.close()
    p50a, p99a = quantiles(with_prefetch)
    p50b, p99b = quantiles(without)
    print(f"fixture {args.fixture}, {args.requests} calls each, Medplum in-memory FHIR server on loopback")
    print(f"full prefetch : p50 {p50a:6.2f} ms  p99 {p99a:6.2f} ms")
    print(f"empty prefetch: p50 {p50b:6.2f} ms  p99 {p99b:6.2f} ms  ({statistics.fmean(counted):.1f} FHIR requests per call, concurrent)")
    print(f"added latency : p50 {p50b - p50a:6.2f} ms  p99 {p99b - p99a:6.2f} ms")


if __name__ == "__main__":
    main()

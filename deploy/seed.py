"""Load the fixture patients into a FHIR server and say how to point the CDS Hooks sandbox at the demo.

docker-compose.yml runs it once as the `seed` service (with the service's image, so it can use the
package's date shifting); it works as well from a checkout:

    python deploy/seed.py --fhir http://localhost:8080/fhir --patients fixtures/patients

Each file in --patients is a FHIR R4 `transaction` Bundle of PUTs (ids are kept), written as of
--as-of (the fixtures: 2026-11-26); every date in it is moved so that day becomes today, so the
stories (an episode of 14 days, a fever last week) stay true. Exit status: 0 all loaded; 1 the FHIR
server never answered, or refused a Bundle (its OperationOutcome is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from service.facts.dates import shift_dates

FHIR_JSON = "application/fhir+json"
SANDBOX = "https://sandbox.cds-hooks.org/"
FIXTURES_AS_OF = "2026-11-26"


def wait_for(base: str, seconds: float) -> None:
    """Until GET {base}/metadata answers 200 (HAPI FHIR takes a minute or so to start)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{base}/metadata", headers={"Accept": FHIR_JSON}, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"seed: {base}/metadata did not answer within {seconds:.0f} s")
        time.sleep(2)


def post_transaction(base: str, bundle: dict[str, Any], name: str) -> None:
    """POST one transaction Bundle; SystemExit with the server's reason if it is refused."""
    response = requests.post(base, json=bundle, headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}, timeout=60)
    if response.status_code != 200:
        raise SystemExit(f"seed: {name}: HTTP {response.status_code}: {response.text[:1000]}")


def patient_of(bundle: dict[str, Any]) -> str:
    """The id of the bundle's Patient."""
    return next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def sandbox_link(public_fhir: str, patient_id: str, discovery: str) -> str:
    """A sandbox URL opening the PAMA screen on this patient, with this service added."""
    query = {"fhirServiceUrl": public_fhir, "patientId": patient_id, "serviceDiscoveryURL": discovery,
             "hook": "order-select", "screen": "pama"}
    return SANDBOX + "?" + urlencode(query)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, wait for the server, load every Bundle, print the sandbox links."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fhir", required=True, help="FHIR base to load into (as this process reaches it)")
    parser.add_argument("--patients", type=Path, required=True, help="directory of transaction Bundles")
    parser.add_argument("--as-of", default=FIXTURES_AS_OF, help="the day the Bundles are written for")
    parser.add_argument("--public-fhir", help="the FHIR base as a browser reaches it (default: --fhir)")
    parser.add_argument("--service", default="http://localhost:8000/cds-services", help="the service's discovery URL")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the FHIR server")
    args = parser.parse_args(argv)
    base = args.fhir.rstrip("/")
    wait_for(base, args.wait)
    days = (date.today() - date.fromisoformat(args.as_of)).days
    files = sorted(args.patients.glob("*.json"))
    if not files:
        raise SystemExit(f"seed: no Bundles in {args.patients}")
    print(f"seed: loading {len(files)} patients into {base} (dates moved by {days} days)")
    patients = {}
    for path in files:
        bundle = shift_dates(json.loads(path.read_text()), days)
        post_transaction(base, bundle, path.name)
        patients[path.stem] = patient_of(bundle)
        print(f"  {path.stem}: Patient/{patients[path.stem]}")
    example = patients.get("acute-uncomplicated", next(iter(patients.values())))
    print("\nPoint the CDS Hooks sandbox at the demo: open, for example,")
    print(f"  {sandbox_link(args.public_fhir or base, example, args.service)}")
    print("(any patient above as patientId), then on the PAMA Imaging screen order 'MRI lumbar spine' "
          "(72148) with the reason 'Low back pain'.")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

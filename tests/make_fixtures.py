"""Write fixtures/requests/*.json and fixtures/patients/*.json: one patient story per rule.

Run `python tests/make_fixtures.py` after changing a story; the files are committed. All dates are
written as of fixtures.AS_OF (2026-11-26); tests move them to today with `shift_dates`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fhir as f  # noqa: E402

LBP = f.coding("279039007", "Low back pain (finding)")  # what the sandbox's PAMA screen sends


def story(name: str, pid: str, *, birth: str, gender: str, resources: list[dict[str, Any]], orders: list[dict[str, Any]],
          hook: str = "order-select", selections: list[str] | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    pat = f.patient(pid, birth=birth, gender=gender)
    for r in resources + orders:
        if "subject" in r:
            r["subject"] = {"reference": f"Patient/{pid}"}
    request = f.hook_request(orders, pat=pat, resources=resources, hook=hook, selections=selections)
    request["context"]["patientId"] = pid
    # A transaction of PUTs (ids kept): loadable into any FHIR server, e.g. the demo's HAPI FHIR
    # (deploy/seed.py posts them).
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in [pat, *resources]]}
    return name, request, bundle


def stories() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    c, o = f.condition, f.mri_order
    return [
        story("cauda-equina", "pat-cauda", birth="1971-03-14", gender="male", resources=[
            c("M54.50", onset="2026-11-20", cid="cond-cauda-lbp"),
            c("R33.9", onset="2026-11-25", verification="provisional", display="Retention of urine, unspecified", cid="cond-cauda-retention"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("suspected-cancer-infection", "pat-cancer", birth="1958-07-02", gender="female", resources=[
            c("Z85.3", onset="2019-02-01", clinical="resolved", display="Personal history of malignant neoplasm of breast", cid="cond-cancer-history"),
            c("M54.50", onset="2026-11-10", cid="cond-cancer-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("fever-infection-risk", "pat-fever", birth="1985-01-20", gender="male", resources=[
            c("F11.20", onset="2025-06-01", display="Opioid dependence, uncomplicated", cid="cond-fever-oud"),
            c("M54.50", onset="2026-11-18", cid="cond-fever-lbp"),
            f.temperature(101.8, "[degF]", on="2026-11-24"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("prior-lumbar-surgery", "pat-surgery", birth="1966-09-09", gender="male", resources=[
            c("M54.16", onset="2026-11-01", display="Radiculopathy, lumbar region", cid="cond-surgery-radic"),
            f.procedure("63030", performed="2023-04-12", display="Laminotomy, lumbar"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("fracture-risk", "pat-fracture", birth="1950-12-01", gender="female", resources=[
            c("M81.0", onset="2021-05-01", display="Age-related osteoporosis without current pathological fracture", cid="cond-fracture-osteo"),
            c("M54.50", onset="2026-11-15", cid="cond-fracture-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("trauma-ct-first", "pat-trauma", birth="1988-04-04", gender="male", resources=[
            c("S30.0XXA", onset="2026-11-22", display="Contusion of lower back and pelvis, initial encounter", cid="cond-trauma-contusion"),
            c("M54.50", onset="2026-11-22", cid="cond-trauma-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("persistent-after-conservative-care", "pat-persistent", birth="1979-10-10", gender="female", resources=[
            c("M54.16", onset="2026-08-01", display="Radiculopathy, lumbar region", cid="cond-persistent-radic"),
            f.procedure("97110", performed="2026-08-20", display="Therapeutic exercises"),
            f.procedure("97110", performed="2026-09-10", display="Therapeutic exercises"),
        ], orders=[o("72148", reasons=[f.coding("M54.16", "Radiculopathy, lumbar region")])]),
        story("acute-uncomplicated", "pat-acute", birth="1990-02-17", gender="female", resources=[
            c("M54.50", onset="2026-11-12", display="Low back pain, unspecified", cid="cond-acute-lbp"),
            c("I10", onset="2020-01-01", display="Essential (primary) hypertension", cid="cond-acute-htn"),
            f.temperature(36.8, on="2026-11-24"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("no-conservative-trial", "pat-chronic", birth="1975-06-30", gender="male", resources=[
            c("M54.50", onset="2026-08-15", display="Low back pain, unspecified", cid="cond-chronic-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("no-indication", "pat-noreason", birth="1982-08-08", gender="male", resources=[
            c("I10", onset="2020-01-01", display="Essential (primary) hypertension", cid="cond-noreason-htn"),
        ], orders=[o("72148")]),
        story("no-criteria-apply", "pat-ms", birth="1987-03-03", gender="female", resources=[
            c("G35", onset="2022-01-01", display="Multiple sclerosis", cid="cond-ms"),
        ], orders=[o("72158", reasons=[f.coding("G35", "Multiple sclerosis")])]),
        story("pregnancy-contrast", "pat-pregnant", birth="1994-11-11", gender="female", resources=[
            c("Z34.90", onset="2026-07-01", display="Encounter for supervision of normal pregnancy, unspecified, unspecified trimester", cid="cond-pregnant"),
            c("M54.50", onset="2026-11-19", cid="cond-pregnant-lbp"),
        ], orders=[o("72158", reasons=[LBP])]),
        story("contrast-choice", "pat-contrast", birth="1969-01-05", gender="male", resources=[
            c("M54.50", onset="2026-07-01", cid="cond-contrast-lbp"),
            f.medication("5640", "Ibuprofen", authored="2026-07-03"),
            f.procedure("97161", performed="2026-07-15", display="Physical therapy evaluation, low complexity"),
        ], orders=[o("72158", reasons=[LBP])]),
        story("repeat-imaging", "pat-repeat", birth="1973-12-24", gender="female", resources=[
            c("M54.50", onset="2026-11-05", cid="cond-repeat-lbp"),
            f.imaging_report("72148", on="2026-06-02"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("child", "pat-child", birth="2014-05-05", gender="male", resources=[
            c("M54.50", onset="2026-11-20", cid="cond-child-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("order-sign-two-orders", "pat-sign", birth="1990-02-17", gender="male", hook="order-sign", resources=[
            c("M54.50", onset="2026-11-12", cid="cond-sign-lbp"),
        ], orders=[o("72148", reasons=[LBP], oid="mri-1"), o("72149", reasons=[LBP], oid="mri-2"),
                   {"resourceType": "ServiceRequest", "id": "cbc-1", "status": "draft", "intent": "plan",
                    "code": {"coding": [f.coding("58410-2", "CBC panel")]}, "subject": {"reference": "Patient/pat-sign"}}]),
    ]


def sandbox_shapes() -> dict[str, dict[str, Any]]:
    """Odd requests the CDS Hooks sandbox really sends (cds-hooks-notes.md): all get 200 {"cards": []}."""
    base = f.hook_request([f.mri_order("72148", reasons=[LBP])], pat=f.patient("pat-sandbox"))
    base["context"]["patientId"] = "pat-sandbox"
    empty = json.loads(json.dumps(base))
    empty["context"]["draftOrders"]["entry"][0]["resource"]["code"] = {"coding": [{}]}
    empty["context"]["draftOrders"]["entry"][0]["resource"]["reasonCode"] = []
    medication = json.loads(json.dumps(base))
    medication["context"]["selections"] = ["MedicationRequest/smart-MedicationRequest-103"]
    medication["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": {
        "resourceType": "MedicationRequest", "id": "smart-MedicationRequest-103", "status": "draft", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": f.RXNORM, "code": "617314", "display": "Atorvastatin 10 MG Oral Tablet"}]},
        "subject": {"reference": "Patient/pat-sandbox"}}}]}
    dstu2 = json.loads(json.dumps(medication))
    dstu2["context"]["selections"] = ["MedicationOrder/order-123"]
    dstu2["context"]["draftOrders"]["entry"][0]["resource"] = {"resourceType": "MedicationOrder", "id": "order-123", "status": "draft",
                                                               "medicationCodeableConcept": {"text": "Amoxicillin"}}
    bare = json.loads(json.dumps(base))
    del bare["context"]["selections"]
    del bare["context"]["draftOrders"]
    return {"sandbox-empty-order": empty, "sandbox-medication-order": medication,
            "sandbox-dstu2-medication-order": dstu2, "sandbox-no-draft-orders": bare}


def benchmark_request() -> dict[str, Any]:
    """A realistic chart: ~20 Conditions, ~60 Observations, some procedures and medications."""
    c = f.condition
    chronic = ["I10", "E11.9", "E78.5", "K21.9", "J45.909", "F41.1", "G47.33", "M17.11", "N40.0", "E03.9",
               "H52.4", "L40.0", "M25.561", "R73.03", "Z87.891", "K57.30", "I25.10", "F32.A"]
    resources = [c(code, onset=f"20{10 + n % 15:02d}-0{1 + n % 9}-15") for n, code in enumerate(chronic)]
    resources += [c("M54.50", onset="2026-11-12", cid="cond-bench-lbp"), c("M54.41", onset="2026-11-14", cid="cond-bench-sciatica")]
    loincs = ["8310-5", "8867-4", "8480-6", "8462-4", "9279-1", "29463-7", "8302-2", "2345-7", "2160-0", "718-7"]
    for n in range(60):
        code = loincs[n % len(loincs)]
        day = f"2026-{1 + n % 11:02d}-{1 + n % 27:02d}"
        resources.append(f.temperature(36.5 + (n % 5) / 10, on=day) if code == "8310-5" else f.observation(code, on=day, value=70 + n))
    resources += [f.procedure("45378", performed="2024-03-03", display="Colonoscopy"),
                  f.medication("617314", "Atorvastatin 10 MG Oral Tablet", authored="2026-01-10"),
                  f.medication("860975", "Metformin 500 MG Oral Tablet", authored="2025-05-10")]
    return story("benchmark-realistic", "pat-bench", birth="1968-03-03", gender="male", resources=resources,
                 orders=[f.mri_order("72148", reasons=[LBP])])[1]


def main() -> None:
    requests_dir, patients_dir = f.FIXTURES / "requests", f.FIXTURES / "patients"
    requests_dir.mkdir(parents=True, exist_ok=True)
    patients_dir.mkdir(parents=True, exist_ok=True)
    for name, request, bundle in stories():
        (requests_dir / f"{name}.json").write_text(json.dumps(request, indent=2) + "\n")
        (patients_dir / f"{name}.json").write_text(json.dumps(bundle, indent=2) + "\n")
    for name, request in sandbox_shapes().items():
        (requests_dir / f"{name}.json").write_text(json.dumps(request, indent=2) + "\n")
    (requests_dir / "benchmark-realistic.json").write_text(json.dumps(benchmark_request(), indent=2) + "\n")


if __name__ == "__main__":
    main()

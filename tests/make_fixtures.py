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
        *v2_stories(),
        story("child", "pat-child", birth="2014-05-05", gender="male", resources=[
            c("M54.50", onset="2026-11-20", cid="cond-child-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("order-sign-two-orders", "pat-sign", birth="1990-02-17", gender="male", hook="order-sign", resources=[
            c("M54.50", onset="2026-11-12", cid="cond-sign-lbp"),
        ], orders=[o("72148", reasons=[LBP], oid="mri-1"), o("72149", reasons=[LBP], oid="mri-2"),
                   {"resourceType": "ServiceRequest", "id": "cbc-1", "status": "draft", "intent": "plan",
                    "code": {"coding": [f.coding("58410-2", "CBC panel")]}, "subject": {"reference": "Patient/pat-sign"}}]),
        *modality_stories(),
    ]


def modality_stories() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """decision-rules.md v2 change 6: lumbar CT and radiography orders (written as of 2026-11-26)."""
    c, o = f.condition, f.imaging_order
    radiculopathy = f.coding("M54.16", "Radiculopathy, lumbar region")
    return [
        story("ct-acute-uncomplicated", "pat-ct-acute", birth="1988-03-09", gender="female", resources=[
            c("M54.50", onset="2026-11-14", display="Low back pain, unspecified", cid="cond-ct-acute-lbp"),
        ], orders=[o("72131", reasons=[LBP], display="CT lumbar spine without contrast")]),
        story("ct-pregnancy", "pat-ct-pregnant", birth="1993-04-21", gender="female", resources=[
            c("Z34.90", onset="2026-07-01", display="Encounter for supervision of normal pregnancy, unspecified, unspecified trimester",
              cid="cond-ct-pregnant"),
            c("M54.16", onset="2026-08-15", display="Radiculopathy, lumbar region", cid="cond-ct-pregnant-radic"),
            f.procedure("97110", performed="2026-09-01", display="Therapeutic exercises"),
            f.procedure("97110", performed="2026-09-22", display="Therapeutic exercises"),
        ], orders=[o("72131", reasons=[radiculopathy], display="CT lumbar spine without contrast")]),
        story("ct-cauda-equina", "pat-ct-cauda", birth="1970-08-30", gender="male", resources=[
            c("M54.50", onset="2026-11-21", cid="cond-ct-cauda-lbp"),
            c("G83.4", onset="2026-11-25", verification="provisional", display="Cauda equina syndrome", cid="cond-ct-cauda"),
        ], orders=[o("72131", reasons=[LBP], display="CT lumbar spine without contrast")]),
        story("xr-acute-uncomplicated", "pat-xr-acute", birth="1991-12-02", gender="male", resources=[
            c("M54.50", onset="2026-11-16", display="Low back pain, unspecified", cid="cond-xr-acute-lbp"),
        ], orders=[o("72100", reasons=[LBP], display="X-ray lumbosacral spine, 2 or 3 views")]),
        story("ct-repeat-imaging", "pat-ct-repeat", birth="1975-05-19", gender="female", resources=[
            c("M54.50", onset="2026-11-05", cid="cond-ct-repeat-lbp"),
            f.imaging_report("72131", on="2026-07-14", display="CT lumbar spine without contrast"),
        ], orders=[o("72131", reasons=[LBP])]),
    ]


def v2_stories() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """decision-rules.md v2: one patient story per new behaviour (written as of 2026-11-26)."""
    c, o = f.condition, f.mri_order
    rx, atc = f.RXNORM, "http://www.whocc.no/atc"
    contusion = "Contusion of lower back and pelvis, initial encounter"
    on_visit = {"reference": "Encounter/enc-crash"}
    return [
        story("snomed-cancer-history", "pat-snomed-cancer", birth="1961-04-09", gender="female", resources=[
            c("415076002", onset="2018-03-01", clinical="inactive", display="Personal history of primary malignant neoplasm of breast", cid="cond-snomed-breast-cancer"),
            c("279039007", onset="2026-11-16", display="Low back pain (finding)", cid="cond-snomed-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("snomed-motor-deficit", "pat-paraplegia", birth="1970-08-21", gender="male", resources=[
            c("60389000", onset="2026-11-24", display="Paraplegia (disorder)", cid="cond-paraplegia"),
            c("M54.16", onset="2026-11-19", display="Radiculopathy, lumbar region", cid="cond-paraplegia-radic"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("steroid-statement", "pat-steroids", birth="1964-02-02", gender="female", resources=[
            c("M54.50", onset="2026-11-14", cid="cond-steroids-lbp"),
            c("M06.9", onset="2019-01-01", display="Rheumatoid arthritis, unspecified", cid="cond-steroids-ra"),
            f.medication_statement("312617", "predniSONE 5 MG Oral Tablet", start="2026-05-01"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("fever-recent-infection", "pat-uti", birth="1983-06-15", gender="female", resources=[
            c("N39.0", onset="2026-10-20", clinical="resolved", abatement="2026-11-02", display="Urinary tract infection, site not specified", cid="cond-uti"),
            c("M54.50", onset="2026-11-20", cid="cond-uti-lbp"),
            f.temperature(38.6, on="2026-11-25"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("weight-loss-over-50", "pat-weight", birth="1963-10-30", gender="male", resources=[
            c("R63.4", onset="2026-10-01", display="Abnormal weight loss", cid="cond-weight-loss"),
            c("M54.50", onset="2026-11-10", cid="cond-weight-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("injection-drug-use", "pat-ivdu", birth="1991-12-12", gender="male", resources=[
            c("F11.20", onset="2025-09-01", display="Opioid dependence, uncomplicated", cid="cond-ivdu-oud"),
            c("M54.50", onset="2026-11-21", cid="cond-ivdu-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("age-over-70", "pat-age", birth="1952-05-05", gender="female", resources=[
            c("M54.50", onset="2026-11-18", cid="cond-age-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("ankylosing-spondylitis-trauma", "pat-as", birth="1979-07-07", gender="male", resources=[
            c("M45.9", onset="2012-01-01", display="Ankylosing spondylitis of unspecified sites in spine", cid="cond-as"),
            c("S30.0XXA", onset="2026-11-23", display=contusion, cid="cond-as-contusion"),
            c("M54.50", onset="2026-11-23", cid="cond-as-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("acute-weaker-risk-factors", "pat-weaker", birth="1968-09-19", gender="female", resources=[
            c("M54.50", onset="2026-11-13", cid="cond-weaker-lbp"),
            c("M45.9", onset="2015-01-01", display="Ankylosing spondylitis of unspecified sites in spine", cid="cond-weaker-as"),
            f.temperature(100.9, "[degF]", on="2026-11-24"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("trauma-high-energy", "pat-crash", birth="1995-03-03", gender="male", resources=[
            {**c("S30.0XXA", onset="2026-11-21", display=contusion, cid="cond-crash-contusion"), "encounter": on_visit},
            {**c("V43.52XA", display="Car driver injured in collision with other type car in traffic accident, initial encounter", cid="cond-crash-cause"), "encounter": on_visit},
            c("M54.50", onset="2026-11-21", cid="cond-crash-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("cervical-fusion", "pat-cervical", birth="1976-01-25", gender="female", resources=[
            c("Z98.1", onset="2019-04-01", display="Arthrodesis status", cid="cond-cervical-fusion"),
            c("M54.50", onset="2026-11-17", cid="cond-cervical-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("old-physical-therapy", "pat-old-pt", birth="1980-11-11", gender="male", resources=[
            c("M54.50", onset="2025-02-01", cid="cond-old-pt-lbp"),
            f.procedure("97110", performed="2025-03-10", display="Therapeutic exercises"),
            f.procedure("97110", performed="2025-04-02", display="Therapeutic exercises"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("known-vertebral-fracture", "pat-known-fracture", birth="1972-02-14", gender="male", resources=[
            c("S32.010A", onset="2026-11-10", display="Wedge compression fracture of first lumbar vertebra, initial encounter", cid="cond-known-fracture"),
            c("M54.50", onset="2026-11-10", cid="cond-known-fracture-lbp"),
        ], orders=[o("72148", reasons=[LBP])]),
        story("cauda-equina-contrast", "pat-cauda-contrast", birth="1966-06-06", gender="female", resources=[
            c("G83.4", onset="2026-11-25", verification="provisional", display="Cauda equina syndrome", cid="cond-cauda-contrast"),
            c("M54.50", onset="2026-11-22", cid="cond-cauda-contrast-lbp"),
        ], orders=[o("72149", reasons=[LBP])]),
        story("atc-glucocorticoid-dispense", "pat-dispense", birth="1969-12-01", gender="male", resources=[
            c("M54.50", onset="2026-11-15", cid="cond-dispense-lbp"),
            f.medication_dispense("8640", "prednisone", handed_over="2026-08-01", days_supply=90),
            {**f.medication_statement("H02AB06", "prednisolone", start="2026-06-01", end="2026-07-15", status="completed"),
             "medicationCodeableConcept": {"coding": [f.coding("H02AB06", "prednisolone", atc)]}},
        ], orders=[o("72148", reasons=[LBP])]),
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

"""A synthetic FHIR Bulk Data export of a primary-care population, deterministic by seed.

    python benchmarks/make_export.py OUT_DIR [--patients N] [--seed S] [--gzip] [--files-per-type K]

Each patient has demographics, encounters at one clinic (with vital signs: blood pressure, heart rate,
weight, BMI, temperature), the comorbidities of a primary-care list (hypertension, type 2 diabetes,
hyperlipidaemia, depression, COPD, obesity, osteoporosis) with their observations and medication
histories (MedicationRequest, and MedicationStatement for over-the-counter use). About one adult in
eight has lumbar imaging ordered (MRI, CT or radiography) in 2025, in one of the situations of every
rule of the decision table (acute pain, persistent pain with or without conservative care, cauda
equina signs, cancer history, infection risk, prior surgery, osteoporosis or fracture, trauma,
pregnancy, steroids, a prior MRI, no indication, a reason the criteria do not cover); some get a
finding recorded *after* the order, which the audit must not see. Orders name a requester
(PractitionerRole or Practitioner) and an encounter whose serviceProvider is the clinic.

Codes are those of service/facts/valuesets.json (whose entries carry their sources); vital-sign LOINC
codes are the FHIR vital-signs profile's. Names are made up. The same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
from datetime import date
from datetime import timedelta
from pathlib import Path
from typing import Any
from typing import BinaryIO

import orjson

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
TYPES = (
    "Patient", "Encounter", "Condition", "Observation", "Procedure", "ServiceRequest", "MedicationRequest",
    "MedicationStatement", "ImagingStudy", "DiagnosticReport", "Practitioner", "PractitionerRole", "Organization",
)
WINDOW_START = date(2025, 1, 1)   # orders are authored in 2025 (a few in late 2024, outside a 2025 window)
WINDOW_DAYS = 365
ORDER_SHARE = 0.125               # adults with lumbar imaging ordered

CLINICS = ("Riverside Family Practice", "Northgate Medical Group", "Hillcrest Primary Care", "Lakeside Health Centre",
           "Old Town Surgery", "Westfield Clinic", "Maple Street Practice", "Harbour View Medical")
GIVEN = ("Ana", "Ben", "Chloe", "David", "Elif", "Farah", "Gavin", "Hana", "Ivan", "Julia", "Kofi", "Lena", "Marco",
         "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor", "Wen", "Yusuf", "Zoe")
FAMILY = ("Lopez", "Smith", "Okafor", "Nguyen", "Kowalski", "Haddad", "Muller", "Rossi", "Tanaka", "Silva", "Brown",
          "Jensen", "Ahmed", "Novak", "Garcia", "Fischer", "Ivanova", "Kim", "Moreau", "Patel")

# (code, display, prevalence among adults, minimum age), ICD-10-CM.
COMORBIDITIES = (
    ("I10", "Essential (primary) hypertension", 0.30, 30),
    ("E11.9", "Type 2 diabetes mellitus without complications", 0.10, 30),
    ("E78.5", "Hyperlipidemia, unspecified", 0.25, 30),
    ("F32.9", "Major depressive disorder, single episode, unspecified", 0.08, 18),
    ("J44.9", "Chronic obstructive pulmonary disease, unspecified", 0.05, 50),
    ("E66.9", "Obesity, unspecified", 0.15, 18),
)
# Chronic medications per comorbidity (RxNorm ingredients).
MEDICATIONS = {"I10": ("29046", "lisinopril"), "E11.9": ("6809", "metformin"), "E78.5": ("83367", "atorvastatin"),
               "F32.9": ("36437", "sertraline"), "J44.9": ("1649574", "tiotropium")}
VITALS = (("85354-9", "Blood pressure panel", None), ("8867-4", "Heart rate", ("/min", 58, 96)),
          ("29463-7", "Body weight", ("kg", 52, 118)), ("39156-5", "Body mass index", ("kg/m2", 19, 38)),
          ("8310-5", "Body temperature", ("Cel", 36.2, 37.3)))
ORDERS = {  # modality -> ((CPT, display, weight), ...)
    "MRI": (("72148", "MRI lumbar spine without contrast", 0.7), ("72149", "MRI lumbar spine with contrast", 0.1),
            ("72158", "MRI lumbar spine without and with contrast", 0.2)),
    "CT": (("72131", "CT lumbar spine without contrast", 0.8), ("72133", "CT lumbar spine without and with contrast", 0.2)),
    "XR": (("72100", "Radiologic examination, spine, lumbosacral; 2 or 3 views", 0.7),
           ("72110", "Radiologic examination, spine, lumbosacral; minimum of 4 views", 0.3)),
}
MODALITY_WEIGHTS = (("MRI", 0.6), ("CT", 0.15), ("XR", 0.25))
# The situation an order is written in, and how often (one per rule of cards/rules.toml, and modifiers).
SCENARIOS = (
    ("acute", 0.22), ("persistent-conservative", 0.18), ("no-trial", 0.12), ("cauda-equina", 0.03),
    ("cancer-history", 0.05), ("infection-risk", 0.02), ("prior-surgery", 0.04), ("osteoporosis", 0.04),
    ("fracture", 0.02), ("steroids", 0.02), ("trauma", 0.06), ("no-indication", 0.05), ("other-reason", 0.03),
    ("pregnancy", 0.02), ("prior-mri", 0.04), ("immunosuppression", 0.02),
)
LBP = ("M54.50", "Low back pain, unspecified")
SCIATICA = ("M54.41", "Lumbago with sciatica, right side")


def _pick(rng: random.Random, weighted: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(weighted, weights=[w[-1] for w in weighted])[0]


def _day(d: date) -> str:
    return d.isoformat()


def _instant(d: date, rng: random.Random) -> str:
    return f"{d.isoformat()}T{rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}:00Z"


def _cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


class Writer:
    """Round-robin NDJSON files per resource type (plain or gzip)."""

    def __init__(self, out: Path, files_per_type: int, compress: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.handles: dict[str, list[BinaryIO]] = {}
        self.counts: dict[str, int] = {}
        for kind in TYPES:
            names = [f"{kind}.ndjson" if files_per_type == 1 else f"{kind}.{n:03d}.ndjson" for n in range(files_per_type)]
            self.handles[kind] = [
                gzip.open(out / (name + ".gz"), "wb", compresslevel=1) if compress else (out / name).open("wb")
                for name in names
            ]

    def write(self, resource: dict[str, Any], shard: int) -> None:
        kind = resource["resourceType"]
        files = self.handles[kind]
        files[shard % len(files)].write(orjson.dumps(resource) + b"\n")
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def close(self) -> None:
        for files in self.handles.values():
            for fh in files:
                fh.close()


def directory(writer: Writer) -> list[list[str]]:
    """Clinics, their clinicians and roles; the PractitionerRole references of each clinic."""
    rng = random.Random("directory")
    roles: list[list[str]] = []
    for c, clinic in enumerate(CLINICS):
        writer.write({"resourceType": "Organization", "id": f"org-{c}", "active": True, "name": clinic}, 0)
        clinic_roles = []
        for p in range(3 + c % 4):
            pid = f"prac-{c}-{p}"
            writer.write({"resourceType": "Practitioner", "id": pid, "active": True,
                          "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)], "prefix": ["Dr"]}]}, 0)
            writer.write({"resourceType": "PractitionerRole", "id": f"role-{c}-{p}", "active": True,
                          "practitioner": {"reference": f"Practitioner/{pid}"},
                          "organization": {"reference": f"Organization/org-{c}"}}, 0)
            clinic_roles.append(f"role-{c}-{p}")
        roles.append(clinic_roles)
    return roles


class PatientBuilder:
    """One patient's resources."""

    def __init__(self, n: int, seed: int, roles: list[list[str]], writer: Writer) -> None:
        self.rng = random.Random(seed * 10_000_019 + n)
        self.pid = f"pat-{n:07d}"
        self.n = n
        self.writer = writer
        self.clinic = self.rng.randrange(len(roles))
        self.roles = roles[self.clinic]
        self.counter = 0
        self.encounters: list[tuple[str, date]] = []

    def _id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.n}-{self.counter}"

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.writer.write(resource, self.n)
        return resource

    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def build(self) -> None:
        rng = self.rng
        child = rng.random() < 0.05
        age = rng.randint(6, 17) if child else min(95, int(rng.triangular(18, 92, 45)))
        gender = rng.choice(("female", "male"))
        birth = date(2025 - age, rng.randint(1, 12), rng.randint(1, 28))
        self.age, self.gender = age, gender
        self.put({"resourceType": "Patient", "id": self.pid, "gender": gender, "birthDate": _day(birth),
                  "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN{900000 + self.n}"}],
                  "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
                  "address": [{"city": "Springfield", "postalCode": f"{10000 + self.n % 89999}"}]})
        for _ in range(rng.randint(3, 8)):
            self.encounter(WINDOW_START + timedelta(days=rng.randint(-400, WINDOW_DAYS - 1)))
        if not child:
            self.comorbidities()
        if rng.random() < 0.3:
            self.lab_report()
        if rng.random() < (0.01 if child else ORDER_SHARE):
            self.lumbar_order()
        elif rng.random() < 0.05:
            self.referral()

    def encounter(self, on: date) -> str:
        eid = self._id("enc")
        self.encounters.append((eid, on))
        self.put({"resourceType": "Encounter", "id": eid, "status": "finished",
                  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                  "subject": self.subject(), "period": {"start": _day(on), "end": _day(on)},
                  "serviceProvider": {"reference": f"Organization/org-{self.clinic}"},
                  "participant": [{"individual": {"reference": f"PractitionerRole/{self.rng.choice(self.roles)}"}}]})
        for code, display, spec in VITALS:
            self.vital(code, display, spec, on, eid)
        return eid

    def vital(self, code: str, display: str, spec: tuple[str, float, float] | None, on: date, eid: str) -> None:
        obs: dict[str, Any] = {
            "resourceType": "Observation", "id": self._id("obs"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": _cc(LOINC, code, display), "subject": self.subject(), "encounter": {"reference": f"Encounter/{eid}"},
            "effectiveDateTime": _day(on), "issued": f"{_day(on)}T12:00:00Z",
        }
        if spec is None:
            obs["component"] = [
                {"code": _cc(LOINC, "8480-6", "Systolic blood pressure"),
                 "valueQuantity": {"value": self.rng.randint(105, 165), "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": _cc(LOINC, "8462-4", "Diastolic blood pressure"),
                 "valueQuantity": {"value": self.rng.randint(62, 98), "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            ]
        else:
            unit, low, high = spec
            obs["valueQuantity"] = {"value": round(self.rng.uniform(low, high), 1), "unit": unit,
                                    "system": "http://unitsofmeasure.org", "code": unit}
        self.put(obs)

    def condition(self, code: str, display: str, onset: date, *, recorded: date | None = None,
                  clinical: str = "active", system: str = ICD10) -> None:
        self.put({"resourceType": "Condition", "id": self._id("cond"),
                  "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]},
                  "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
                  "code": _cc(system, code, display), "subject": self.subject(),
                  "onsetDateTime": _day(onset), "recordedDate": _day(recorded or onset)})

    def medication(self, code: str, name: str, on: date, *, days: int = 90, statement: bool = False) -> None:
        rid = self._id("med")
        if statement:
            self.put({"resourceType": "MedicationStatement", "id": rid, "status": "active",
                      "medicationCodeableConcept": _cc(RXNORM, code, name), "subject": self.subject(),
                      "effectivePeriod": {"start": _day(on)}, "dateAsserted": _day(on)})
            return
        self.put({"resourceType": "MedicationRequest", "id": rid, "status": "active", "intent": "order",
                  "medicationCodeableConcept": _cc(RXNORM, code, name), "subject": self.subject(),
                  "authoredOn": _day(on), "requester": {"reference": f"PractitionerRole/{self.rng.choice(self.roles)}"},
                  "dispenseRequest": {"numberOfRepeatsAllowed": 0,
                                      "expectedSupplyDuration": {"value": days, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}})

    def comorbidities(self) -> None:
        rng = self.rng
        for code, display, prevalence, min_age in COMORBIDITIES:
            if self.age >= min_age and rng.random() < prevalence * (1.5 if self.age > 60 else 1):
                onset = WINDOW_START - timedelta(days=rng.randint(200, 4000))
                self.condition(code, display, onset)
                if code in MEDICATIONS:
                    rx, name = MEDICATIONS[code]
                    for k in range(rng.randint(1, 3)):
                        self.medication(rx, name, WINDOW_START - timedelta(days=rng.randint(0, 700)) + timedelta(days=90 * k))
                if code == "E11.9":
                    on = WINDOW_START + timedelta(days=rng.randint(-300, 300))
                    self.put({"resourceType": "Observation", "id": self._id("obs"), "status": "final",
                              "code": _cc(LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
                              "subject": self.subject(), "effectiveDateTime": _day(on),
                              "valueQuantity": {"value": round(rng.uniform(5.8, 9.5), 1), "unit": "%"}})
        if self.gender == "female" and self.age > 60 and rng.random() < 0.12:
            self.condition("M81.0", "Age-related osteoporosis without current pathological fracture",
                           WINDOW_START - timedelta(days=rng.randint(100, 3000)))
        if rng.random() < 0.2:
            self.medication("161", "acetaminophen", WINDOW_START - timedelta(days=rng.randint(0, 600)), statement=True)

    def lab_report(self) -> None:
        on = WINDOW_START + timedelta(days=self.rng.randint(-300, 360))
        self.put({"resourceType": "DiagnosticReport", "id": self._id("rep"), "status": "final",
                  "code": _cc(LOINC, "58410-2", "CBC panel - Blood by Automated count"), "subject": self.subject(),
                  "effectiveDateTime": _day(on), "issued": f"{_day(on)}T16:00:00Z"})

    def referral(self) -> None:
        on = WINDOW_START + timedelta(days=self.rng.randint(0, WINDOW_DAYS - 1))
        self.put({"resourceType": "ServiceRequest", "id": self._id("sr"), "status": "completed", "intent": "order",
                  "code": _cc(CPT, "97161", "Physical therapy evaluation, low complexity"), "subject": self.subject(),
                  "authoredOn": _instant(on, self.rng),
                  "requester": {"reference": f"PractitionerRole/{self.rng.choice(self.roles)}"}})

    def lumbar_order(self) -> None:
        rng = self.rng
        late = rng.random() < 0.04  # authored in late 2024: outside a 2025 window
        order_day = WINDOW_START + timedelta(days=rng.randint(-60, -1) if late else rng.randint(0, WINDOW_DAYS - 1))
        scenario = _pick(rng, SCENARIOS)[0]
        modality = _pick(rng, MODALITY_WEIGHTS)[0]
        code, display, _ = _pick(rng, ORDERS[modality])
        reasons = self.situation(scenario, order_day)
        if scenario == "pregnancy" and modality == "MRI":
            code, display = "72158", "MRI lumbar spine without and with contrast"
        eid = self.encounter(order_day)
        role = rng.choice(self.roles)
        requester = f"PractitionerRole/{role}" if rng.random() < 0.8 else f"Practitioner/prac-{role[5:]}"
        order: dict[str, Any] = {
            "resourceType": "ServiceRequest", "id": self._id("sr"), "status": rng.choice(("completed", "active")),
            "intent": "order", "category": [_cc(SNOMED, "363679005", "Imaging")],
            "code": _cc(CPT, code, display), "subject": self.subject(), "encounter": {"reference": f"Encounter/{eid}"},
            "authoredOn": _instant(order_day, rng), "requester": {"reference": requester},
        }
        if reasons:
            order["reasonCode"] = [_cc(ICD10, c, d) for c, d in reasons]
        self.put(order)
        if rng.random() < 0.3:
            self.after_the_order(order_day)

    def situation(self, scenario: str, on: date) -> list[tuple[str, str]]:
        """The record an order of this scenario is written on; the order's reason codes."""
        rng = self.rng
        acute = on - timedelta(days=rng.randint(3, 35))
        long_ago = on - timedelta(days=rng.randint(50, 170))
        match scenario:
            case "acute":
                self.condition(*LBP, acute)
                return [LBP] if rng.random() < 0.5 else []
            case "persistent-conservative":
                self.condition(*SCIATICA, long_ago)
                if rng.random() < 0.5:
                    self.put({"resourceType": "Procedure", "id": self._id("proc"), "status": "completed",
                              "code": _cc(CPT, "97110", "Therapeutic exercises"), "subject": self.subject(),
                              "performedDateTime": _day(long_ago + timedelta(days=20))})
                else:
                    self.medication("5640", "ibuprofen", long_ago + timedelta(days=3), days=30, statement=rng.random() < 0.5)
                return [SCIATICA]
            case "no-trial":
                self.condition(*LBP, long_ago)
                return [LBP]
            case "cauda-equina":
                self.condition(*LBP, acute)
                self.condition("R33.9", "Retention of urine, unspecified", on - timedelta(days=1))
                return [("G83.4", "Cauda equina syndrome")]
            case "cancer-history":
                self.condition(*LBP, acute)
                self.condition("Z85.3", "Personal history of malignant neoplasm of breast", on - timedelta(days=2000), clinical="resolved")
                return [LBP]
            case "infection-risk":
                self.condition(*LBP, acute)
                self.condition("F11.20", "Opioid dependence, uncomplicated", on - timedelta(days=300))
                self.condition("R50.9", "Fever, unspecified", on - timedelta(days=2))
                return [LBP]
            case "immunosuppression":
                self.condition(*LBP, acute)
                self.condition("D84.9", "Immunodeficiency, unspecified", on - timedelta(days=900))
                return [LBP]
            case "prior-surgery":
                self.condition(*LBP, long_ago)
                self.condition("M96.1", "Postlaminectomy syndrome, not elsewhere classified", on - timedelta(days=1500))
                return [LBP]
            case "osteoporosis":
                self.condition(*LBP, acute)
                self.condition("M81.0", "Age-related osteoporosis without current pathological fracture", on - timedelta(days=800))
                return [LBP]
            case "fracture":
                self.condition("S32.009A", "Unspecified fracture of unspecified lumbar vertebra", on - timedelta(days=4))
                return []
            case "steroids":
                self.condition(*LBP, acute)
                self.medication("8640", "prednisone", on - timedelta(days=200), days=120)
                return [LBP]
            case "trauma":
                self.condition("T14.90XA", "Injury, unspecified, initial encounter", on - timedelta(days=rng.randint(1, 20)))
                return []
            case "no-indication":
                return []
            case "other-reason":
                return [("R10.9", "Unspecified abdominal pain")]
            case "pregnancy":
                self.condition(*LBP, acute)
                self.condition("Z34.90", "Encounter for supervision of normal pregnancy, unspecified", on - timedelta(days=60))
                return [LBP]
            case "prior-mri":
                self.condition(*LBP, long_ago)
                self.medication("5640", "ibuprofen", long_ago + timedelta(days=2), days=30)
                self.put({"resourceType": "ImagingStudy", "id": self._id("img"), "status": "available",
                          "subject": self.subject(), "started": f"{_day(on - timedelta(days=120))}T09:00:00Z",
                          "procedureCode": [_cc(CPT, "72148", "MRI lumbar spine without contrast")]})
                return [LBP]
        return []

    def after_the_order(self, on: date) -> None:
        """Findings recorded after the order: the audit's as-of rule must not let them count."""
        rng = self.rng
        later = on + timedelta(days=rng.randint(1, 30))
        choice = rng.random()
        if choice < 0.4:
            self.condition("C79.51", "Secondary malignant neoplasm of bone", later)
        elif choice < 0.7:
            self.put({"resourceType": "Procedure", "id": self._id("proc"), "status": "completed",
                      "code": _cc(CPT, "97110", "Therapeutic exercises"), "subject": self.subject(),
                      "performedDateTime": _day(later)})
        else:
            self.condition("M54.50", "Low back pain, unspecified", on - timedelta(days=90), recorded=later)


def generate(out: Path, patients: int, seed: int = 1, *, compress: bool = False, files_per_type: int = 1) -> dict[str, int]:
    """Write the export; resource counts by type."""
    writer = Writer(out, files_per_type, compress)
    try:
        roles = directory(writer)
        for n in range(patients):
            PatientBuilder(n, seed, roles, writer).build()
    finally:
        writer.close()
    return dict(writer.counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gzip", action="store_true", help="write .ndjson.gz files")
    parser.add_argument("--files-per-type", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    counts = generate(args.out, args.patients, args.seed, compress=args.gzip, files_per_type=args.files_per_type)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{sum(counts.values())} resources for {args.patients} patients, {size / 1e6:.1f} MB, "
          f"in {time.perf_counter() - started:.1f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          file=sys.stderr)


if __name__ == "__main__":
    main()

"""The words cards/ may use for suggestions, defined once (issue 16): the action kinds and the reasons
an add-reason suggestion can write, with their codings.

``rules.table`` checks card content against these; ``render.actions`` builds the FHIR from them.
"""

from __future__ import annotations

CPT = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"

ACTIONS = ("delete-order", "refer-physical-therapy", "set-priority-stat", "replace-code", "add-reason")

# The codings an add-reason suggestion writes into reasonCode (codes.json, verified "official" for
# ICD-10-CM, "corroborated-third-party" for SNOMED CT).
REASONS: dict[str, tuple[dict[str, str], ...]] = {
    "low_back_pain": (
        {"system": ICD10CM, "code": "M54.50", "display": "Low back pain, unspecified"},
        {"system": SNOMED, "code": "279039007", "display": "Low back pain (finding)"},
    ),
    "radiculopathy": ({"system": ICD10CM, "code": "M54.16", "display": "Radiculopathy, lumbar region"},),
    "cauda_equina": (
        {"system": ICD10CM, "code": "G83.4", "display": "Cauda equina syndrome"},
        {"system": SNOMED, "code": "192970008", "display": "Cauda equina syndrome (disorder)"},
    ),
    "cancer_history": (
        {"system": ICD10CM, "code": "Z85.9", "display": "Personal history of malignant neoplasm, unspecified"},
    ),
    "spinal_infection": (
        {"system": ICD10CM, "code": "M46.26", "display": "Osteomyelitis of vertebra, lumbar region"},
    ),
}
REASON_KEYS = tuple(REASONS)

"""The code-list build scripts (tools/valuesets): how they read RxNorm names and published value sets."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "valuesets"


@pytest.fixture(scope="module", autouse=True)
def _tools_on_path() -> Iterator[None]:
    sys.path.insert(0, str(TOOLS))
    yield
    sys.path.remove(str(TOOLS))


KNOWN = {"prednisone": ("8640", {"glucocorticoid_medication"}), "cyclobenzaprine": ("21949", {"muscle_relaxant_medication"}),
         "ibuprofen": ("5640", {"nsaid_medication"}), "carisoprodol": ("2101", {"muscle_relaxant_medication"})}


@pytest.mark.parametrize(
    ("name", "ingredients"),
    [
        ("prednisone 10 MG Oral Tablet", ["prednisone"]),
        ("{21 (prednisone 10 MG Oral Tablet) } Pack", ["prednisone"]),
        ("cyclobenzaprine hydrochloride 10 MG Oral Tablet", ["cyclobenzaprine"]),        # salt -> listed base
        ("24 HR cyclobenzaprine hydrochloride 15 MG Extended Release Oral Capsule", ["cyclobenzaprine"]),
        ("aspirin 325 MG / carisoprodol 200 MG Oral Tablet", ["aspirin", "carisoprodol"]),
        ("hydrocodone bitartrate 10 MG / ibuprofen 200 MG Oral Tablet", ["hydrocodone bitartrate", "ibuprofen"]),
        ("1 ML ketorolac tromethamine 15 MG/ML Cartridge", ["ketorolac tromethamine"]),  # not listed: name kept
        ("ibuprofen 200 MG Oral Tablet [Advil]", ["ibuprofen"]),
        ("Once-Daily diclofenac epolamine 0.013 MG/MG Medicated Patch", ["diclofenac epolamine"]),  # dosing prefix
    ],
)
def test_rxnorm_names_give_their_ingredients(name: str, ingredients: list[str]) -> None:
    from build_rxnorm import ingredients_of

    assert ingredients_of(name, KNOWN) == ingredients


def test_fhir_value_set_expansion_is_read_with_its_release() -> None:
    from build_snomed import read_fhir_json

    doc = {"resourceType": "ValueSet", "title": "Example", "url": "http://cts.nlm.nih.gov/fhir/ValueSet/1.2.3", "version": "20240101",
           "expansion": {"timestamp": "2025-01-10T00:00:00Z", "contains": [
               {"system": "http://snomed.info/sct", "version": "http://snomed.info/sct/731000124108/version/20230901",
                "code": "386661006", "display": "Fever (finding)"},
               {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R50.9", "display": "Fever, unspecified"}]}}
    vs = read_fhir_json(json.dumps(doc), "repo@abc path")
    assert vs is not None and vs.codes == {"386661006": "Fever (finding)"}
    assert vs.release == "value set version 20240101, expansion 2025-01-10, SNOMED CT US Edition 2023-09"
    assert read_fhir_json(json.dumps({"resourceType": "CodeSystem"}), "x") is None


def test_fsh_expansions_and_dicom_concepts_are_read() -> None:
    from build_snomed import read_fsh

    ips = ('* ^version = "1.1.0"\n* ^expansion.contains[0].system = "http://snomed.info/sct"\n'
           '* ^expansion.contains[=].code = #386661006\n* ^expansion.contains[=].display = "Fever"\n')
    assert read_fsh(ips, "w").codes == {"386661006": "Fever"}
    dicom = '* ^title = "Vertebra (CID 7603)"\n* http://snomed.info/sct#49668003 //"L5 vertebra" \n* http://snomed.info/srt#T-1 "x"\n'
    got = read_fsh(dicom, "w")
    assert got.codes == {"49668003": "L5 vertebra"} and got.title == "Vertebra (CID 7603)"


def test_display_filters() -> None:
    from build_snomed import SKIN_NMSC
    from build_snomed import Pull
    from build_snomed import ValueSetFile
    from build_snomed import select

    vs = ValueSetFile("t", "r", "rel", {"1": "Primary basal cell carcinoma of left upper limb (disorder)",
                                         "2": "Malignant melanoma of skin of left lower limb (disorder)",
                                         "3": "Malignant neoplasm of skin of cheek, external (disorder)",
                                         "4": "Primary malignant neoplasm of lumbar vertebral column (disorder)"})
    assert set(select(vs, Pull("malignancy", "ecqm", "p", exclude=SKIN_NMSC))) == {"2", "4"}

"""The shipped code lists against their sources: ICD-10-CM against the full CMS code tree."""

from __future__ import annotations

import bisect
import json
from typing import Any

import pytest
import simple_icd_10_cm as cm

from service.facts.codes import DEFAULT_PATH
from service.facts.codes import ICD10
from service.facts.codes import ValueSets
from service.facts.codes import normalize_icd10
from service.facts.codes import snomed_check_digit_ok

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
TERMINOLOGY = DEFAULT_PATH.with_name("terminology")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def vs() -> ValueSets:
    return ValueSets.load()


@pytest.fixture(scope="module")
def tree() -> dict[str, str]:
    """Every category, subcategory and code of the tree, without dot -> official title."""
    return {c.replace(".", ""): cm.get_description(c) for c in cm.get_all_codes() if cm.is_category_or_subcategory(c)}


def _icd_entries(raw: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (name, part, entry)
        for name, concept in raw["concepts"].items()
        for part in ("include", "exclude")
        for entry in concept.get(part, [])
        if entry["system"] == ICD10
    ]


def test_every_icd_entry_is_a_real_code(raw: dict[str, Any], tree: dict[str, str]) -> None:
    """A typo (M54.6O, Z94.9X) or a code that never existed fails here, naming the concept."""
    bad = [
        (name, part, code)
        for name, part, entry in _icd_entries(raw)
        for code in (entry["code"], entry.get("to"))
        if code is not None and normalize_icd10(code) not in tree
        and normalize_icd10(code) not in {"M545"}  # the pre-2021 billable code, kept for legacy data
    ]
    assert bad == []


def test_every_range_covers_its_whole_span(raw: dict[str, Any], vs: ValueSets, tree: dict[str, str]) -> None:
    """Each code of the tree inside a range (or under a prefix) belongs to the concept, bar its excludes."""
    excludes: dict[str, list[str]] = {}
    for name, part, entry in _icd_entries(raw):
        if part == "exclude":
            excludes.setdefault(name, []).append(normalize_icd10(entry["code"]))
    by_category: dict[str, list[str]] = {}
    for code in tree:
        by_category.setdefault(code[:3], []).append(code)
    categories = sorted(by_category)
    missing: list[tuple[str, str]] = []
    for name, part, entry in _icd_entries(raw):
        if part != "include":
            continue
        low = normalize_icd10(entry["code"])
        high = normalize_icd10(entry.get("to") or entry["code"])
        exact = entry.get("match") == "exact"
        span = categories[bisect.bisect_left(categories, low[:3]): bisect.bisect_right(categories, high[:3])]
        for code in (c for category in span for c in by_category[category]):
            head = code[: len(low)]
            if not (low <= head <= high) or (exact and code != low):
                continue
            if any(code.startswith(x) for x in excludes.get(name, ())):
                continue
            if name not in vs.concepts(ICD10CM, code):
                missing.append((name, code))
    assert missing == []


def test_range_bounds_are_categories_of_the_tree(raw: dict[str, Any], tree: dict[str, str]) -> None:
    for name, _, entry in _icd_entries(raw):
        if entry.get("match") == "range":
            for code in (entry["code"], entry["to"]):
                assert normalize_icd10(code) in tree, (name, code)


def test_shipped_icd10cm_subset_is_the_tree_covered_by_the_value_sets(vs: ValueSets, tree: dict[str, str]) -> None:
    """icd10cm.json holds exactly the tree's codes some concept matches, with the official titles.

    It fails when valuesets.json changed without re-running tools/valuesets/build_icd10cm.py.
    """
    shipped = json.loads((TERMINOLOGY / "icd10cm.json").read_text(encoding="utf-8"))
    covered = {code: title for code, title in tree.items() if vs.concepts(ICD10CM, code)}
    codes = {normalize_icd10(c): t for c, t in shipped["codes"].items()}
    assert codes == covered
    assert "FY2026" in shipped["release"]


@pytest.mark.parametrize("code", ["M54.50", "S32.010A", "C79.51", "W11.XXXA", "Z98.1"])
def test_display_matches_the_tree(vs: ValueSets, code: str) -> None:
    assert vs.display(ICD10CM, code) == cm.get_description(code)


# --- SNOMED CT by hierarchy (terminology/snomed.json) ---------------------------------------------------

SCT = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@pytest.fixture(scope="module")
def snomed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((TERMINOLOGY / "snomed.json").read_text(encoding="utf-8"))
    return doc


@pytest.mark.parametrize(
    ("code", "concept", "belongs"),
    [
        # descendants of the named concepts, as coded on real charts
        ("93878007", "malignancy", True),          # primary malignant neoplasm of lumbar vertebral column
        ("94389000", "malignancy", True),          # secondary malignant neoplasm of lumbar vertebral column
        ("429014004", "malignancy", True),         # history of malignant lymphoma
        ("1081021000119109", "malignancy", True),  # melanoma of skin counts
        ("1079091000119100", "malignancy", False),  # primary basal cell carcinoma of left upper limb
        ("188095002", "malignancy", False),        # malignant neoplasm of skin of cheek (ICD C44)
        ("60389000", "motor_deficit", True),       # paraplegia
        ("782388003", "cauda_equina", True),       # incomplete cauda equina syndrome
        ("236648008", "cauda_equina", True),       # acute retention of urine
        ("449813001", "cauda_equina", True),       # numbness of saddle area
        ("126963001", "cauda_equina", False),      # neoplasm of cauda equina is not the syndrome
        ("203159006", "spinal_infection", True),   # acute osteomyelitis of lumbar spine
        ("63627007", "spinal_infection", True),    # spinal epidural abscess
        ("7520000", "fever", True),                # pyrexia of unknown origin
        ("145101000119102", "iv_drug_use", True),  # intravenous cocaine abuse
        ("91302008", "recent_infection", True),    # sepsis
        ("36689008", "recent_infection", True),    # acute pyelonephritis
        ("128045006", "recent_infection", True),   # cellulitis
        ("1125006", "recent_infection", False),    # sepsis during labor: obstetric, left out
        ("448765001", "weight_loss", True),        # unintentional weight loss
        ("89362005", "weight_loss", False),        # weight loss (finding): intentional too
        ("239810002", "ankylosing_spondylitis", True),
        ("203450003", "vertebral_fracture", True),  # osteoporotic fracture of lumbar vertebra
        ("203450003", "osteoporosis", True),
        ("17616007", "trauma", True),              # closed fracture of ilium
        ("199993001", "trauma", False),            # obstetric trauma is not back trauma
        ("50172003", "prior_lumbar_surgery", True),  # lumbar spinal fusion
        ("410160006", "physical_therapy", True),   # physical therapy management
        ("278862001", "low_back_pain", True),      # acute low back pain
        ("67437007", "low_back_pain", False),      # lumbar spondylosis with myelopathy is not uncomplicated
        ("128196005", "radiculopathy_stenosis", True),  # lumbar radiculopathy
        ("1217253001", "lumbar_body_site", True),  # lumbo-sacral spine
        ("49668003", "lumbar_body_site", True),    # L5 vertebra
    ],
)
def test_snomed_hierarchy_membership(vs: ValueSets, code: str, concept: str, belongs: bool) -> None:
    assert (concept in vs.concepts(SCT, code)) is belongs


def test_every_snomed_list_says_what_it_is(snomed: dict[str, Any], vs: ValueSets) -> None:
    """Each list names its source, release and filter; its codes satisfy the filter it states."""
    import re

    assert snomed["lists"]
    for entry in snomed["lists"]:
        assert entry["concept"] in vs.names
        for key in ("title", "reference", "release", "filter"):
            assert isinstance(entry[key], str) and entry[key].strip(), (entry["concept"], key)
        assert "@" in entry["reference"] or "oid" in entry["reference"].lower() or "http" in entry["reference"]
        include = re.compile(entry["include"], re.I) if entry["include"] else None
        exclude = re.compile(entry["exclude"], re.I) if entry["exclude"] else None
        for code, display in entry["codes"].items():
            assert code.isdigit(), code
            assert include is None or include.search(display) or include.search(display + " "), (code, display)
            assert exclude is None or not exclude.search(display), (entry["concept"], code, display)


def test_snomed_codes_carry_valid_check_digits(snomed: dict[str, Any]) -> None:
    bad = [(e["concept"], c) for e in snomed["lists"] for c in e["codes"] if not snomed_check_digit_ok(c)]
    assert bad == []


def test_describe_names_each_snomed_list(vs: ValueSets) -> None:
    summary = {s.name: s for s in vs.describe()}["malignancy"]
    lists = [s for s in summary.sources if s.system == SCT and s.title == "All Primary and Secondary Cancer"]
    assert lists and lists[0].codes > 2000 and "SNOMED CT" in lists[0].release
    assert "skin cancer" in lists[0].filter
    assert summary.codes[SCT] > 2000


# --- RxNorm products by ingredient (terminology/rxnorm.json) --------------------------------------------


@pytest.mark.parametrize(
    ("code", "concepts", "ingredient"),
    [
        ("312617", {"glucocorticoid_medication"}, ("8640", "prednisone")),        # prednisone 5 MG Oral Tablet
        ("198145", {"glucocorticoid_medication"}, ("8640", "prednisone")),        # prednisone 10 MG Oral Tablet
        ("763185", {"glucocorticoid_medication"}, ("8640", "prednisone")),        # {21 (prednisone 10 MG ...)} Pack
        ("197969", {"glucocorticoid_medication"}, ("6902", "methylprednisolone")),
        ("828348", {"muscle_relaxant_medication", "conservative_medication"}, ("21949", "cyclobenzaprine")),
        ("197447", {"muscle_relaxant_medication", "conservative_medication"}, ("2101", "carisoprodol")),  # aspirin / carisoprodol
        ("2627781", {"muscle_relaxant_medication", "conservative_medication"}, ("59078", "metaxalone")),
        ("994528", {"muscle_relaxant_medication", "conservative_medication"}, ("7715", "orphenadrine")),  # with aspirin, caffeine
        ("197807", {"nsaid_medication", "conservative_medication"}, ("5640", "ibuprofen")),  # ibuprofen 800 MG Oral Tablet
        ("2385117", {"nsaid_medication", "conservative_medication"}, ("3355", "diclofenac")),  # Once-Daily patch
        ("197818", {"nsaid_medication", "conservative_medication"}, ("5781", "indomethacin")),
        ("859315", {"nsaid_medication", "conservative_medication"}, ("5640", "ibuprofen")),  # hydrocodone / ibuprofen
    ],
)
def test_products_map_to_their_ingredients(
    vs: ValueSets, code: str, concepts: set[str], ingredient: tuple[str, str] | None
) -> None:
    assert vs.concepts(RXNORM, code) == concepts
    assert vs.ingredient(RXNORM, code) == ingredient
    assert vs.display(RXNORM, code)


def test_every_product_names_its_source(vs: ValueSets) -> None:
    doc = json.loads((TERMINOLOGY / "rxnorm.json").read_text(encoding="utf-8"))
    for code, product in doc["products"].items():
        source = doc["sources"][product["source"]]
        assert source["title"] and source["reference"] and "RxNorm" in source["release"], code
        assert product["concepts"], code
        assert set(product["concepts"]) <= set(vs.concepts(RXNORM, code)), code


def test_a_list_taken_by_ingredient_says_so(vs: ValueSets) -> None:
    """The NSAID products of a wider published list are named with the list and the filter that cut it down."""
    summary = {s.name: s for s in vs.describe()}["nsaid_medication"]
    lists = [s for s in summary.sources if s.system == RXNORM and s.title == "Non opioid pain medications"]
    assert lists and lists[0].codes > 100 and "RxNorm 2020-12" in lists[0].release
    assert "2.16.840.1.113762.1.4.1021.73" in lists[0].reference and "Ophthalmic" in lists[0].filter

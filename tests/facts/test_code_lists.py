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

"""Build service/facts/terminology/icd10cm.json: the ICD-10-CM codes the value sets cover, with official titles.

    pip install 'simple-icd-10-cm==1.5.0' && python tools/valuesets/build_icd10cm.py

Source: the CMS ICD-10-CM tabular list and code list (release named in RELEASE), as shipped inside the
PyPI package simple-icd-10-cm (which also spells out the codes with a seventh character and their titles).
Kept: every code of the tree (categories, subcategories, billable codes, seventh-character extensions)
that an include entry of valuesets.json matches, so that ``ValueSets.display()`` gives the official
title of every ICD-10-CM code a card can name. Re-run after editing valuesets.json or upgrading the
package (then change RELEASE and the pin in pyproject.toml).
"""

from __future__ import annotations

import simple_icd_10_cm as cm
from common import TERMINOLOGY
from common import VALUESETS
from common import read_json
from common import write_json

from service.facts.codes import ICD10CM_FILE
from service.facts.codes import ValueSets

PACKAGE = "simple-icd-10-cm 1.5.0"
RELEASE = "ICD-10-CM FY2026, April 1, 2026 update (CMS)"
REFERENCE = "https://www.cms.gov/medicare/coding-billing/icd-10-codes (icd10cm-tabular-April-1-2026.xml, via PyPI simple-icd-10-cm 1.5.0)"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def tree_codes() -> list[str]:
    """Every code of the tree with its dot (chapters and blocks left out)."""
    return [c for c in cm.get_all_codes(with_dots=True) if cm.is_category_or_subcategory(c)]


def main() -> None:
    """Write the covered part of the code tree."""
    vs = ValueSets(read_json(VALUESETS), origin=VALUESETS.name)  # curated entries only
    codes = {c: cm.get_description(c) for c in tree_codes() if vs.concepts(ICD10CM, c)}
    TERMINOLOGY.mkdir(exist_ok=True)
    write_json(TERMINOLOGY / ICD10CM_FILE, {
        "version": 1,
        "title": "ICD-10-CM code tree (codes covered by valuesets.json)",
        "reference": REFERENCE,
        "release": RELEASE,
        "built_by": f"tools/valuesets/build_icd10cm.py from PyPI {PACKAGE}",
        "codes": dict(sorted(codes.items())),
    })
    print(f"{len(codes):,} ICD-10-CM codes")


if __name__ == "__main__":
    main()

"""Build service/facts/terminology/rxnorm.json: RxNorm products (SCD/SBD and packs) with their ingredients.

    python tools/valuesets/build_rxnorm.py \\
        --checkout cqframework/ecqm-content-qicore-2024=PATH --checkout cqframework/ecqm-content-r4=PATH \\
        --checkout cqframework/cds4cpm=PATH

Sources: NLM VSAC medication value sets (RxNorm product codes with their RxNorm names) as published with
the eCQMs and with the CDS for Chronic Pain Management IG, read at the commits pinned in
build_snomed.SOURCES:

- glucocorticoid_medication: "Glucocorticoids (oral only)" (systemic by route: oral products only);
- muscle_relaxant_medication: "Potentially Harmful Skeletal Muscle Relaxants for Older Adults" and the
  single-ingredient value sets of the older eCQM content (cyclobenzaprine, methocarbamol, carisoprodol,
  chlorzoxazone, metaxalone, orphenadrine);
- nsaid_medication: "Potentially Harmful Pain Medications for Older Adults" (its indomethacin and ketorolac
  products), the ketorolac and indomethacin value sets, and every product of any eCQM medication value set
  whose name contains an NSAID ingredient of valuesets.json (combination products included);
- both, by ingredient (``BY_INGREDIENT``): the products of "Non opioid pain medications" (VSAC
  2.16.840.1.113762.1.4.1021.73, generic SCDs) that contain an NSAID or muscle relaxant ingredient of
  valuesets.json, eye drops left out: the plain ibuprofen, naproxen, diclofenac, meloxicam, celecoxib
  ... tablets, capsules, suspensions, gels and patches.

The ingredient is read from the RxNorm name, as RxNorm writes it: "prednisone 10 MG Oral Tablet" ->
prednisone; "aspirin 325 MG / carisoprodol 200 MG Oral Tablet" -> aspirin, carisoprodol; packs
("{21 (prednisone 10 MG Oral Tablet) } Pack") by the drug inside; a salt ("cyclobenzaprine hydrochloride")
belongs to its base ingredient when valuesets.json lists that base. An ingredient valuesets.json lists gets
its rxcui; any other keeps its name only. A product belongs to the concept of the list it came from and to
every concept that lists one of its ingredients.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from build_snomed import SOURCES
from build_snomed import Checkouts
from build_snomed import vsac
from common import TERMINOLOGY
from common import VALUESETS
from common import read_json
from common import write_json

from service.facts.codes import RXNORM_FILE

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# (source key, value set OID, concept its products belong to, ingredient filter on the name or None)
LISTS: tuple[tuple[str, str, str, str | None], ...] = (
    ("ecqm", "2.16.840.1.113883.3.464.1003.196.12.1266", "glucocorticoid_medication", None),
    ("ecqm", "2.16.840.1.113883.3.464.1003.1062", "muscle_relaxant_medication", None),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1372", "muscle_relaxant_medication", None),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1370", "muscle_relaxant_medication", None),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1369", "muscle_relaxant_medication", None),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1362", "muscle_relaxant_medication", None),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1358", "muscle_relaxant_medication", None),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1302", "muscle_relaxant_medication", None),
    ("ecqm", "2.16.840.1.113883.3.464.1003.1063", "nsaid_medication", r"indomethacin|ketorolac"),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1364", "nsaid_medication", None),
    ("ecqm-r4", "2.16.840.1.113883.3.464.1003.196.12.1366", "nsaid_medication", None),
)
CONSERVATIVE_PARTS = frozenset({"nsaid_medication", "muscle_relaxant_medication"})
POOL_CONCEPTS = frozenset({"nsaid_medication"})   # products of any eCQM medication list with one of its ingredients
# Lists whose products are taken by ingredient: (source key, path, the concepts one of a product's ingredients
# must belong to, regular expression on the RxNorm name of products left out, the filter in words).
BY_INGREDIENT: tuple[tuple[str, str, frozenset[str], str | None, str], ...] = (
    ("cds4cpm", "input/vocabulary/valueset/valueset-2.16.840.1.113762.1.4.1021.73.json", CONSERVATIVE_PARTS,
     r"Ophthalmic|Irrigation",
     "its products with an NSAID or skeletal muscle relaxant ingredient of valuesets.json; not eye drops (Ophthalmic)"),
)


def curated_ingredients() -> dict[str, tuple[str, set[str]]]:
    """valuesets.json's RxNorm ingredients: name -> (rxcui, concepts that list it)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for name, concept in read_json(VALUESETS)["concepts"].items():
        for entry in concept["include"]:
            if entry["system"] == "rxnorm":
                rxcui, ingredient = entry["code"].strip(), entry["display"].strip().lower()
                out.setdefault(ingredient, (rxcui, set()))[1].add(name)
    return out


def ingredients_of(name: str, known: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Ingredient names of an RxNorm product name (salts folded into a listed base ingredient)."""
    inner = re.sub(r"^\{\s*\d+\s*\((.*)\)\s*\}\s*Pack.*$", r"\1", name.strip())       # a pack of one drug
    inner = re.sub(r"\s*\[[^\]]*\]\s*$", "", inner)                                     # [Brand]
    inner = re.sub(r"^(\d+\s*(HR|ML|ACTUAT)|(Once|Twice)-Daily)\s+", "", inner, flags=re.I)  # "24 HR", "1 ML", "Once-Daily"
    out: list[str] = []
    for part in inner.split(" / "):
        words = []
        for word in part.split():
            if re.match(r"^[\d.]+$", word):
                break
            words.append(word.lower())
        component = " ".join(words)
        base = next((k for k in known if component == k or component.startswith(k + " ")), component)
        if base and base not in out:
            out.append(base)
    return out


def main() -> None:
    """Read the lists, map each product to its ingredients and concepts, write rxnorm.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=[], metavar="OWNER/NAME=PATH")
    args = parser.parse_args()
    checkouts = Checkouts({r: Path(p) for r, _, p in (c.partition("=") for c in args.checkout)})
    known = curated_ingredients()
    sources: dict[str, dict[str, str]] = {}
    products: dict[str, dict] = {}

    def add(key: str, path: str, concept: str | None, only: str | None,
            pool: frozenset[str] = frozenset(), drop: str | None = None, why: str = "") -> None:
        doc = json.loads(checkouts.read(key, path))
        if doc.get("resourceType") != "ValueSet":
            return
        rows = [c for c in doc.get("expansion", {}).get("contains", []) if c.get("system") == RXNORM]
        if not rows:
            return
        sid = doc["id"].split("-")[0]
        taken = 0
        for row in rows:
            code, name = row["code"], row.get("display", "")
            ings = ingredients_of(name, known)
            if (only and not re.search(only, name, re.I)) or (drop and re.search(drop, name, re.I)):
                continue
            by_ingredient = set().union(*(known[i][1] for i in ings if i in known)) if ings else set()
            concepts = ({concept} if concept else set()) | {c for c in by_ingredient if c.endswith("_medication")}
            if concepts & CONSERVATIVE_PARTS:
                concepts.add("conservative_medication")  # the union of NSAIDs and muscle relaxants
            if pool and not pool & by_ingredient:
                continue
            if code in products:
                products[code]["concepts"] = sorted(set(products[code]["concepts"]) | concepts)
                continue
            products[code] = {
                "name": name,
                "tty": "BPCK/GPCK" if name.startswith("{") else ("SBD" if name.rstrip().endswith("]") else "SCD"),
                "ingredients": ings,
                "rxcuis": [known[i][0] for i in ings if i in known],
                "concepts": sorted(concepts),
                "source": sid,
            }
            taken += 1
        if taken and sid not in sources:
            versions = sorted({row.get("version", "") for row in rows} - {""})
            source = SOURCES[key]
            sources[sid] = {
                "title": str(doc.get("title") or doc.get("name")),
                "reference": f"{doc.get('url')} ({source.repo}@{source.commit[:7]} {path})",
                "release": f"value set version {doc.get('version', '?')}, expansion {doc['expansion'].get('timestamp', '?')[:10]}, RxNorm {', '.join(versions) or '?'}",
            }
            if why:
                sources[sid]["filter"] = why
        print(f"  {taken:4} products from {doc.get('title')!r} ({key})")

    for key, oid, concept, only in LISTS:
        add(key, vsac(oid), concept, only)
    for key in ("ecqm", "ecqm-r4"):
        for path in checkouts.value_set_paths(key):
            add(key, path, None, None, pool=POOL_CONCEPTS)
    for key, path, pool, drop, why in BY_INGREDIENT:
        add(key, path, None, None, pool=pool, drop=drop, why=why)
    TERMINOLOGY.mkdir(exist_ok=True)
    write_json(TERMINOLOGY / RXNORM_FILE, {
        "version": 1,
        "built_by": "tools/valuesets/build_rxnorm.py",
        "sources": dict(sorted(sources.items())),
        "ingredients": {rxcui: name for name, (rxcui, _) in sorted(known.items())},
        "products": dict(sorted(products.items(), key=lambda kv: int(kv[0]))),
    })
    by_concept: dict[str, int] = {}
    for product in products.values():
        for c in product["concepts"]:
            by_concept[c] = by_concept.get(c, 0) + 1
    print(f"{len(products)} products: {by_concept}")


if __name__ == "__main__":
    main()

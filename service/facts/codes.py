"""The project's value sets (valuesets.json and the derived code lists beside it) and a fast matcher.

Matching rules (decision-rules.md, "Common rules for every fact" and "how codes are matched"):

- Prefix systems, ICD-10 (both ``http://hl7.org/fhir/sid/icd-10-cm`` and ``http://hl7.org/fhir/sid/icd-10``)
  and ATC (``http://www.whocc.no/atc``): the code is upper-cased, stripped and its dot removed, then
  compared by prefix (``M54.50`` = ``M5450`` = ``m54.50``; ATC ``M01AE01`` is in ``M01A``). ``range``
  entries (``C00``-``C96``) are inclusive on the first ``len(code)`` characters and are expanded to
  prefixes when the file is loaded. An ``exclude`` entry wins over an ``include`` of the same concept,
  whatever their lengths (``Z85`` minus ``Z85.82``).
- Every other system: exact code match after stripping surrounding whitespace.
- SNOMED CT by hierarchy: ``terminology/snomed.json`` holds, per concept, published expansions (the
  named concepts and their descendants), each list with its source and release; their codes join the
  concept's includes. ``exclude`` entries of valuesets.json still win.
- RxNorm by ingredient: ``terminology/rxnorm.json`` maps product codes (SCD/SBD) to their ingredients;
  a product belongs to every concept that lists one of its ingredients (or, for a product whose
  ingredient the concept does not list, to none).
- An unknown system or code, ``None``, or a non-string gives the empty set, never an error.

``terminology/icd10cm.json`` is the part of the ICD-10-CM code tree the value sets cover, with the
official displays: ``display()`` reads it. Every file in ``terminology/`` is built by a script in
``tools/valuesets/`` (its README names sources and releases). All lookups are precomputed at load
time, so ``concepts()`` is a handful of dict probes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any
from typing import Final

import orjson

DEFAULT_PATH: Final[Path] = Path(__file__).with_name("valuesets.json")
TERMINOLOGY_DIR: Final[str] = "terminology"  # beside valuesets.json
ICD10CM_FILE: Final[str] = "icd10cm.json"
SNOMED_FILE: Final[str] = "snomed.json"
RXNORM_FILE: Final[str] = "rxnorm.json"

ICD10: Final[str] = "icd10"  # aliases whose codes are dot-stripped, upper-cased and prefix-matched
ATC: Final[str] = "atc"
PREFIX_ALIASES: Final[frozenset[str]] = frozenset({ICD10, ATC})
SNOMED: Final[str] = "snomed"
RXNORM: Final[str] = "rxnorm"
MATCH_KINDS: Final[frozenset[str]] = frozenset({"exact", "prefix", "range"})
CONTRAST_KINDS: Final[frozenset[str]] = frozenset({"without", "with", "without-with", "unknown"})
CONTRAST_CONCEPT: Final[str] = "order_mri_lumbar"  # every include entry of this concept names its contrast
ENTRY_KEYS: Final[frozenset[str]] = frozenset({"system", "code", "to", "match", "display", "source", "contrast", "note"})
CONCEPT_KEYS: Final[frozenset[str]] = frozenset({"description", "rule_source", "include", "exclude"})

# Concepts the service reads; a test holds the shipped file to this list.
REQUIRED_CONCEPTS: Final[tuple[str, ...]] = (
    "order_mri_lumbar", "order_ct_lumbar", "order_xray_lumbar", "low_back_pain", "radiculopathy_stenosis",
    "cauda_equina", "motor_deficit", "malignancy", "spinal_infection", "fever", "body_temperature",
    "iv_drug_use", "recent_infection", "immunosuppression", "weight_loss",
    "ankylosing_spondylitis", "osteoporosis", "long_term_steroids", "glucocorticoid_medication",
    "vertebral_fracture", "trauma", "high_energy_mechanism", "prior_lumbar_surgery", "fusion_status",
    "lumbar_body_site", "physical_therapy", "nsaid_medication", "muscle_relaxant_medication",
    "conservative_medication", "pregnancy", "pregnancy_status_observation", "pregnant_value",
)

_ICD_ALPHABET: Final[str] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # ASCII order = lexical order of codes
_ICD_CODE: Final[re.Pattern[str]] = re.compile(r"[A-Z][0-9A-Z]*")
_MAX_RANGE_KEYS: Final[int] = 50_000
_EMPTY: Final[frozenset[str]] = frozenset()


# SNOMED CT identifiers end in a Verhoeff check digit (SNOMED CT Technical Implementation Guide, 6.7).
_VERHOEFF_D: Final[tuple[tuple[int, ...], ...]] = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P: Final[tuple[tuple[int, ...], ...]] = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def snomed_check_digit_ok(code: str) -> bool:
    """Whether a SNOMED CT identifier is all digits and its last digit is the Verhoeff check digit."""
    if not code.isdigit() or len(code) < 6:
        return False
    check = 0
    for i, ch in enumerate(reversed(code)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(ch)]]
    return check == 0


def normalize_icd10(code: str) -> str:
    """ICD-10 (or ATC) code as compared: upper-case, no dot, no surrounding whitespace."""
    return code.strip().replace(".", "").upper()


@dataclass(frozen=True, slots=True)
class ListSource:
    """One code list behind a concept: what it is, where it comes from, which release."""

    system: str    # canonical system URL
    title: str     # a published value set's title, or the project's curated list
    reference: str  # URL or OID of the published list; the entries' sources for the curated one
    release: str   # value set version / expansion / code-system release
    codes: int     # codes (or entries, for prefix lists) this list contributes
    filter: str = ""  # how a published list was cut down to the fact (derived SNOMED CT lists), else ""


@dataclass(frozen=True, slots=True)
class ConceptSummary:
    """What a concept reads, for a clinical reviewer (``lumbar-mri-cds rules``)."""

    name: str
    description: str
    codes: Mapping[str, int]        # canonical system URL -> codes matched (ICD-10-CM: codes of the shipped tree covered; ATC: groups)
    sources: tuple[ListSource, ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    """One validated include/exclude entry."""

    concept: str
    alias: str
    code: str          # normalized: prefix systems without dot and upper-cased; others stripped
    to: str | None     # normalized upper bound of a range
    match: str
    contrast: str | None


class _PrefixIndex:
    """Prefix and exact keys of one prefix alias (ICD-10 or ATC), each with its resolved concepts."""

    __slots__ = ("_full", "_head", "_min")

    def __init__(self, p_inc: dict[str, set[str]], p_exc: dict[str, set[str]], x_inc: dict[str, set[str]],
                 x_exc: dict[str, set[str]], intern: Any) -> None:
        def gather(table: dict[str, set[str]], code: str) -> set[str]:
            out: set[str] = set()
            for n in range(1, len(code) + 1):
                out |= table.get(code[:n], set())
            return out

        # Longest-prefix table: the value at a key already accounts for every shorter key.
        prefix = {key: intern(gather(p_inc, key) - gather(p_exc, key)) for key in set(p_inc) | set(p_exc)}
        # Exact keys (match "exact") see prefix entries too; their own entries apply to them alone.
        self._full: dict[str, frozenset[str]] = {
            key: intern((gather(p_inc, key) | x_inc.get(key, set())) - (gather(p_exc, key) | x_exc.get(key, set())))
            for key in set(x_inc) | set(x_exc)
        }
        # Prefix keys grouped by their first _min characters (the shortest key length): a code whose
        # head is not there matches nothing, which is the common case and costs one probe.
        self._min: int = min((len(k) for k in prefix), default=1)
        longer_by_head: dict[str, dict[str, frozenset[str]]] = {}
        for key, value in prefix.items():
            if len(key) > self._min:
                longer_by_head.setdefault(key[: self._min], {})[key] = value
        heads: dict[str, tuple[frozenset[str] | None, dict[str, frozenset[str]] | None, tuple[int, ...]]] = {}
        for head in {k[: self._min] for k in prefix}:
            longer = longer_by_head.get(head)
            lengths = tuple(sorted({len(k) for k in longer}, reverse=True)) if longer else ()
            heads[head] = (prefix.get(head), longer, lengths)
        self._head = heads

    def lookup(self, key: str) -> frozenset[str]:
        """Concepts of a normalized code."""
        if self._full:
            hit = self._full.get(key)
            if hit is not None:
                return hit
        node = self._head.get(key[: self._min])
        if node is None:
            return _EMPTY
        base, longer, lengths = node
        if longer is not None:
            size = len(key)
            for n in lengths:
                if n <= size:
                    hit = longer.get(key[:n])
                    if hit is not None:
                        return hit
        return _EMPTY if base is None or len(key) < self._min else base


@dataclass(frozen=True, slots=True)
class _Product:
    """An RxNorm product (SCD/SBD/pack) of rxnorm.json."""

    name: str
    rxcuis: tuple[str, ...]        # rxcuis of those ingredients valuesets.json lists (may be empty)
    concepts: tuple[str, ...]      # concepts of the published list it came from
    source: str                    # source id in rxnorm.json "sources"


@dataclass(frozen=True, slots=True)
class _Terminology:
    """The derived code lists (terminology/*.json), validated; empty when a file is absent."""

    icd10cm: Mapping[str, str]                                  # normalized code -> official display
    icd10cm_source: ListSource | None
    snomed: tuple[tuple[str, ListSource, Mapping[str, str]], ...]  # (concept, source, code -> display)
    ingredients: Mapping[str, str]                              # RxNorm ingredient rxcui -> name
    products: Mapping[str, _Product]                            # product rxcui -> its ingredients, concepts, source
    rx_sources: Mapping[str, ListSource]                        # source id -> source


class ValueSets:
    """The project's value sets: concept lookups by (system, code), displays, ingredients; precomputed at load."""

    __slots__ = (
        "_codings", "_concepts", "_contrast", "_display", "_exact", "_ingredient", "_names", "_prefix",
        "_sources", "_systems", "_trees",
    )

    def __init__(self, data: Mapping[str, Any], origin: str = "valuesets", terminology: _Terminology | None = None) -> None:
        """Validate the parsed JSON document (and the derived lists) and build the lookup tables."""
        systems, entries, names = _validate(data, origin)
        term = terminology if terminology is not None else _empty_terminology()
        canonical = {alias: urls[0] for alias, urls in systems.items()}
        self._systems: dict[str, str] = canonical
        self._names: tuple[str, ...] = names
        self._concepts: dict[str, Mapping[str, Any]] = dict(data["concepts"])
        entries = entries + _derived_entries(term, entries, systems, set(names), origin)
        interned: dict[frozenset[str], frozenset[str]] = {}

        def intern(s: set[str] | frozenset[str]) -> frozenset[str]:
            f = frozenset(s)
            return interned.setdefault(f, f)

        inc: dict[tuple[str, str], set[str]] = {}
        exc: dict[tuple[str, str], set[str]] = {}
        contrast: dict[tuple[str, str], str] = {}
        codings: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
        keyed: dict[str, tuple[dict[str, set[str]], ...]] = {a: ({}, {}, {}, {}) for a in PREFIX_ALIASES if a in systems}
        for e, is_exclude in entries:
            if e.alias in PREFIX_ALIASES:
                p_inc, p_exc, x_inc, x_exc = keyed[e.alias]
                keys = _expand_range(e.code, e.to, f"{origin}: concept {e.concept!r}") if e.to else (e.code,)
                target = (x_exc if is_exclude else x_inc) if e.match == "exact" else (p_exc if is_exclude else p_inc)
                for key in keys:
                    target.setdefault(key, set()).add(e.concept)
                continue
            (exc if is_exclude else inc).setdefault((e.alias, e.code), set()).add(e.concept)
            if not is_exclude:
                codings[e.concept].append((canonical[e.alias], e.code))
                if e.contrast is not None:
                    contrast[(e.alias, e.code)] = e.contrast

        exact: dict[str, dict[str, frozenset[str]]] = {}
        contrast_by_url: dict[str, dict[str, str]] = {}
        for (alias, code), concepts in inc.items():
            resolved = intern(concepts - exc.get((alias, code), set()))
            for url in systems[alias]:
                exact.setdefault(url, {})[code] = resolved
                if (alias, code) in contrast:
                    contrast_by_url.setdefault(url, {})[code] = contrast[(alias, code)]
        self._exact: dict[str, dict[str, frozenset[str]]] = exact
        self._contrast: dict[str, dict[str, str]] = contrast_by_url
        self._codings: dict[str, tuple[tuple[str, str], ...]] = {n: tuple(dict.fromkeys(c)) for n, c in codings.items()}
        self._prefix: dict[str, _PrefixIndex] = {}
        for alias, tables in keyed.items():
            index = _PrefixIndex(*tables, intern=intern)
            for url in systems[alias]:
                self._prefix[url] = index
        self._trees: dict[str, Mapping[str, str]] = {ICD10: term.icd10cm, ATC: {}}  # no ATC tree: groups counted
        self._display: dict[str, dict[str, str]] = _displays(data, term, systems)
        self._ingredient: dict[str, dict[str, tuple[str, str]]] = _ingredients(data, term, systems)
        self._sources: dict[str, list[ListSource]] = _sources(data, term, canonical, self._codings)

    @classmethod
    def load(cls, path: Path | None = None) -> ValueSets:
        """Read and validate valuesets.json (default: the file beside this module) and terminology/ beside it."""
        source = DEFAULT_PATH if path is None else Path(path)
        with source.open("rb") as fh:
            data = json.load(fh, object_pairs_hook=_no_duplicate_keys)
        return cls(data, origin=source.name, terminology=_load_terminology(source.with_name(TERMINOLOGY_DIR)))

    def concepts(self, system: str | None, code: str | None) -> frozenset[str]:
        """Every concept this coding belongs to; unknown or malformed input gives the empty set."""
        if type(system) is not str or type(code) is not str:
            return _EMPTY
        table = self._exact.get(system)
        if table is not None:
            return table.get(code) or table.get(code.strip(), _EMPTY)
        index = self._prefix.get(system)
        if index is None:
            return _EMPTY
        return index.lookup(code.strip().replace(".", "").upper())

    def contrast(self, system: str | None, code: str | None) -> str | None:
        """Contrast of a lumbar MRI order code ("without", "with", "without-with", "unknown"), else None."""
        if type(system) is not str or type(code) is not str:
            return None
        table = self._contrast.get(system)
        return None if table is None else table.get(code.strip())

    def codings(self, concept: str) -> tuple[tuple[str, str], ...]:
        """(canonical system URL, code) of the concept's exact-match codes, derived lists included; KeyError if unknown."""
        return self._codings[concept]

    def display(self, system: str | None, code: str | None) -> str | None:
        """Display of a code: the official ICD-10-CM title from the code tree, else the lists' display; None if unknown."""
        if type(system) is not str or type(code) is not str:
            return None
        table = self._display.get(system)
        if table is None:
            return None
        key = normalize_icd10(code) if system in self._prefix else code.strip()
        return table.get(key)

    def ingredient(self, system: str | None, code: str | None) -> tuple[str, str] | None:
        """(RxNorm ingredient rxcui, name) of an RxNorm product or ingredient code; None when unknown.

        A product maps to its first ingredient that valuesets.json lists (a product of other ingredients
        only, e.g. metaxalone, has no rxcui here: None). An ATC code gives (code, name) with the name of
        the code, or of its nearest listed group (H02AB06 -> the name of H02AB).
        """
        if type(system) is not str or type(code) is not str:
            return None
        table = self._ingredient.get(system)
        if table is None:
            return None
        if system not in self._prefix:
            return table.get(code.strip())
        key = normalize_icd10(code)  # ATC: the code's own name, else that of its nearest listed group
        for n in range(len(key), 0, -1):
            hit = table.get(key[:n])
            if hit is not None:
                return hit if n == len(key) else (key, hit[1])
        return None

    def describe(self) -> list[ConceptSummary]:
        """Per concept, in file order: description, codes per system, and the lists with their sources and releases."""
        counts: dict[str, dict[str, int]] = {n: {} for n in self._names}
        for concept, codings in self._codings.items():
            for url, _ in codings:
                counts[concept][url] = counts[concept].get(url, 0) + 1
        for alias, tree in self._trees.items():
            if alias not in self._systems:
                continue
            url = self._systems[alias]
            if not tree:  # no code tree shipped (ATC): count the entries (groups) instead
                for concept, sources in self._sources.items():
                    for source in sources:
                        if source.system == url:
                            counts[concept][url] = counts[concept].get(url, 0) + source.codes
                continue
            index = self._prefix[url]
            for code in tree:
                for concept in index.lookup(code):
                    counts[concept][url] = counts[concept].get(url, 0) + 1
        return [
            ConceptSummary(
                name=n,
                description=str(self._concepts[n].get("description", "")),
                codes=counts[n],
                sources=tuple(self._sources.get(n, ())),
            )
            for n in self._names
        ]

    @property
    def names(self) -> tuple[str, ...]:
        """Concept names in file order."""
        return self._names


@functools.lru_cache(maxsize=1)
def default_valuesets() -> ValueSets:
    """The shipped value sets, loaded once per process."""
    return ValueSets.load()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook that rejects a key given twice (a silently shadowed concept or entry)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in value sets file")
        out[key] = value
    return out


_Validated = tuple[dict[str, tuple[str, ...]], list[tuple[_Entry, bool]], tuple[str, ...]]


def _validate(data: Mapping[str, Any], origin: str) -> _Validated:
    """Check the document's shape; return systems, (entry, is_exclude) pairs and concept names."""
    if not isinstance(data, Mapping) or data.get("version") != 1:
        raise ValueError(f"{origin}: expected an object with \"version\": 1")
    raw_systems = data.get("systems")
    if not isinstance(raw_systems, Mapping) or not raw_systems:
        raise ValueError(f"{origin}: \"systems\" must map aliases to lists of system URLs")
    systems: dict[str, tuple[str, ...]] = {}
    seen_urls: dict[str, str] = {}
    for alias, urls in raw_systems.items():
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError(f"{origin}: system alias {alias!r} must list at least one URL")
        for url in urls:
            if url in seen_urls:
                raise ValueError(f"{origin}: system URL {url!r} belongs to both {seen_urls[url]!r} and {alias!r}")
            seen_urls[url] = alias
        systems[alias] = tuple(urls)
    concepts = data.get("concepts")
    if not isinstance(concepts, Mapping) or not concepts:
        raise ValueError(f"{origin}: \"concepts\" must be a non-empty object")
    entries: list[tuple[_Entry, bool]] = []
    for name, concept in concepts.items():
        where = f"{origin}: concept {name!r}"
        if not isinstance(concept, Mapping):
            raise ValueError(f"{where}: must be an object")
        unknown = set(concept) - CONCEPT_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        include = concept.get("include")
        exclude = concept.get("exclude", [])
        if not isinstance(include, list) or not include:
            raise ValueError(f"{where}: \"include\" must be a non-empty list")
        if not isinstance(exclude, list):
            raise ValueError(f"{where}: \"exclude\" must be a list")
        for part, items in (("include", include), ("exclude", exclude)):
            for i, raw in enumerate(items):
                entries.append((_entry(name, f"{where} {part}[{i}]", raw, systems, part == "include"), part == "exclude"))
    return systems, entries, tuple(concepts)


def _entry(concept: str, where: str, raw: Any, systems: Mapping[str, tuple[str, ...]], is_include: bool) -> _Entry:
    """Validate one include/exclude entry."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be an object")
    alias, code = raw.get("system"), raw.get("code")
    where = f"{where} ({alias} {code})"
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(alias, str) or alias not in systems:
        raise ValueError(f"{where}: unknown system alias {alias!r}")
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"{where}: missing code")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{where}: missing source")
    display = raw.get("display")
    if display is not None and not isinstance(display, str):
        raise ValueError(f"{where}: display must be a string")
    prefixed = alias in PREFIX_ALIASES
    match = raw.get("match", "prefix" if prefixed else "exact")
    if match not in MATCH_KINDS:
        raise ValueError(f"{where}: unknown match kind {match!r}")
    if match != "exact" and not prefixed:
        raise ValueError(f"{where}: match {match!r} is only for ICD-10 and ATC; use \"exact\"")
    to = raw.get("to")
    if prefixed:
        code = normalize_icd10(code)
        if not _ICD_CODE.fullmatch(code):
            raise ValueError(f"{where}: not an {alias.upper()} code")
    else:
        code = code.strip()
    if match == "range":
        if not isinstance(to, str) or not _ICD_CODE.fullmatch(normalize_icd10(to)):
            raise ValueError(f"{where}: range needs an upper bound code in \"to\"")
        to = normalize_icd10(to)
        if len(to) != len(code) or to < code:
            raise ValueError(f"{where}: range bounds must have the same length and code <= to")
    elif to is not None:
        raise ValueError(f"{where}: \"to\" is only for match \"range\"")
    contrast = raw.get("contrast")
    if contrast is not None:
        if contrast not in CONTRAST_KINDS:
            raise ValueError(f"{where}: unknown contrast {contrast!r}")
        if match != "exact" or not is_include:
            raise ValueError(f"{where}: contrast only on exact include entries")
    elif concept == CONTRAST_CONCEPT and is_include:
        raise ValueError(f"{where}: every {CONTRAST_CONCEPT} entry needs \"contrast\"")
    return _Entry(concept, alias, code, to if match == "range" else None, match, contrast)


def _expand_range(low: str, high: str, where: str) -> tuple[str, ...]:
    """All codes of length len(low) with low <= code <= high, over the ICD-10 alphabet."""
    out: list[str] = []

    def walk(prefix: str, tight_low: bool, tight_high: bool) -> Iterator[str]:
        pos = len(prefix)
        if pos == len(low):
            yield prefix
            return
        lo = low[pos] if tight_low else _ICD_ALPHABET[0]
        hi = high[pos] if tight_high else _ICD_ALPHABET[-1]
        for ch in _ICD_ALPHABET:
            if lo <= ch <= hi:
                yield from walk(prefix + ch, tight_low and ch == lo, tight_high and ch == hi)

    for key in walk("", True, True):
        out.append(key)
        if len(out) > _MAX_RANGE_KEYS:
            raise ValueError(f"{where}: range {low}-{high} is too wide to expand; split it")
    return tuple(out)


# --- the derived lists (terminology/*.json) ----------------------------------------------------------


def _empty_terminology() -> _Terminology:
    return _Terminology(icd10cm={}, icd10cm_source=None, snomed=(), ingredients={}, products={}, rx_sources={})


def _read_json(path: Path) -> Any:
    """A derived list (written by a build script from Python dicts, so no duplicate keys), parsed fast."""
    return orjson.loads(path.read_bytes())


def _list_source(raw: Any, system: str, where: str, codes: int) -> ListSource:
    """A list's provenance: title, reference and release are required strings."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be an object")
    values = [raw.get(k) for k in ("title", "reference", "release")]
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(f"{where}: needs \"title\", \"reference\" and \"release\"")
    return ListSource(system=system, title=values[0], reference=values[1], release=values[2], codes=codes)


def _code_map(raw: Any, where: str) -> dict[str, str]:
    """A {code: display} object with non-empty strings."""
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{where}: \"codes\" must be a non-empty object of code -> display")
    for code, display in raw.items():
        if not code.strip() or not isinstance(display, str):
            raise ValueError(f"{where}: bad code {code!r}")
    return dict(raw)


def _load_terminology(folder: Path) -> _Terminology:
    """Read icd10cm.json, snomed.json and rxnorm.json from the folder (each optional)."""
    icd: dict[str, str] = {}
    icd_source: ListSource | None = None
    path = folder / ICD10CM_FILE
    if path.is_file():
        doc = _read_json(path)
        icd = {normalize_icd10(k): v for k, v in _code_map(doc.get("codes"), path.name).items()}
        icd_source = _list_source(doc, "http://hl7.org/fhir/sid/icd-10-cm", path.name, len(icd))
    snomed: list[tuple[str, ListSource, Mapping[str, str]]] = []
    path = folder / SNOMED_FILE
    if path.is_file():
        doc = _read_json(path)
        lists = doc.get("lists")
        if not isinstance(lists, list):
            raise ValueError(f"{path.name}: \"lists\" must be a list")
        for i, raw in enumerate(lists):
            where = f"{path.name}: lists[{i}] ({raw.get('concept') if isinstance(raw, Mapping) else raw})"
            codes = _code_map(raw.get("codes") if isinstance(raw, Mapping) else None, where)
            bad = [c for c in codes if not snomed_check_digit_ok(c)]
            if bad:
                raise ValueError(f"{where}: not SNOMED CT identifiers (check digit): {bad[:5]}")
            source = _list_source(raw, "http://snomed.info/sct", where, len(codes))
            filtered = replace(source, filter=str(raw.get("filter") or ""))
            snomed.append((str(raw.get("concept")), filtered, codes))
    rx = _load_rxnorm(folder / RXNORM_FILE)
    return _Terminology(icd10cm=icd, icd10cm_source=icd_source, snomed=tuple(snomed), **rx)


def _load_rxnorm(path: Path) -> dict[str, Any]:
    """Ingredients, products (with their ingredients and source) and the sources."""
    if not path.is_file():
        return {"ingredients": {}, "products": {}, "rx_sources": {}}
    doc = _read_json(path)
    sources_raw = doc.get("sources")
    if not isinstance(sources_raw, Mapping) or not sources_raw:
        raise ValueError(f"{path.name}: \"sources\" must map source ids to their provenance")
    ingredients = _code_map(doc.get("ingredients"), f"{path.name}: ingredients")
    products: dict[str, _Product] = {}
    for code, raw in (doc.get("products") or {}).items():
        where = f"{path.name}: product {code!r}"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise ValueError(f"{where}: needs a name")
        names, rxcuis, concepts = (raw.get(k) for k in ("ingredients", "rxcuis", "concepts"))
        if not all(isinstance(x, list) and all(isinstance(i, str) for i in x) for x in (names, rxcuis, concepts)) or not names:
            raise ValueError(f"{where}: needs lists \"ingredients\" (non-empty), \"rxcuis\" and \"concepts\"")
        if any(i not in ingredients for i in rxcuis):
            raise ValueError(f"{where}: every rxcui must be listed under \"ingredients\"")
        if raw.get("source") not in sources_raw:
            raise ValueError(f"{where}: unknown source {raw.get('source')!r}")
        products[code] = _Product(raw["name"], tuple(rxcuis), tuple(concepts), raw["source"])
    rx_sources = {  # a list taken by ingredient says so in its "filter"
        sid: replace(_list_source(raw, "http://www.nlm.nih.gov/research/umls/rxnorm", f"{path.name}: source {sid!r}", 0),
                     filter=str(raw.get("filter") or ""))
        for sid, raw in sources_raw.items()
    }
    return {"ingredients": ingredients, "products": products, "rx_sources": rx_sources}


def _derived_entries(
    term: _Terminology, entries: list[tuple[_Entry, bool]], systems: Mapping[str, Any], names: set[str], origin: str
) -> list[tuple[_Entry, bool]]:
    """Include entries for the SNOMED CT expansions and for RxNorm products of listed ingredients."""
    out: list[tuple[_Entry, bool]] = []
    for concept, source, codes in term.snomed:
        if concept not in names:
            raise ValueError(f"{SNOMED_FILE}: list {source.title!r} names unknown concept {concept!r}")
        if SNOMED not in systems:
            raise ValueError(f"{origin}: no \"{SNOMED}\" system alias for {SNOMED_FILE}")
        out.extend((_Entry(concept, SNOMED, code, None, "exact", None), False) for code in codes)
    if term.products:
        by_ingredient: dict[str, set[str]] = {}
        for e, is_exclude in entries:
            if e.alias == RXNORM and not is_exclude:
                by_ingredient.setdefault(e.code, set()).add(e.concept)
        for code, product in term.products.items():
            unknown = set(product.concepts) - names
            if unknown:
                raise ValueError(f"{RXNORM_FILE}: product {code!r} names unknown concepts {sorted(unknown)}")
            by_rxcui = set().union(*(by_ingredient.get(i, set()) for i in product.rxcuis))
            for concept in sorted(set(product.concepts) | by_rxcui):
                out.append((_Entry(concept, RXNORM, code, None, "exact", None), False))
    return out


def _displays(data: Mapping[str, Any], term: _Terminology, systems: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """Display tables by system URL: the curated entries' displays, overlaid by the derived lists'."""
    by_alias: dict[str, dict[str, str]] = {alias: {} for alias in systems}
    for concept in data["concepts"].values():
        for raw in concept["include"] + concept.get("exclude", []):
            display = raw.get("display")
            if isinstance(display, str) and display.strip():
                code = normalize_icd10(raw["code"]) if raw["system"] in PREFIX_ALIASES else raw["code"].strip()
                by_alias[raw["system"]].setdefault(code, display)
    official = {
        ICD10: term.icd10cm,
        SNOMED: {c: d for _, _, codes in term.snomed for c, d in codes.items()},
        RXNORM: {**term.ingredients, **{c: p.name for c, p in term.products.items()}},
    }
    out: dict[str, dict[str, str]] = {}
    for alias, urls in systems.items():
        table = {**by_alias.get(alias, {}), **official.get(alias, {})}
        for url in urls:
            out[url] = table
    return out


def _ingredients(
    data: Mapping[str, Any], term: _Terminology, systems: Mapping[str, tuple[str, ...]]
) -> dict[str, dict[str, tuple[str, str]]]:
    """RxNorm product/ingredient -> (ingredient rxcui, name); ATC code -> (code, name), by system URL.

    The curated RxNorm and ATC entries of valuesets.json are ingredients (or ATC groups) named by their
    display; rxnorm.json adds the products, each mapped to its first ingredient.
    """
    rx: dict[str, tuple[str, str]] = {}
    atc: dict[str, tuple[str, str]] = {}
    for concept in data["concepts"].values():
        for raw in concept["include"]:
            if raw["system"] in (RXNORM, ATC) and isinstance(raw.get("display"), str):
                code = raw["code"].strip() if raw["system"] == RXNORM else normalize_icd10(raw["code"])
                (rx if raw["system"] == RXNORM else atc)[code] = (code, raw["display"])
    rx.update({code: (code, name) for code, name in term.ingredients.items()})
    for code, product in term.products.items():
        if product.rxcuis:  # the first ingredient the lists know; a product of unlisted ingredients has none
            rx[code] = (product.rxcuis[0], term.ingredients[product.rxcuis[0]])
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for alias, table in ((RXNORM, rx), (ATC, atc)):
        for url in systems.get(alias, ()):
            out[url] = table
    return out


def _sources(
    data: Mapping[str, Any], term: _Terminology, canonical: Mapping[str, str], codings: Mapping[str, tuple[tuple[str, str], ...]]
) -> dict[str, list[ListSource]]:
    """Per concept: the curated list per system, then each derived list, with source and release."""
    out: dict[str, list[ListSource]] = {}
    for name, concept in data["concepts"].items():
        per_system: dict[str, list[str]] = {}
        for raw in concept["include"]:
            per_system.setdefault(raw["system"], []).append(raw["source"])
        for alias, refs in per_system.items():
            release = "curated (each entry names its source)"
            if alias == ICD10 and term.icd10cm_source is not None:
                release = f"checked against {term.icd10cm_source.release}"
            out.setdefault(name, []).append(ListSource(
                system=canonical[alias], title="project value set (valuesets.json)",
                reference="; ".join(dict.fromkeys(refs)), release=release, codes=len(refs),
            ))
    for concept, source, _ in term.snomed:
        out.setdefault(concept, []).append(source)
    product_sources: dict[str, dict[str, int]] = {}
    products = term.products
    for name, pairs in codings.items():
        for url, code in pairs:
            if code in products and url == canonical.get(RXNORM):
                sid = products[code].source
                product_sources.setdefault(name, {})[sid] = product_sources.get(name, {}).get(sid, 0) + 1
    for name, counts in product_sources.items():
        for sid, n in counts.items():
            s = term.rx_sources[sid]
            out.setdefault(name, []).append(replace(s, codes=n))
    return out

"""The project's curated value sets (valuesets.json) and a fast matcher from a coding to its concepts.

Matching rules (decision-rules.md, "Common rules for every fact"):

- ICD-10 (both ``http://hl7.org/fhir/sid/icd-10-cm`` and ``http://hl7.org/fhir/sid/icd-10``): the code
  is upper-cased, stripped and its dot removed, then compared by prefix (``M54.50`` = ``M5450`` =
  ``m54.50``). ``range`` entries (``C00``-``C96``) are inclusive on the first ``len(code)``
  characters and are expanded to prefixes when the file is loaded. An ``exclude`` entry wins over an
  ``include`` of the same concept, whatever their lengths (``Z85`` minus ``Z85.82``).
- Every other system: exact code match after stripping surrounding whitespace.
- An unknown system or code, ``None``, or a non-string gives the empty set, never an error.

All lookups are precomputed at load time, so ``concepts()`` is a handful of dict probes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Final

DEFAULT_PATH: Final[Path] = Path(__file__).with_name("valuesets.json")

ICD10: Final[str] = "icd10"  # the system alias whose codes are dot-stripped and prefix-matched
MATCH_KINDS: Final[frozenset[str]] = frozenset({"exact", "prefix", "range"})
CONTRAST_KINDS: Final[frozenset[str]] = frozenset({"without", "with", "without-with", "unknown"})
CONTRAST_CONCEPT: Final[str] = "order_mri_lumbar"  # every include entry of this concept names its contrast
ENTRY_KEYS: Final[frozenset[str]] = frozenset({"system", "code", "to", "match", "display", "source", "contrast", "note"})
CONCEPT_KEYS: Final[frozenset[str]] = frozenset({"description", "rule_source", "include", "exclude"})

# Concepts the service reads; a test holds the shipped file to this list.
REQUIRED_CONCEPTS: Final[tuple[str, ...]] = (
    "order_mri_lumbar", "order_ct_lumbar", "order_xray_lumbar", "low_back_pain", "radiculopathy_stenosis",
    "cauda_equina", "motor_deficit", "malignancy", "spinal_infection", "fever", "body_temperature",
    "iv_drug_use", "systemic_infection", "immunosuppression", "osteoporosis", "long_term_steroids",
    "glucocorticoid_medication", "vertebral_fracture", "trauma", "prior_lumbar_surgery", "physical_therapy",
    "conservative_medication", "pregnancy", "pregnancy_status_observation", "pregnant_value",
)

_ICD_ALPHABET: Final[str] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # ASCII order = lexical order of codes
_ICD_CODE: Final[re.Pattern[str]] = re.compile(r"[A-Z][0-9A-Z]*")
_MAX_RANGE_KEYS: Final[int] = 50_000
_EMPTY: Final[frozenset[str]] = frozenset()


def normalize_icd10(code: str) -> str:
    """ICD-10 code as compared: upper-case, no dot, no surrounding whitespace."""
    return code.strip().replace(".", "").upper()


@dataclass(frozen=True, slots=True)
class _Entry:
    """One validated include/exclude entry."""

    concept: str
    alias: str
    code: str          # normalized: ICD-10 without dot and upper-cased; others stripped
    to: str | None     # normalized upper bound of a range
    match: str
    contrast: str | None


class ValueSets:
    """Curated value sets: concept lookups by (system, code), precomputed at load."""

    __slots__ = (
        "_codings", "_contrast", "_exact", "_icd_full", "_icd_head", "_icd_min", "_icd_prefix",
        "_icd_systems", "_names",
    )

    def __init__(self, data: Mapping[str, Any], origin: str = "valuesets") -> None:
        """Validate the parsed JSON document and build the lookup tables."""
        systems, entries, names = _validate(data, origin)
        canonical = {alias: urls[0] for alias, urls in systems.items()}
        self._names: tuple[str, ...] = names
        self._icd_systems: frozenset[str] = frozenset(systems.get(ICD10, ()))

        interned: dict[frozenset[str], frozenset[str]] = {}

        def intern(s: set[str] | frozenset[str]) -> frozenset[str]:
            f = frozenset(s)
            return interned.setdefault(f, f)

        # Exact codes of every non-ICD system, keyed by each URL of the alias.
        inc: dict[tuple[str, str], set[str]] = {}
        exc: dict[tuple[str, str], set[str]] = {}
        contrast: dict[tuple[str, str], str] = {}
        codings: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
        # ICD-10: prefix keys and exact keys, each with its include and exclude concepts.
        p_inc: dict[str, set[str]] = {}
        p_exc: dict[str, set[str]] = {}
        x_inc: dict[str, set[str]] = {}
        x_exc: dict[str, set[str]] = {}
        for e, is_exclude in entries:
            if e.alias == ICD10:
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
        self._codings: dict[str, tuple[tuple[str, str], ...]] = {
            n: tuple(dict.fromkeys(c)) for n, c in codings.items()
        }

        def gather(table: dict[str, set[str]], code: str) -> set[str]:
            out: set[str] = set()
            for n in range(1, len(code) + 1):
                out |= table.get(code[:n], set())
            return out

        # Longest-prefix table: the value at a key already accounts for every shorter key.
        self._icd_prefix: dict[str, frozenset[str]] = {
            key: intern(gather(p_inc, key) - gather(p_exc, key)) for key in set(p_inc) | set(p_exc)
        }
        # Exact ICD keys (match "exact") see prefix entries too; their own entries apply to them alone.
        self._icd_full: dict[str, frozenset[str]] = {
            key: intern((gather(p_inc, key) | x_inc.get(key, set())) - (gather(p_exc, key) | x_exc.get(key, set())))
            for key in set(x_inc) | set(x_exc)
        }
        # Prefix keys grouped by their first _icd_min characters (the shortest key length): a code whose
        # head is not there matches nothing, which is the common case and costs one probe.
        self._icd_min: int = min((len(k) for k in self._icd_prefix), default=1)
        # Each head keeps its base value, its longer keys and their lengths, longest first.
        heads: dict[str, tuple[frozenset[str] | None, dict[str, frozenset[str]] | None, tuple[int, ...]]] = {}
        for head in {k[: self._icd_min] for k in self._icd_prefix}:
            longer = {k: v for k, v in self._icd_prefix.items() if len(k) > self._icd_min and k.startswith(head)}
            lengths = tuple(sorted({len(k) for k in longer}, reverse=True))
            heads[head] = (self._icd_prefix.get(head), longer or None, lengths)
        self._icd_head: dict[str, tuple[frozenset[str] | None, dict[str, frozenset[str]] | None, tuple[int, ...]]] = heads

    @classmethod
    def load(cls, path: Path | None = None) -> ValueSets:
        """Read and validate valuesets.json (default: the file beside this module)."""
        source = DEFAULT_PATH if path is None else Path(path)
        with source.open("rb") as fh:
            data = json.load(fh, object_pairs_hook=_no_duplicate_keys)
        return cls(data, origin=source.name)

    def concepts(self, system: str | None, code: str | None) -> frozenset[str]:
        """Every concept this coding belongs to; unknown or malformed input gives the empty set."""
        if type(system) is not str or type(code) is not str:
            return _EMPTY
        table = self._exact.get(system)
        if table is not None:
            return table.get(code) or table.get(code.strip(), _EMPTY)
        if system not in self._icd_systems:
            return _EMPTY
        key = code.strip().replace(".", "").upper()
        if self._icd_full:
            hit = self._icd_full.get(key)
            if hit is not None:
                return hit
        node = self._icd_head.get(key[: self._icd_min])
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
        return _EMPTY if base is None or len(key) < self._icd_min else base

    def contrast(self, system: str | None, code: str | None) -> str | None:
        """Contrast of a lumbar MRI order code ("without", "with", "without-with", "unknown"), else None."""
        if type(system) is not str or type(code) is not str:
            return None
        table = self._contrast.get(system)
        return None if table is None else table.get(code.strip())

    def codings(self, concept: str) -> tuple[tuple[str, str], ...]:
        """(canonical system URL, code) of the concept's exact-match include entries; KeyError if unknown."""
        return self._codings[concept]

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
    match = raw.get("match", "prefix" if alias == ICD10 else "exact")
    if match not in MATCH_KINDS:
        raise ValueError(f"{where}: unknown match kind {match!r}")
    if match != "exact" and alias != ICD10:
        raise ValueError(f"{where}: match {match!r} is only for ICD-10; use \"exact\"")
    to = raw.get("to")
    if alias == ICD10:
        code = normalize_icd10(code)
        if not _ICD_CODE.fullmatch(code):
            raise ValueError(f"{where}: not an ICD-10 code")
    else:
        code = code.strip()
    if match == "range":
        if not isinstance(to, str) or not _ICD_CODE.fullmatch(normalize_icd10(to)):
            raise ValueError(f"{where}: range needs an ICD-10 upper bound in \"to\"")
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

"""The CDS services this deployment offers, read from ``cards/services.toml``: the one list.

Discovery, the hook and feedback routes and the CLI read it (through ``Services.catalogue`` or
``Evaluator.catalogue``); each entry says which hook it answers, which lumbar studies it reviews
(value-set concepts) and which rule table it applies. Service ids and hooks are part of the public
interface (shared/design/interface.md): EHRs are configured with them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import ConfigError
from service.facts.extract import STUDY_CONCEPTS
from service.rules.table import RULES_FILE
from service.rules.table import default_cards_dir

FILE = "services.toml"
HOOKS = ("order-select", "order-sign")  # the hooks the pipeline knows how to answer


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    id: str
    hook: str
    title: str
    description: str
    reviews: tuple[str, ...]   # value-set concepts of the draft orders it reviews
    rules: str                 # its rule table, a file of cards/


Catalogue = Mapping[str, ServiceSpec]


def load_catalogue(directory: Path | None = None) -> dict[str, ServiceSpec]:
    """Read and check cards/services.toml; ConfigError naming every problem."""
    directory = directory or default_cards_dir()
    path = directory / FILE
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    entries = raw.get("service")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: at least one [[service]] table is required")
    problems: list[str] = []
    specs = [_spec(e, n, directory, problems) for n, e in enumerate(entries)]
    if len({s.id for s in specs}) != len(specs):
        problems.append("service ids must be unique")
    if problems:
        raise ConfigError(f"{path} is invalid:\n  " + "\n  ".join(problems))
    return {s.id: s for s in specs}


def service_for(catalogue: Mapping[str, ServiceSpec], hook: Any) -> ServiceSpec | None:
    """The catalogue's service for this hook (the first one listed), if any."""
    return next((s for s in catalogue.values() if s.hook == hook), None)


def _spec(raw: Mapping[str, Any], n: int, directory: Path, problems: list[str]) -> ServiceSpec:
    where = f"service[{n}] ({raw.get('id', '?')})"
    for key in ("id", "hook", "title", "description", "rules"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            problems.append(f"{where}: {key} is required")
    if raw.get("hook") not in HOOKS:
        problems.append(f"{where}: hook must be one of {', '.join(HOOKS)}")
    reviews = raw.get("reviews")
    if not isinstance(reviews, list) or not reviews or any(c not in STUDY_CONCEPTS for c in reviews):
        problems.append(f"{where}: reviews must list concepts among {', '.join(STUDY_CONCEPTS)}")
        reviews = []
    if isinstance(raw.get("rules"), str) and not (directory / raw["rules"]).is_file():
        problems.append(f"{where}: rule table {raw['rules']!r} is not a file of {directory.name}/")
    elif isinstance(raw.get("rules"), str) and raw["rules"] != RULES_FILE:
        # One table serves every service today: naming another must not be ignored in silence.
        problems.append(f"{where}: rule table {raw['rules']!r}: every service applies {RULES_FILE} (the one rule table)")
    return ServiceSpec(id=str(raw.get("id", "")), hook=str(raw.get("hook", "")), title=str(raw.get("title", "")),
                       description=str(raw.get("description", "")), reviews=tuple(reviews), rules=str(raw.get("rules", "")))

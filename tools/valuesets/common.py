"""Helpers shared by the build scripts: where the files are, and writing JSON the same way every time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "service" / "facts"
VALUESETS = FACTS / "valuesets.json"
TERMINOLOGY = FACTS / "terminology"


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    with path.open("rb") as fh:
        return json.load(fh)


def write_json(path: Path, doc: Any) -> None:
    """Write a derived list: sorted keys where order carries no meaning, one line per code, UTF-8."""
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")

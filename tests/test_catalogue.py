"""The service catalogue (cards/services.toml) and the scope rule of issue 13: no code path names a
single study code or "lumbar MRI" outside the value sets and the card texts."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

import service
from service import catalogue
from service.errors import ConfigError
from service.rules.table import default_cards_dir

PACKAGE = Path(service.__file__).parent
STUDY_CODE = re.compile(r"\b7[0-9]{4}\b")  # CPT radiology codes (lumbar MRI, CT and radiography: 721xx)


def test_shipped_catalogue_keeps_the_service_ids_and_reviews_every_lumbar_study() -> None:
    specs = catalogue.load_catalogue()
    assert list(specs) == ["order-select", "order-sign"]  # shared/design/interface.md: ids and hooks stay
    assert [s.hook for s in specs.values()] == ["order-select", "order-sign"]
    for spec in specs.values():
        assert spec.reviews == ("order_mri_lumbar", "order_ct_lumbar", "order_xray_lumbar")
        assert spec.rules == "rules.toml"


@pytest.mark.parametrize(("change", "message"), [
    pytest.param(('reviews = ["order_mri_lumbar", "order_ct_lumbar", "order_xray_lumbar"]', 'reviews = ["order_pet"]'),
                 "reviews must list concepts", id="unknown-concept"),
    pytest.param(('hook = "order-sign"', 'hook = "patient-view"'), "hook must be one of", id="unknown-hook"),
    pytest.param(('rules = "rules.toml"', 'rules = "missing.toml"'), "rule table 'missing.toml'", id="missing-rule-table"),
    pytest.param(('id = "order-sign"', 'id = "order-select"'), "service ids must be unique", id="duplicate-id"),
    # Another file of cards/ would be read by nothing: the evaluator applies rules.toml to every service.
    pytest.param(('rules = "rules.toml"', 'rules = "ratings.toml"'), "every service applies rules.toml", id="other-rule-table"),
])
def test_a_bad_catalogue_is_refused_with_its_problem(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    cards = tmp_path / "cards"
    shutil.copytree(default_cards_dir(), cards)
    path = cards / "services.toml"
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(change[0], change[1]))
    with pytest.raises(ConfigError, match=re.escape(message)):
        catalogue.load_catalogue(cards)


def _string_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant of a module except docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_code_path_names_a_study_code_or_lumbar_mri(path: Path) -> None:
    """Study codes live in the value sets and cards/ (ratings.toml, the card texts), never in code."""
    found = [(line, text) for line, text in _string_literals(ast.parse(path.read_text("utf-8")))
             if STUDY_CODE.search(text) or re.search(r"lumbar (spine )?MRI", text, re.I)]
    assert found == []

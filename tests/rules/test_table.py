"""The rule table and card content in cards/: the shipped files load, and a broken copy fails at
start-up with every problem listed, each naming its file and key."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.rules import table

# decision-rules.md, "The rules", in order.
RULE_IDS = (
    "cauda-equina", "suspected-cancer-infection", "prior-lumbar-surgery", "fracture-risk", "trauma-ct-first",
    "repeat-imaging", "persistent-after-conservative-care", "acute-uncomplicated", "no-conservative-trial", "no-indication",
    "no-criteria-apply",
)
MODIFIER_IDS = ("pregnancy-contrast", "pregnancy-radiation", "contrast-choice")


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    """A private copy of the shipped cards/ to break."""
    return Path(shutil.copytree(table.default_cards_dir(), tmp_path / "cards"))


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}: the test needs updating"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def set_summary(path: Path, summary: str) -> None:
    text = path.read_text(encoding="utf-8")
    new, n = re.subn(r'(?m)^summary = ".*"$', f'summary = "{summary}"', text, count=1)
    assert n == 1, f"no summary line in {path.name}"
    path.write_text(new, encoding="utf-8")


def unknown_predicate(cards: Path) -> None:
    replace(cards / "rules.toml", '"cauda_equina_signs", ', '"cauda_equina_sign", ')


def long_summary(cards: Path) -> None:
    set_summary(cards / "acute-uncomplicated.toml", "x" * 140)


def unknown_cite(cards: Path) -> None:
    replace(cards / "no-conservative-trial.toml", 'cites = ["ACR-LBP", ', 'cites = ["ACR-LBX", ')


def missing_card(cards: Path) -> None:
    (cards / "trauma-ct-first.toml").unlink()


def unknown_override_reason(cards: Path) -> None:
    replace(cards / "pregnancy-contrast.toml", '"not-pregnant"', '"already-imaged"')


def warning_without_reasons(cards: Path) -> None:
    replace(cards / "repeat-imaging.toml", 'override_reasons = ["clinical-change", "prior-study-unavailable", "surgical-planning", "patient-specific"]', "override_reasons = []")


def unknown_suggestion_predicate(cards: Path) -> None:
    replace(cards / "fracture-risk.toml", 'omit_when = "vertebral_fracture"', 'omit_when = "vertebral_fractures"')


def http_source(cards: Path) -> None:
    replace(cards / "sources.toml", 'url = "https://www.nice.org.uk/guidance/ng59"', 'url = "http://www.nice.org.uk/guidance/ng59"')


# (break the copy, what the message must name: file, key, detail)
BROKEN: list[tuple[Callable[[Path], None], tuple[str, ...]]] = [
    (unknown_predicate, ("rules.toml", "cauda-equina", "when.any", "'cauda_equina_sign'")),
    (long_summary, ("acute-uncomplicated.toml", "summary", "140")),
    (unknown_cite, ("no-conservative-trial.toml", "cites", "'ACR-LBX'")),
    (missing_card, ("trauma-ct-first.toml", "missing")),
    (unknown_override_reason, ("pregnancy-contrast.toml", "override reason", "'already-imaged'")),
    (warning_without_reasons, ("repeat-imaging.toml", "warning card needs override_reasons")),
    (unknown_suggestion_predicate, ("fracture-risk.toml", "omit_when", "'vertebral_fractures'")),
    (http_source, ("sources.toml", "[NICE-NG59]", "url", "http://www.nice.org.uk/guidance/ng59")),
]


def test_shipped_table_loads() -> None:
    loaded = table.load_table()
    assert tuple(r.id for r in loaded.rules) == RULE_IDS
    assert tuple(dict.fromkeys(m.id for m in loaded.modifiers)) == MODIFIER_IDS
    assert set(loaded.cards) == (set(RULE_IDS) - {"no-criteria-apply"}) | set(MODIFIER_IDS)


def test_unchanged_copy_loads(cards: Path) -> None:
    assert tuple(r.id for r in table.load_table(cards).rules) == RULE_IDS


@pytest.mark.parametrize(("breaks", "names"), [pytest.param(b, n, id=b.__name__) for b, n in BROKEN])
def test_problem_names_file_and_key(cards: Path, breaks: Callable[[Path], None], names: tuple[str, ...]) -> None:
    breaks(cards)
    with pytest.raises(ConfigError) as caught:
        table.load_table(cards)
    message = str(caught.value)
    line = next((ln for ln in message.splitlines() if names[0] in ln), None)
    assert line is not None, message
    for name in names:
        assert name in line, line


def test_every_problem_is_listed_at_once(cards: Path) -> None:
    for breaks, _ in BROKEN:
        breaks(cards)
    with pytest.raises(ConfigError) as caught:
        table.load_table(cards)
    lines = str(caught.value).splitlines()
    for _, names in BROKEN:
        assert any(all(n in ln for n in names) for ln in lines), f"{names} not among:\n" + "\n".join(lines)


@pytest.mark.parametrize(("length", "loads"), [
    pytest.param(139, True, id="139-characters"),
    pytest.param(140, False, id="140-characters"),
])
def test_summary_limit(cards: Path, length: int, loads: bool) -> None:
    set_summary(cards / "cauda-equina.toml", "s" * length)
    if loads:
        assert table.load_table(cards).cards["cauda-equina"].summary == "s" * length
    else:
        with pytest.raises(ConfigError, match=r"cauda-equina\.toml: summary has 140 characters"):
            table.load_table(cards)


def test_summary_limit_counts_the_filled_in_date(cards: Path) -> None:
    # "{prior_date}" becomes a 10-character date on the card: 130 + 10 = 140 is too long.
    set_summary(cards / "repeat-imaging.toml", "r" * 130 + "{prior_date}")
    with pytest.raises(ConfigError, match=r"repeat-imaging\.toml: summary"):
        table.load_table(cards)

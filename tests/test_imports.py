"""The package has no import cycle: every module imports alone, and the import graph is acyclic."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import service

PACKAGE = Path(service.__file__).parent


def module_names() -> list[str]:
    """Every module of the ``service`` package, dotted."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(name: str) -> set[str]:
    """The modules of ``service`` that module ``name`` imports, wherever in the module (functions too)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    known = set(module_names())
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in found if n in known and n != name and not _is_package(n)}


def _is_package(name: str) -> bool:
    return PACKAGE.parent.joinpath(*name.split(".")).is_dir()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first node repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: imports_of(name) for name in module_names()}
    assert find_cycle(graph) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_web_edge_services_import_nothing_from_web() -> None:
    assert not {n for n in imports_of("service.services") if n.startswith("service.web")}


# Imports each module in a fresh state of the package (third-party modules stay loaded, for speed):
# a cycle broken only by the order modules happen to load in fails here.
_IMPORT_EACH_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "service" or m.startswith("service.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-1).strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH_ALONE, *module_names()], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

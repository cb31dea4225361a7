"""The shape of the package, read from its source with ``ast`` (nothing is imported).

* only ``napari_sdnet._napari`` imports Qt, napari or magicgui (anywhere in a module, lazy
  imports inside functions included): the rest runs headless;
* the modules of ``napari_sdnet`` import each other without a cycle (imports run when the
  module is loaded: module-level ones, ``if TYPE_CHECKING:`` blocks left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "napari_sdnet"
GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy", "superqt")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """``(imported module, line)`` for the import statements below ``node``."""
    out: list[tuple[str, int]] = []
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            out.extend((alias.name, item.lineno) for alias in item.names)
        elif isinstance(item, ast.ImportFrom):
            if item.level:  # relative: from its package
                base = module.split(".")
                base = base[: len(base) - item.level + (1 if is_package else 0)]
                name = ".".join([*base, item.module] if item.module else base)
            else:
                name = item.module or ""
            out.append((name, item.lineno))
            # ``from pkg import submodule`` imports the submodule
            out.extend((f"{name}.{a.name}", item.lineno) for a in item.names)
    return out


def _load_time_nodes(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported, without TYPE_CHECKING blocks."""
    out = []
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            out.extend(stmt.orelse)
        elif not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.append(stmt)
        elif isinstance(stmt, ast.ClassDef):  # class bodies run at import (not their methods)
            out.extend(
                s for s in stmt.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return out


def test_the_module_list_is_complete():
    assert "napari_sdnet.api" in MODULES and "napari_sdnet._napari._dock" in MODULES
    assert "napari_sdnet.edits" in MODULES


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith("napari_sdnet._napari")])
def test_no_gui_import_outside_napari_package(module):
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = [
        f"{path.relative_to(SRC)}:{line} imports {name}"
        for name, line in _imports(tree, module, path.name == "__init__.py")
        if name.split(".")[0] in GUI
    ]
    assert not found, found


def test_gui_imports_are_found_where_they_are():
    """The check above sees imports at any depth (it would fail on a widget module)."""
    path = MODULES["napari_sdnet._napari._dock"]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert {"qtpy.QtWidgets", "napari.utils"} <= {n for n, _ in _imports(tree, "x", False)}
    lazy = ast.parse("def f():\n    from qtpy.QtWidgets import QWidget\n")
    assert ("qtpy.QtWidgets", 2) in _imports(lazy, "x", False)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = set()
        for stmt in _load_time_nodes(tree):
            for name, _ in _imports(stmt, module, path.name == "__init__.py"):
                if name in MODULES and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (one per back edge)."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif state[nxt] == 0:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node)
    return found


def test_no_import_cycle_in_the_package():
    assert not _cycles(_graph())


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert not _cycles({"a": {"b"}, "b": set()})
    assert "napari_sdnet._napari._state" in _graph()["napari_sdnet._napari._dock"]


def test_rooms_stay_small():
    """The house rules of issue #22: no module over 800 lines, dock widgets within 550 (the
    shared parts live in _dock / _jobs / _state), the api facade within 300."""
    lines = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: c for n, c in lines.items() if c > 800} == {}
    widgets = {n: c for n, c in lines.items() if n.endswith("_widget") and c > 550}
    assert widgets == {}
    assert lines["napari_sdnet.api"] <= 300

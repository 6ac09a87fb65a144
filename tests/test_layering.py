"""The package layering (DESIGN.md): ``core/`` is the ground floor; no package imports the
orchestrator (``engine/``) from below; imports run down the floors, at most one back up.

Imports are read from the source (ast), lazy ones inside functions included; imports under
``if TYPE_CHECKING:`` are annotations only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import ember

ROOT = Path(ember.__file__).parent

# Lower floors first; a module may import its own floor and the ones below.
FLOORS = [
    {"core", "errors"},
    {"attention", "models", "kvcache", "zoo"},
    {"distributed", "config"},
    {"runner"},
    {"speculative"},
    {"engine"},
]


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "ember" and len(parts) > 1 else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every runtime ``ember.*`` import in ``tree`` (``if TYPE_CHECKING`` blocks skipped)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (m for n in node.orelse for m in _imports(ast.Module(body=[n], type_ignores=[])))
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        yield from _imports(node)


def import_edges() -> list[tuple[str, str, str]]:
    """``(file, from package, imported package)`` for every cross-package ember import."""
    edges = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        source = relative.parts[0].removesuffix(".py")
        for module in _imports(ast.parse(path.read_text())):
            target = _package(module)
            if target is not None and target != source:
                edges.append((str(relative), source, target))
    return edges


def _floor(package: str) -> int | None:
    return next((i for i, floor in enumerate(FLOORS) if package in floor), None)


def test_core_imports_nothing_above_it():
    offenders = [e for e in import_edges() if e[1] == "core" and e[2] not in FLOORS[0]]
    assert offenders == []


def test_no_package_below_the_engine_imports_it():
    below = {"core", "kvcache", "runner", "distributed", "speculative", "attention", "models"}
    offenders = [e for e in import_edges() if e[1] in below and e[2] == "engine"]
    assert offenders == []


def test_at_most_one_import_runs_back_up():
    upward = [
        e
        for e in import_edges()
        if _floor(e[1]) is not None and _floor(e[2]) is not None and _floor(e[2]) > _floor(e[1])
    ]
    assert len(upward) <= 1, upward


def test_the_scheduler_never_imports_the_speculative_package_or_tensors():
    source = (ROOT / "engine" / "scheduler.py").read_text()
    modules = set(_imports(ast.parse(source)))
    assert not any(m.startswith("ember.speculative") for m in modules)
    assert "torch" not in modules


def test_the_edge_reader_sees_lazy_imports_and_skips_type_checking():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ember.engine import x\n"
        "def f():\n    from ember.runner.base import Runner\n"
    )
    assert list(_imports(tree)) == ["typing", "ember.runner.base"]

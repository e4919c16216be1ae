"""The package's floors: no module imports from a floor above its own, function-local imports included;
no import circles anywhere in the package; strategies reach data parallelism only through Dist's
collectives and import nothing from the training loop (engine/).

Floors, bottom up (docs/architecture.md): errors.py, record.py | selection/, data/, models/, timing.py |
sources/ | distributed.py | strategies/ | engine/ | analysis/, validate.py | train.py, cli_errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "selective_backprop"

_ABOVE_STRATEGIES = {"engine", "analysis", "validate", "train", "cli_errors"}
_ABOVE_SOURCES = _ABOVE_STRATEGIES | {"strategies", "distributed"}
_ABOVE_BASE = _ABOVE_SOURCES | {"sources"}

# what each part of the package may not import (anywhere in the module, function bodies included)
FORBIDDEN = {
    "record.py": _ABOVE_BASE | {"selection", "data", "models", "timing"},
    "errors.py": _ABOVE_BASE | {"selection", "data", "models", "timing", "record"},
    "timing.py": _ABOVE_BASE | {"selection", "data", "models"},
    "selection": _ABOVE_BASE | {"data", "models", "timing"},
    "data": _ABOVE_BASE | {"selection", "models", "timing"},
    "models": _ABOVE_BASE | {"selection", "data", "timing"},
    "sources": _ABOVE_SOURCES | {"selection", "models"},
    "distributed.py": _ABOVE_SOURCES - {"distributed"} | {"selection", "data", "models"},
    "strategies": _ABOVE_STRATEGIES | {"data", "models"},
    "engine": {"analysis", "validate", "train", "cli_errors"},
    "analysis": {"engine", "strategies", "distributed", "sources", "selection", "data", "models", "timing",
                 "validate", "train"},
}


def _package_imports(path: Path) -> set[str]:
    """The selective_backprop sub-modules `path` imports (first component after the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "selective_backprop" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules(part: str) -> list[Path]:
    return [PKG / part] if part.endswith(".py") else sorted((PKG / part).rglob("*.py"))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_no_upward_import(part):
    bad = {p.relative_to(PKG).as_posix(): sorted(_package_imports(p) & FORBIDDEN[part]) for p in _modules(part)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_every_part_of_the_package_has_a_floor():
    parts = {p.name for p in PKG.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith("_")}
    unplaced = parts - set(FORBIDDEN) - {"__pycache__", "conf", "train.py", "validate.py", "cli_errors.py"}
    assert unplaced == set()


def test_the_check_sees_function_local_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from selective_backprop.engine.budget import resolve_budget\n")
    assert _package_imports(probe) == {"engine"}


# ------------------------------------------------------------------------------------------ circles

def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_targets(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> list[str]:
    """Every dotted name `tree` imports (function-local ones included): `import a.b`, `from a import b`
    (a.b when it is a module, else a: the caller keeps the names that are modules), relative imports
    resolved, and importlib.import_module("a.b") with a literal name (the old-path aliases). Running a
    package's __init__ before its submodules is Python's order, not an edge."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            found.append(str(node.args[0].value))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, for every module under `root` (a package folder)."""
    paths = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        targets = _import_targets(ast.parse(path.read_text()), name, path.name == "__init__.py", set(paths))
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles():
    graph = import_graph(PKG)
    assert len(graph) > 50 and graph["selective_backprop.engine.trainer"] >= {
        "selective_backprop.strategies", "selective_backprop.engine.run_state", "selective_backprop.distributed"}
    assert import_circles(graph) == []


def test_the_circle_check_finds_circles(tmp_path):
    """A circle through a function-local import, a relative import and an import_module alias is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import importlib\nimportlib.import_module('pkg.a')\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.b"] == {"pkg.sub.c"} and graph["pkg.a"] == {"pkg.sub.b"}
    assert import_circles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]


# ------------------------------------------------------------------------------------------ strategies

STRATEGY_FILES = sorted((PKG / "strategies").glob("*.py"))


def test_strategies_are_one_small_file_each():
    from selective_backprop.strategies import REGISTRY

    modules = {path.split(":")[0].rsplit(".", 1)[1] for path in REGISTRY.values()}
    assert modules == set(REGISTRY) and {p.stem for p in STRATEGY_FILES} >= modules
    assert {p.name: n for p in STRATEGY_FILES if (n := len(p.read_text().splitlines())) >= 220} == {}


@pytest.mark.parametrize("module", STRATEGY_FILES, ids=lambda p: p.name)
def test_strategies_never_ask_for_the_world_size(module):
    text = module.read_text()
    assert "world_size" not in text and ".enabled" not in text

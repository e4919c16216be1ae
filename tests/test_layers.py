"""The package's floors (issue 12): no module imports from a floor above its own, function-local
imports included, and strategies reach data parallelism only through Dist's collectives."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "selective_backprop"

# what each part of the package may not import (anywhere in the module, function bodies included)
FORBIDDEN = {
    "record.py": {"engine", "selection", "data", "models", "analysis", "validate", "train", "cli_errors"},
    "errors.py": {"engine", "selection", "data", "models", "analysis", "validate", "train", "record"},
    "selection": {"engine", "data", "models", "analysis", "validate", "train"},
    "data": {"engine", "selection", "models", "analysis", "validate", "train"},
    "models": {"engine", "selection", "data", "analysis", "validate", "train"},
    "analysis": {"engine", "selection", "data", "models", "validate", "train"},
    "engine": {"analysis", "validate", "train", "cli_errors"},
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


def test_the_check_sees_function_local_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from selective_backprop.engine.budget import resolve_budget\n")
    assert _package_imports(probe) == {"engine"}


@pytest.mark.parametrize("module", ["engine/strategies.py", "engine/peers.py"])
def test_strategies_never_ask_for_the_world_size(module):
    text = (PKG / module).read_text()
    assert "world_size" not in text and ".enabled" not in text

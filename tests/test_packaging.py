"""Packaging contracts: environment.yml matches pyproject, entry points exist, CI calls make test."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO


def _names(requirements):
    return {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower(): r.replace(" ", "") for r in requirements}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = _names([p for p in pip_block if not p.startswith("-e")])
    assert have == wanted


def test_torch_has_lower_bounds_only():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        if dep.startswith(("torch>", "torchvision>")):
            assert "<" not in dep and "==" not in dep, dep


def test_console_script_and_ci():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["sb-train"] == "selective_backprop.train:main"
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make setup" in ci
    readme = (REPO / "README.md").read_text()
    assert "make setup" in readme and "make test" in readme and "make demo" in readme

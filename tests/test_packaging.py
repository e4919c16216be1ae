"""Packaging contracts: environment.yml matches pyproject, entry points exist, CI calls make test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
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


def _install_non_editable(dest: Path) -> Path:
    """Build and install a copy of the project (not editable, no deps, offline) into `dest`/site."""
    src = dest / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    site = dest / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return site


def _printed_config(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert {"dataset", "model", "strategy", "lr_schedule", "optimizer", "train", "seed"} <= set(cfg)
    assert cfg["dataset"]["name"] == "fashion_mnist" and cfg["model"]["name"] == "resnet8"
    assert cfg["strategy"]["name"] == "sb" and cfg["train"]["max_epochs"] == 3
    return cfg


@pytest.mark.slow
def test_non_editable_install_runs_both_entry_points_from_any_directory(tmp_path):
    """Issue 15.1: the configs ship inside the package, so an installed copy finds them from anywhere."""
    site = _install_non_editable(tmp_path)
    assert (site / "selective_backprop" / "conf" / "config.yaml").is_file()
    assert (site / "selective_backprop" / "conf" / "strategy" / "sb.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    args = ["--cfg", "job", "strategy=sb", "train.max_epochs=3"]
    module = subprocess.run([sys.executable, "-m", "selective_backprop.train", *args], cwd=elsewhere,
                            env=env, capture_output=True, text=True, timeout=120)
    _printed_config(module)
    loaded = subprocess.run([sys.executable, "-c", "import selective_backprop; print(selective_backprop.__file__)"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip().startswith(str(site)), loaded.stdout      # the installed copy, not src/
    script = site / "bin" / "sb-train"
    if not script.exists():
        pytest.skip("pip put no console script into the target's bin/")
    console = subprocess.run([str(script), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                             timeout=120)
    _printed_config(console)

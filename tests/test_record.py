"""The run-record contract lives in one torch-free module (selective_backprop/record.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from selective_backprop import record

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted((ROOT / "src" / "selective_backprop").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def test_record_module_is_torch_free():
    """Only the standard library (the package's __init__ loads the drop-in, hence torch; this module not)."""
    tree = ast.parse((ROOT / "src" / "selective_backprop" / "record.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "dataclasses", "enum", "hashlib", "json", "logging", "os", "pathlib", "typing"}, imported


@pytest.mark.parametrize("pattern", [r'"summary\.json"', r'"metrics\.jsonl"', r'"checkpoint\.pt"',
                                     r"^PHASES\s*=", r"^def read_metrics", r"^def config_key",
                                     r"^def atomic_write_text"])
def test_one_copy_of_each_contract_item(pattern):
    holders = [p.relative_to(ROOT).as_posix() for p in CODE
               if re.search(pattern, p.read_text(), flags=re.MULTILINE)]
    assert holders == ["src/selective_backprop/record.py"], holders


def test_status_is_the_plain_word_in_json():
    assert json.dumps({"status": record.Status.PREEMPTED}) == '{"status": "preempted"}'
    assert record.Status.BUDGET == "budget" and str(record.Status.FAILED) == "failed"
    assert set(record.FINISHED) == {"completed", "budget"}


def test_build_and_write_summary(tmp_path):
    config = {"seed": 3, "strategy": {"name": "sb"}}
    summary = record.build_summary(config, "completed", steps=4)
    assert summary == {"steps": 4, "status": "completed", "config": config,
                       "config_key": record.config_key(config)}
    assert record.config_key(config) == record.config_key({**config, "seed": 4})     # seed is not config
    path = record.write_summary(tmp_path, summary)
    assert path.name == record.SUMMARY_FILE and json.loads(path.read_text()) == summary
    assert not list(tmp_path.glob(".*tmp*"))


def test_read_metrics_partial_last_line_vs_corrupt_middle(tmp_path):
    path = tmp_path / record.METRICS_FILE
    assert record.read_metrics(path) == []
    path.write_text('{"epoch": 1.0}\n{"epoch": 2.0}\n{"epoch": 3')
    assert record.read_metrics(path) == [{"epoch": 1.0}, {"epoch": 2.0}]
    path.write_text('{"epoch": 1.0}\n{"epo\n{"epoch": 3.0}\n')
    with pytest.raises(ValueError, match="line 2"):
        record.read_metrics(path)


def test_a_key_added_at_its_default_keeps_earlier_config_keys():
    """train.eval_every_cost=null (the default: the epoch grid) leaves config_key as it was before the key
    existed; any other value makes another configuration."""
    before = {"seed": 0, "train": {"batch_size": 128, "eval_every": 1}, "strategy": {"name": "sb"}}
    with_default = {**before, "train": {**before["train"], "eval_every_cost": None}}
    on_grid = {**before, "train": {**before["train"], "eval_every_cost": "epoch"}}
    assert record.config_key(with_default) == record.config_key(before)
    assert record.config_key(on_grid) != record.config_key(before)
    assert record.config_key(on_grid) != record.config_key({**on_grid, "train": {**on_grid["train"],
                                                                               "eval_every_cost": 1000}})

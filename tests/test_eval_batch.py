"""train.eval_batch_size: how the test set is chunked for evaluation. `auto` (the default) is 128 on a CPU
and 1024 on a GPU; the chunk changes neither a run's numbers nor its config_key, so runs made at 1024
(every record before `auto`) resume and compare with runs made at `auto`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_config
from resume_helpers import run_crashing
from selective_backprop.engine.evaluation import eval_batch_size
from selective_backprop.errors import ConfigError
from selective_backprop.record import config_key, read_metrics
from selective_backprop.train import run
from selective_backprop.validate import validate_config

QUIET = ["train.tensorboard=false", "deterministic=true", "dataset.test_subset=1000"]


def test_auto_is_128_on_a_cpu_and_1024_on_a_gpu():
    assert eval_batch_size("auto", torch.device("cpu")) == 128
    assert eval_batch_size("auto", torch.device("cuda", 0)) == 1024
    assert eval_batch_size("auto", "cuda") == 1024
    assert eval_batch_size(300, torch.device("cpu")) == 300 and eval_batch_size(300, "cuda") == 300


@pytest.mark.parametrize("value, shown", [("0", "0"), ("-4", "-4"), ("big", "'big'"), ("2.5", "2.5")])
def test_bad_eval_batch_size_is_refused(value, shown, fmnist_root):
    with pytest.raises(ConfigError, match=rf"train\.eval_batch_size={shown}: .*integer >= 1 or auto"):
        validate_config(tiny_config(fmnist_root, [f"train.eval_batch_size={value}"]))


def test_the_chunk_changes_neither_the_numbers_nor_the_config_key(tmp_path, fmnist_root, fmnist_bundle):
    """auto (128 here) and 1024 chunk the 1 000 test images differently: the same test errors at every
    evaluation, the same losses to float rounding, one config_key."""
    rows, keys = {}, {}
    for chunk in ("auto", "1024", "77"):
        run(tiny_config(fmnist_root, QUIET + [f"train.eval_batch_size={chunk}"]), str(tmp_path / chunk),
            fmnist_bundle)
        rows[chunk] = read_metrics(tmp_path / chunk / "metrics.jsonl")
        keys[chunk] = json.loads((tmp_path / chunk / "summary.json").read_text())["config_key"]
    assert len(set(keys.values())) == 1
    assert len(rows["auto"]) == 2
    for chunk in ("1024", "77"):
        assert [r["test_error"] for r in rows[chunk]] == [r["test_error"] for r in rows["auto"]]
        assert [r["test_loss"] for r in rows[chunk]] == pytest.approx([r["test_loss"] for r in rows["auto"]],
                                                                      rel=1e-5)
        assert [r["train_loss"] for r in rows[chunk]] == [r["train_loss"] for r in rows["auto"]]


def test_a_run_checkpointed_at_1024_resumes_at_auto(tmp_path, fmnist_root, fmnist_bundle, monkeypatch):
    """A run preempted under the old default (1024) resumes under `auto` and ends as an uninterrupted run."""
    overrides = QUIET + ["strategy=sb", "train.max_epochs=3"]
    run(tiny_config(fmnist_root, overrides), str(tmp_path / "ref"), fmnist_bundle)
    old = overrides + ["train.eval_batch_size=1024"]
    run_crashing(monkeypatch, lambda: run(tiny_config(fmnist_root, old), str(tmp_path / "resumed"), fmnist_bundle))
    run(tiny_config(fmnist_root, overrides), str(tmp_path / "resumed"), fmnist_bundle)
    ref, resumed = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("ref", "resumed"))
    assert len(ref) == 3
    for field in ("test_error", "step", "train_loss", "examples_backpropped", "lr"):
        assert [r[field] for r in resumed] == [r[field] for r in ref], field
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ref", "resumed")]
    assert summaries[0]["config_key"] == summaries[1]["config_key"]
    assert summaries[1]["config"]["train"]["eval_batch_size"] == "auto"


def test_committed_records_keep_their_config_key():
    """Every committed run record was made at eval_batch_size 1024: its stored key is still what
    config_key computes, with the chunk at 1024 or at auto."""
    summaries = sorted((REPO / "results").rglob("summary.json"))
    checked = 0
    for path in summaries:
        summary = json.loads(path.read_text())
        config = summary.get("config") or {}
        if "config_key" not in summary or "eval_batch_size" not in config.get("train", {}):
            continue
        assert config_key(config) == summary["config_key"], path
        auto = {**config, "train": {**config["train"], "eval_batch_size": "auto"}}
        assert config_key(auto) == summary["config_key"], path
        checked += 1
    assert checked >= 30

"""Budgets (engine/budget.py): max_epochs / max_time_s / max_cost, the cost field, train.budget_from.

Tiny real Fashion-MNIST runs (512 examples, b = 64: 8 steps per epoch) on the CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_config
from resume_helpers import run_crashing, without_timing
from selective_backprop.engine.budget import CostWeights, cost_from_record, resolve_budget
from selective_backprop.record import read_metrics
from selective_backprop.engine.runtime import lr_factor
from selective_backprop.engine.trainer import Trainer
from selective_backprop.errors import ConfigError
from selective_backprop.train import run
from selective_backprop.validate import validate_config

QUIET = ["train.tensorboard=false", "deterministic=true"]
STEP_COST = 3 * 64                    # one Traditional step: 64 examples x (forward + backward)


def recomputed_cost(record: dict, select_forward: float = 1.0, train_example: float = 3.0) -> float:
    """Cost from the counters alone (select-forwarded = forwarded - backpropped)."""
    backpropped = record["examples_backpropped"]
    return select_forward * (record["examples_forwarded"] - backpropped) + train_example * backpropped


class CostTrace(Trainer):
    """A trainer that remembers its cost after every training step."""

    def train_step(self, batch) -> None:
        super().train_step(batch)
        self.step_costs = getattr(self, "step_costs", []) + [self.progress.cost()]


def traced_run(run_dir: Path, root: Path, overrides: list[str], bundle) -> tuple[CostTrace, dict]:
    trainer = CostTrace(tiny_config(root, QUIET + overrides), str(run_dir), data_bundle=bundle)
    return trainer, trainer.fit()


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ---------------------------------------------------------------------------------------- the cost

def test_cost_weights_and_old_records():
    weights = CostWeights(1.0, 3.0)
    assert weights.cost(300, 100) == 600.0
    assert cost_from_record({"examples_forwarded": 400, "examples_backpropped": 100}) == 600.0
    assert cost_from_record({"examples_forwarded": 400, "examples_backpropped": 100}, CostWeights(0.5, 2.0)) == 350.0
    assert cost_from_record({"examples_backpropped": 100}) is None


def test_lr_holds_the_final_value_past_the_last_milestone():
    milestones, gamma = [3, 6, 8], 0.2
    assert [lr_factor(e, milestones, gamma) for e in (0, 2.99, 3, 6, 8)] == pytest.approx(
        [1, 1, 0.2, 0.04, 0.008])
    assert all(lr_factor(e, milestones, gamma) == lr_factor(8, milestones, gamma) for e in (8.5, 20, 1e6))


def test_traditional_cost_budget_is_exact(tmp_path, fmnist_root, fmnist_bundle):
    """max_cost = 10 steps + 50 units -> 11 steps (never more than one over); cost field exact."""
    max_cost = 10 * STEP_COST + 50
    trainer, summary = traced_run(tmp_path / "run", fmnist_root,
                                  ["train.max_epochs=null", f"train.max_cost={max_cost}"], fmnist_bundle)
    assert summary["status"] == "budget" and summary["steps"] == 11
    assert summary["cost"] == 11 * STEP_COST == recomputed_cost(summary)
    assert trainer.step_costs[-2] < max_cost <= trainer.step_costs[-1]
    assert summary["epochs"] == pytest.approx(11 / 8)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [8, 11]               # epoch 1, then the final row at the stop point
    assert [r["cost"] for r in rows] == [8 * STEP_COST, 11 * STEP_COST]
    assert all(r["cost"] == recomputed_cost(r) for r in rows)
    assert summary["budget"]["max_cost"] == max_cost and summary["budget"]["max_epochs"] is None
    assert summary["budget"]["source"] is None


def test_cost_weights_are_configurable(tmp_path, fmnist_root, fmnist_bundle):
    _, summary = traced_run(tmp_path / "run", fmnist_root,
                            ["strategy=sb", "train.max_epochs=1", "train.cost.select_forward=0.5",
                             "train.cost.train_example=2.5"], fmnist_bundle)
    assert summary["status"] == "completed"
    assert summary["cost"] == pytest.approx(recomputed_cost(summary, 0.5, 2.5))
    assert summary["examples_forwarded"] - summary["examples_backpropped"] == 512     # one selection pass


def test_sb_at_traditionals_cost_does_more_epochs(tmp_path, fmnist_root, fmnist_bundle):
    """Traditional for 4 epochs; SB with max_epochs=null and train.budget_from -> Traditional's cost.

    SB's epoch costs 512 (selection) + 3 x ~171 trained ≈ 1024 units against Traditional's 1536 (its
    priming epoch, if any, backprops all: 2048), so it gets > 4.5 epochs out of Traditional's 4."""
    ref_root = tmp_path / "ref"
    run(tiny_config(fmnist_root, QUIET + ["train.max_epochs=4"]), str(ref_root / "trad"), fmnist_bundle)
    trad = summary_of(ref_root / "trad")
    assert trad["status"] == "completed" and trad["cost"] == 4 * 512 * 3 == recomputed_cost(trad)
    trainer, sb = traced_run(tmp_path / "sb", fmnist_root,
                             ["strategy=sb", "train.max_epochs=null", f"train.budget_from={ref_root}"], fmnist_bundle)
    source = sb["budget"]["source"]
    assert source["run_dir"] == str(ref_root / "trad") and source["axis"] == "cost"
    assert sb["budget"]["max_cost"] == source["value"] == trad["cost"]
    assert sb["status"] == "budget" and sb["cost"] == recomputed_cost(sb)
    assert trainer.step_costs[-2] < trad["cost"] <= trainer.step_costs[-1]
    assert sb["epochs"] > trad["epochs"] + 0.5, (sb["epochs"], trad["epochs"])
    print(f"\nequal cost {trad['cost']:.0f}: Traditional {trad['epochs']} epochs, SB {sb['epochs']} epochs")
    rows = read_metrics(tmp_path / "sb" / "metrics.jsonl")
    assert rows[-1]["step"] == sb["steps"] and rows[-1]["cost"] == sb["cost"]


def test_cost_budget_resumes_exactly(tmp_path, fmnist_root, fmnist_bundle, monkeypatch):
    """Crash after epoch 1 of a cost-bound SB run, resume: same records (timings aside) as uninterrupted."""
    overrides = QUIET + ["strategy=sb", "train.max_epochs=null", "train.max_cost=2500"]
    run(tiny_config(fmnist_root, overrides), str(tmp_path / "ref"), fmnist_bundle)
    run_crashing(monkeypatch, lambda: run(tiny_config(fmnist_root, overrides), str(tmp_path / "resumed"),
                                          fmnist_bundle))
    run(tiny_config(fmnist_root, overrides), str(tmp_path / "resumed"), fmnist_bundle)
    ref, resumed = (without_timing(read_metrics(tmp_path / d / "metrics.jsonl")) for d in ("ref", "resumed"))
    assert resumed == ref and read_metrics(tmp_path / "ref" / "metrics.jsonl")[-1]["cost"] >= 2500
    assert summary_of(tmp_path / "resumed")["cost"] == summary_of(tmp_path / "ref")["cost"]


def test_backpropped_epoch_unit_with_cost_budget(tmp_path, fmnist_root, fmnist_bundle):
    trainer, summary = traced_run(tmp_path / "run", fmnist_root,
                                  ["strategy=sb", "train.epoch_unit=backpropped", "train.max_epochs=null",
                                   "train.max_cost=3000"], fmnist_bundle)
    assert summary["status"] == "budget"
    assert trainer.step_costs[-2] < 3000 <= trainer.step_costs[-1] == summary["cost"]


# ----------------------------------------------------------------------- the cost grid (eval_every_cost)

def assert_on_grid(rows: list[dict], step_costs: list[float], every: float, final_cost: float) -> None:
    """Row i (1-based) is the evaluation of grid point i x every, taken right after the first training
    step whose cost reached it (the step before had not); one row per multiple a step reached, plus the
    final row after the last step unless that step's grid row is already it."""
    reached = int(step_costs[-1] // every)
    assert len(rows) in (reached, reached + 1), (len(rows), reached)
    for i, row in enumerate(rows[:reached], 1):
        assert row["cost"] >= i * every and row["cost"] == step_costs[row["step"] - 1], (i, row["cost"])
        assert step_costs[row["step"] - 2] < i * every, (i, step_costs[row["step"] - 2])
    assert all(a["step"] < b["step"] for a, b in zip(rows, rows[1:]))       # each after a step of its own
    # the last row: after the last step (selection forwards that ended its epoch may follow it)
    assert rows[-1]["step"] == len(step_costs) and step_costs[-1] <= rows[-1]["cost"] <= final_cost


@pytest.mark.parametrize("strategy,unit", [("traditional", "considered"), ("sb", "considered"),
                                           ("sb", "backpropped")])
def test_cost_grid_evaluates_at_the_first_step_past_each_multiple(strategy, unit, tmp_path, fmnist_root,
                                                                   fmnist_bundle):
    """train.eval_every_cost=700 (about 3.6 Traditional steps): evaluations mid-epoch, at the same cost
    points for both strategies, none at the epoch ends unless a multiple falls there; the final one at
    the stop point. Evaluation itself costs nothing."""
    every = 700
    trainer, summary = traced_run(tmp_path / "run", fmnist_root,
                                  [f"strategy={strategy}", "train.max_epochs=3", f"train.eval_every_cost={every}",
                                   f"train.epoch_unit={unit}"], fmnist_bundle)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert summary["status"] == "completed" and summary["config"]["train"]["eval_every_cost"] == every
    assert len(rows) >= 5
    assert_on_grid(rows, trainer.step_costs, every, summary["cost"])
    assert any(row["epoch"] != round(row["epoch"]) for row in rows)          # not the epoch grid
    assert all(row["cost"] == recomputed_cost(row) for row in rows)
    assert summary["cost"] == recomputed_cost(summary)                       # evaluations counted nowhere
    if strategy == "traditional":
        assert summary["cost"] == 3 * 512 * 3


def test_cost_grid_epoch_is_one_traditional_epoch(tmp_path, fmnist_root, fmnist_bundle):
    """`epoch` = n_train x train.cost.train_example: Traditional evaluates exactly at its epoch ends, SB
    at the first step past each multiple of 512 x 3 units (it gets more epochs out of each)."""
    from selective_backprop.record import eval_cost_step

    assert eval_cost_step("epoch", 512, CostWeights(1.0, 3.0)) == 1536.0
    assert eval_cost_step("epoch", 512, CostWeights(0.5, 2.5)) == 1280.0
    assert eval_cost_step(None, 512, CostWeights()) is None and eval_cost_step(250, 512, CostWeights()) == 250.0
    grid = ["train.max_epochs=3", "train.eval_every_cost=epoch"]
    _, trad = traced_run(tmp_path / "trad", fmnist_root, grid, fmnist_bundle)
    rows = read_metrics(tmp_path / "trad" / "metrics.jsonl")
    assert [r["cost"] for r in rows] == [1536.0, 3072.0, 4608.0] and [r["epoch"] for r in rows] == [1.0, 2.0, 3.0]
    trainer, sb = traced_run(tmp_path / "sb", fmnist_root,
                             ["strategy=sb", "train.max_epochs=null", f"train.max_cost={trad['cost']}", *grid[1:]],
                             fmnist_bundle)
    assert sb["config"]["train"]["eval_every_cost"] == "epoch"
    sb_rows = read_metrics(tmp_path / "sb" / "metrics.jsonl")
    assert_on_grid(sb_rows, trainer.step_costs, 1536.0, sb["cost"])
    assert len(sb_rows) == 3 and sb_rows[-1]["epoch"] > 3.5


def test_cost_grid_resumes_exactly(tmp_path, fmnist_root, fmnist_bundle, monkeypatch):
    """Crash after epoch 1 of an SB run on a 700-unit grid (a grid point pending across the boundary),
    resume: the same evaluations at the same steps, and the same rows timings aside."""
    from selective_backprop.engine.checkpoint import checkpoint_path, load_checkpoint
    overrides = QUIET + ["strategy=sb", "train.max_epochs=3", "train.eval_every_cost=700"]
    run(tiny_config(fmnist_root, overrides), str(tmp_path / "ref"), fmnist_bundle)
    run_crashing(monkeypatch, lambda: run(tiny_config(fmnist_root, overrides), str(tmp_path / "resumed"),
                                          fmnist_bundle))
    state = load_checkpoint(checkpoint_path(tmp_path / "resumed"))
    cost = recomputed_cost({"examples_forwarded": state["counters"]["select_forwarded"]
                            + state["counters"]["train_forwarded"],
                            "examples_backpropped": state["counters"]["backpropped"]})
    assert state["eval_grid"] == {"every": 700.0, "next": int(cost // 700) + 1} and cost % 700 != 0
    run(tiny_config(fmnist_root, overrides), str(tmp_path / "resumed"), fmnist_bundle)
    ref, resumed = (without_timing(read_metrics(tmp_path / d / "metrics.jsonl")) for d in ("ref", "resumed"))
    assert resumed == ref and len(ref) >= 5
    assert summary_of(tmp_path / "resumed")["cost"] == summary_of(tmp_path / "ref")["cost"]
    text = (tmp_path / "resumed" / "metrics.jsonl").read_text()
    run(tiny_config(fmnist_root, overrides), str(tmp_path / "resumed"), fmnist_bundle)   # finished: a no-op
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == text


# ------------------------------------------------------------------------------------ refusals

def test_no_budget_is_refused(fmnist_root):
    cfg = tiny_config(fmnist_root, ["train.max_epochs=null"])
    with pytest.raises(ConfigError, match=r"train\.max_epochs.*train\.max_cost"):
        validate_config(cfg)
    for bad, field in ((["train.max_cost=-1"], "train.max_cost"), (["train.cost.train_example=0"],
                       "train.cost.train_example"), (["train.budget_axis=steps"], "train.budget_axis")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            validate_config(tiny_config(fmnist_root, bad))


def test_no_budget_cli_exits_2(tmp_path, fmnist_root):
    proc = subprocess.run([sys.executable, "-m", "selective_backprop.train", "train.max_epochs=null",
                           f"hydra.run.dir={tmp_path / 'run'}", f"dataset.root={fmnist_root}", "device=cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "train.max_cost" in errors[0]
    assert not (tmp_path / "run" / "summary.json").exists()


def _fake_run(folder: Path, cfg, strategy: str = "traditional", seed: int | None = None,
              status: str = "completed") -> None:
    """A summary.json as the trainer writes it, for budget_from's search (no training)."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    config["seed"] = int(cfg.seed) if seed is None else seed
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "strategy": strategy, "status": status, "seed": config["seed"], "config": config,
        "examples_forwarded": 1000, "examples_backpropped": 1000, "train_s": 12.5, "config_key": "x"}))


def test_budget_from_picks_the_matching_traditional_run(tmp_path, fmnist_root):
    base = tiny_config(fmnist_root)
    refs = tmp_path / "refs"
    _fake_run(refs / "sweep" / "0", base)                                    # the one
    _fake_run(refs / "sweep" / "1", base, seed=1)                            # other seed
    _fake_run(refs / "sweep" / "2", base, strategy="sb")                     # not Traditional
    _fake_run(refs / "sweep" / "3", base, status="failed")                   # not finished
    _fake_run(refs / "other" / "0", tiny_config(fmnist_root, ["dataset.subset=256"]))   # other subset
    _fake_run(refs / "other" / "1", tiny_config(fmnist_root, ["lr_schedule=static"]))   # other schedule
    _fake_run(refs / "other" / "2", tiny_config(fmnist_root, ["model.width=4"]))        # other model
    sb = ["strategy=sb", "train.max_epochs=null", f"train.budget_from={refs}"]
    budget = resolve_budget(tiny_config(fmnist_root, sb))
    assert budget.max_cost == 3000.0 and budget.max_time_s is None and budget.max_epochs is None
    assert budget.source["run_dir"] == str(refs / "sweep" / "0")
    timed = resolve_budget(tiny_config(fmnist_root, sb + ["train.budget_axis=time"]))
    assert timed.max_time_s == 12.5 and timed.max_cost is None
    seed1 = resolve_budget(tiny_config(fmnist_root, sb + ["seed=1"]))
    assert seed1.source["run_dir"] == str(refs / "sweep" / "1")
    # a Traditional run is the reference: it ignores budget_from
    assert resolve_budget(tiny_config(fmnist_root, [f"train.budget_from={refs}"])).source is None


def test_budget_from_errors_name_the_field(tmp_path, fmnist_root):
    base = tiny_config(fmnist_root)
    refs = tmp_path / "refs"
    _fake_run(refs / "a", base)
    sb = ["strategy=sb", "train.max_epochs=null"]
    with pytest.raises(ConfigError, match=r"^train\.budget_from=.*holds no finished Traditional run"):
        validate_config(tiny_config(fmnist_root, sb + [f"train.budget_from={refs}", "seed=7"]))
    with pytest.raises(ConfigError, match=r"^train\.budget_from=.*not a directory"):
        validate_config(tiny_config(fmnist_root, sb + [f"train.budget_from={tmp_path / 'missing'}"]))
    _fake_run(refs / "b", base)
    with pytest.raises(ConfigError, match=r"^train\.budget_from=.*holds 2 runs matching"):
        validate_config(tiny_config(fmnist_root, sb + [f"train.budget_from={refs}"]))
    shutil.rmtree(refs / "b")
    validate_config(tiny_config(fmnist_root, sb + [f"train.budget_from={refs}"]))


def test_data_parallel_cost_budget_counts_all_ranks(tmp_path, fmnist_root):
    """torchrun K = 2: cost from the global counters; the ranks stop together within one step."""
    from test_distributed import torchrun

    proc = torchrun(str(tmp_path / "dp"), fmnist_root, ["strategy=sb", "train.max_epochs=null",
                                                        "train.max_cost=2500"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(tmp_path / "dp")
    assert summary["status"] == "budget" and summary["world_size"] == 2
    assert summary["cost"] == recomputed_cost(summary)
    # one global step: 64 trained examples (3 units each) after at most an epoch's selection forwards
    assert 2500 <= summary["cost"] < 2500 + 3 * 64 + 512
    rows = read_metrics(tmp_path / "dp" / "metrics.jsonl")
    assert rows[-1]["step"] == summary["steps"] and rows[-1]["cost"] == summary["cost"]

"""Budget-fitted LR schedules (lr_schedule.index: budget) and the peers fitted to them.

A budget-indexed schedule's position is the share of the run's budget spent (cost / train.max_cost,
else train_s / train.max_time_s); the trainer sets the LR before every training step. Tiny real
Fashion-MNIST runs (512 examples, b = 64: a Traditional epoch costs 512 x 3 = 1536 units) on the CPU;
every step's LR is traced and checked against the cost spent before it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, compose_config, tiny_config
from resume_helpers import run_crashing, without_timing
from selective_backprop.engine.budget import Budget, BudgetClock, check_schedule_budget
from selective_backprop.strategies.infobatch import InfoBatch
from selective_backprop.engine.runtime import LRSchedule
from selective_backprop.engine.trainer import Trainer
from selective_backprop.errors import ConfigError
from selective_backprop.record import read_metrics
from selective_backprop.train import run
from selective_backprop.validate import validate_config

QUIET = ["train.tensorboard=false", "deterministic=true"]
N, B = 512, 64
EPOCH_COST = 3 * N                    # one Traditional epoch
MAX_COST = 4 * EPOCH_COST             # 6144: about 32 Traditional steps, 16 Kath18 steps
BASE_LR, GAMMA, MILESTONES = 0.1, 0.2, (0.3, 0.6, 0.8)
STRATEGIES = {"traditional": [], "sb": ["strategy=sb"], "stale_sb": ["strategy=stale_sb"],
              "kath18": ["strategy=kath18"], "uniform": ["strategy=uniform"], "infobatch": ["strategy=infobatch"],
              "composer_sb": ["strategy=composer_sb"]}
BUDGET_STEPS = ["lr_schedule=budget_steps", "train.max_epochs=null", f"train.max_cost={MAX_COST}"]


def expected_lr(share: float) -> float:
    return BASE_LR * GAMMA ** sum(1 for m in MILESTONES if share >= m)


@pytest.fixture
def lr_trace(monkeypatch):
    """Every training step of every Trainer: (cost before the step, its LR, batch tag, examples considered)."""
    steps: list[tuple[float, float, str, int]] = []
    original = Trainer.train_step

    def traced(self, batch):
        steps.append((self.progress.cost(), self.optimizer.param_groups[0]["lr"], batch.tag,
                      self.counters.considered))
        original(self, batch)
    monkeypatch.setattr(Trainer, "train_step", traced)
    return steps


@pytest.fixture(scope="module")
def bundle(fmnist_bundle):
    """The shared real Fashion-MNIST bundle (512 train) with the test set cut to 256 images."""
    test = fmnist_bundle.test
    return dataclasses.replace(fmnist_bundle, test=type(test)(test.images[:256], test.targets[:256], test.transform))


def train(run_dir: Path, root: Path, overrides: list[str], bundle) -> dict:
    run(tiny_config(root, QUIET + overrides), str(run_dir), bundle)
    return json.loads((run_dir / "summary.json").read_text())


# ------------------------------------------------------------------------------------ the schedule

def test_schedule_factors_by_epoch_and_by_budget_share():
    steps = LRSchedule.from_config(compose_config(["lr_schedule=budget_steps"]).lr_schedule)
    assert (steps.index, steps.kind, steps.milestones, steps.gamma) == ("budget", "steps", (0.3, 0.6, 0.8), 0.2)
    assert [steps.factor(s) for s in (0, 0.2999, 0.3, 0.6, 0.8, 1.0, 1.5)] == pytest.approx(
        [1, 1, 0.2, 0.04, 0.008, 0.008, 0.008])
    linear = LRSchedule.from_config(compose_config(["lr_schedule=budget_linear"]).lr_schedule)
    assert [linear.factor(s) for s in (0, 0.25, 0.9, 1.0, 1.2)] == pytest.approx([1, 0.75, 0.1, 0, 0])
    epochs = LRSchedule.from_config(compose_config(["lr_schedule=fashion_mnist_e30"]).lr_schedule)
    assert (epochs.index, epochs.kind) == ("epoch", "steps")        # keys absent: today's schedules
    assert [epochs.factor(e) for e in (8, 9, 18, 24)] == pytest.approx([1, 0.2, 0.04, 0.008])
    assert epochs.epoch_milestones() == [9, 18, 24] and steps.epoch_milestones() == []


def test_budget_share_is_cost_first_then_time():
    both = Budget(None, 100.0, 1000.0)
    assert both.schedule_axis == "cost" and both.fraction(250.0, 99.0) == 0.25
    timed = Budget(None, 100.0, None)
    assert timed.schedule_axis == "time" and timed.fraction(250.0, 25.0) == 0.25
    assert Budget(10.0, None, None).schedule_axis is None and Budget(10.0, None, None).fraction(1, 1) is None
    clock = BudgetClock(lambda: both, lambda: 300.0, lambda: 1.0, lambda: 64, epoch_examples=100)
    assert clock.fraction() == 0.3 and clock.full_epoch_share() == 3 * 100 / 1000
    clock = BudgetClock(lambda: timed, lambda: 0.0, lambda: 8.0, lambda: 200, epoch_examples=100)
    assert clock.fraction() == 0.08 and clock.full_epoch_share() == pytest.approx(8.0 / 200 * 100 / 100)
    with pytest.raises(ConfigError, match=r"^lr_schedule\.index=budget: .*train\.max_cost and train\.max_time_s"):
        check_schedule_budget(Budget(10.0, None, None), "budget")
    check_schedule_budget(Budget(10.0, None, None), "epoch")


BAD = [
    (["lr_schedule=budget_steps"], r"^lr_schedule\.index=budget: .*train\.max_cost and train\.max_time_s are null"),
    (["lr_schedule=budget_steps", "strategy=traditional", "train.budget_from=/tmp"],   # Traditional ignores it
     r"^lr_schedule\.index=budget: "),
    (["lr_schedule=budget_steps", "lr_schedule.milestones=[0.5,1.5]"], r"^lr_schedule\.milestones=.*shares in \[0, 1\]"),
    (["lr_schedule=budget_steps", "lr_schedule.index=cost"], r"^lr_schedule\.index='cost'.*epoch \| budget"),
    (["lr_schedule=budget_steps", "lr_schedule.kind=cosine"], r"^lr_schedule\.kind='cosine'.*steps \| linear"),
    (["lr_schedule=budget_linear", "lr_schedule.index=epoch"], r"^lr_schedule\.kind=linear: needs lr_schedule\.index=budget"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_schedule_is_refused(overrides, message, fmnist_root):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(fmnist_root, overrides))


def test_budget_fitted_configs_validate(fmnist_root, tmp_path):
    for schedule in ("budget_steps", "budget_linear"):
        validate_config(tiny_config(fmnist_root, [f"lr_schedule={schedule}", "train.max_epochs=null",
                                                  "train.max_time_s=60"]))
        for peer in ("infobatch", "composer_sb"):          # no max_epochs needed: they fit to the budget
            validate_config(tiny_config(fmnist_root, [f"lr_schedule={schedule}", f"strategy={peer}",
                                                      "train.max_epochs=null", "train.max_cost=100"]))


def test_no_budget_cli_exits_2_naming_the_fields(tmp_path, fmnist_root):
    proc = subprocess.run([sys.executable, "-m", "selective_backprop.train", "lr_schedule=budget_steps",
                           f"hydra.run.dir={tmp_path / 'run'}", f"dataset.root={fmnist_root}", "device=cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "lr_schedule.index=budget" in errors[0] and "train.max_cost" in errors[0]
    assert not (tmp_path / "run" / "summary.json").exists()


# ------------------------------------------------------------------------------- runs, every strategy

@pytest.mark.parametrize("name", list(STRATEGIES))
def test_lr_drops_at_the_budget_shares_and_resumes_identically(name, tmp_path, fmnist_root, bundle,
                                                               lr_trace, monkeypatch):
    """Every step's LR is 0.1 x 0.2^(milestones reached by cost-before-step / max_cost); all four stages
    occur; the metrics rows carry budget_fraction = cost / max_cost. A run crashed after its first epoch
    and resumed takes the same LR at every step and writes the same rows."""
    overrides = BUDGET_STEPS + STRATEGIES[name]
    summary = train(tmp_path / "ref", fmnist_root, overrides, bundle)
    reference = list(lr_trace)
    assert summary["status"] == "budget" and summary["cost"] >= MAX_COST
    assert summary["config"]["lr_schedule"] == {"name": "budget_steps", "index": "budget", "kind": "steps",
                                                "milestones": [0.3, 0.6, 0.8], "gamma": 0.2}
    for cost, lr, _, _ in reference:
        assert lr == pytest.approx(expected_lr(cost / MAX_COST), rel=1e-12), (name, cost)
    stages = sorted({round(lr / BASE_LR, 6) for _, lr, _, _ in reference}, reverse=True)
    assert stages == [1.0, 0.2, 0.04, 0.008], name
    assert all(cost < MAX_COST for cost, *_ in reference[:-1])   # only the last step may start past it
    rows = read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert [r["budget_fraction"] for r in rows] == [round(r["cost"] / MAX_COST, 6) for r in rows]
    assert rows[-1]["budget_fraction"] >= 1 and rows[-1]["lr"] == reference[-1][1]

    lr_trace.clear()
    run_crashing(monkeypatch, lambda: train(tmp_path / "resumed", fmnist_root, overrides, bundle))
    first = len(lr_trace)
    assert 0 < first < len(reference)
    train(tmp_path / "resumed", fmnist_root, overrides, bundle)
    assert [(c, lr, tag) for c, lr, tag, _ in lr_trace] == [(c, lr, tag) for c, lr, tag, _ in reference], name
    assert without_timing(read_metrics(tmp_path / "resumed" / "metrics.jsonl")) == without_timing(rows)


def test_linear_schedule_reaches_zero_at_the_budget(tmp_path, fmnist_root, bundle, lr_trace):
    summary = train(tmp_path / "run", fmnist_root, ["lr_schedule=budget_linear", "train.max_epochs=null",
                                                    f"train.max_cost={MAX_COST}"], bundle)
    assert summary["status"] == "budget" and summary["steps"] == len(lr_trace) == 32
    for cost, lr, _, _ in lr_trace:
        assert lr == pytest.approx(BASE_LR * (1 - cost / MAX_COST), rel=1e-12)
    lrs = [lr for _, lr, _, _ in lr_trace]
    assert lrs[0] == BASE_LR and all(b < a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(BASE_LR * 3 * B / MAX_COST)        # the last step: one step's share left
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["lr"] == lrs[-1]


def test_time_budget_indexes_the_schedule_by_training_seconds(tmp_path, fmnist_root, bundle, lr_trace):
    """No max_cost: the share is train_s / max_time_s (not deterministic, so only its shape is checked)."""
    summary = train(tmp_path / "run", fmnist_root, ["lr_schedule=budget_linear", "train.max_epochs=2",
                                                    "train.max_time_s=3600"], bundle)
    assert summary["status"] == "completed"
    lrs = [lr for _, lr, _, _ in lr_trace]
    assert all(0.099 < lr <= BASE_LR for lr in lrs) and lrs == sorted(lrs, reverse=True)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["budget_fraction"] for r in rows] == [round(r["train_s"] / 3600, 6) for r in rows]


def test_epoch_indexed_runs_keep_their_rows(tmp_path, fmnist_root, bundle):
    """No cost or time budget: no budget_fraction; the LR still changes at epoch boundaries only."""
    train(tmp_path / "run", fmnist_root, ["lr_schedule.milestones=[1]", "train.max_epochs=2"], bundle)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.02]) and all("budget_fraction" not in r for r in rows)


# ------------------------------------------------------------------------------ peers fitted to it

def test_infobatch_budget_length_is_the_epochs_the_budget_affords():
    """max_epochs = epochs done + the full-data epochs the rest of the budget buys; InfoBatch's counter
    rule on it: epoch e prunes while e + 1 <= delta x max_epochs."""
    ib = InfoBatch(B, 0, delta=0.875)
    f = 0.04                                                       # a full epoch: 4 % of the budget (25 of them)
    assert ib.schedule_within_budget(0, 0.0, f) == (True, True)     # affords 25: 1 <= 21.875
    assert ib.schedule_within_budget(20, 0.70, f)[0]                # affords 20 + 7.5: 21 <= 24.06
    assert ib.schedule_within_budget(24, 0.88, f) == (False, False)  # affords 24 + 3: 25 > 23.625
    assert not InfoBatch(B, 0, prune_ratio=0.0).schedule_within_budget(0, 0.0, f)[0]
    whole = InfoBatch(B, 0, delta=1.0)
    assert whole.schedule_within_budget(20, 0.70, f)[0]
    assert not whole.schedule_within_budget(30, 0.99, f)[0]         # a last, partial epoch (affords 30.25)
    assert not InfoBatch(B, 0, delta=0.0).schedule_within_budget(0, 0.0, f)[0]
    assert ib.schedule_within_budget(0, 0.0, 0.0) == (True, True)   # time budget, no rate yet: epoch 0 prunes
    # pruning epochs that cost a full one: the budget affords exactly E epochs -> InfoBatch's own schedule,
    # weight resets included (delta 0.75 x 8 = 6: epoch 6 resets)
    for epochs, delta in ((8, 0.75), (30, 0.875), (200, 0.875), (10, 0.5)):
        ib = InfoBatch(B, 0, delta=delta)
        assert [ib.schedule_within_budget(e, e / epochs, 1 / epochs) for e in range(epochs)] == \
               [ib.schedule(e, epochs) for e in range(epochs)]
    assert InfoBatch(B, 0, delta=0.75).schedule_within_budget(6, 0.75, 0.125) == (False, True)


def _epochs_of(trace: list) -> dict[int, set[str]]:
    """Batch tags of each epoch (epoch = examples considered before the batch // N)."""
    out: dict[int, set[str]] = {}
    for _, _, tag, considered in trace:
        out.setdefault((considered - 1) // N, set()).add(tag)
    return out


def test_infobatch_anneals_the_last_share_of_the_epochs_its_budget_affords(tmp_path, fmnist_root, bundle,
                                                                         lr_trace):
    """Epoch-indexed InfoBatch, 8 epochs, delta 0.75: epochs 0-5 prune (epoch 0 has no scores yet), 6-7
    train on all. Given exactly that run's cost, the budget-fitted run starts its full-data tail at epoch 6
    or 5 (its pruning epochs cost less than a full one) and keeps it to the end; the epochs around the
    switch obey the rule e + 1 <= 0.75 x (e + budget left / a full epoch's cost), read from the trace."""
    overrides = ["strategy=infobatch", "strategy.delta=0.75"]
    epoch_run = train(tmp_path / "epochs", fmnist_root, overrides + ["train.max_epochs=8"], bundle)
    tags = _epochs_of(lr_trace)
    assert [tags[e] for e in range(8)] == [{"pruned"}] * 6 + [{"full"}] * 2
    budget = epoch_run["cost"]
    lr_trace.clear()
    fitted = train(tmp_path / "fitted", fmnist_root, overrides + ["lr_schedule=budget_steps", "train.max_epochs=null",
                                                                  f"train.max_cost={budget}"], bundle)
    assert fitted["status"] == "budget" and fitted["cost"] >= budget
    tags = _epochs_of(lr_trace)
    full = [e for e in sorted(tags) if tags[e] == {"full"}]
    assert full and full == list(range(full[0], max(tags) + 1)) and full[0] in (5, 6)
    assert all(tags[e] == {"pruned"} for e in range(full[0]))
    spent = {}                                          # cost at each epoch's start (no selection forwards)
    for cost, _, _, considered in lr_trace:
        spent.setdefault((considered - 1) // N, cost)

    def affords(e: int) -> float:
        return e + (budget - spent[e]) / EPOCH_COST
    first = full[0]
    assert first + 1 > 0.75 * affords(first) and first <= 0.75 * affords(first - 1)


def test_composer_selects_inside_its_budget_window(tmp_path, fmnist_root, bundle, lr_trace):
    """Budget-fitted Composer-SB: a batch is selected (keep 0.5: 32 of 64) only when the budget share spent
    before it lies in [start, end) = [0.5, 0.9), and then unless it is an interrupt batch ((i+1) % 2 == 0)."""
    summary = train(tmp_path / "run", fmnist_root, ["strategy=composer_sb", "lr_schedule=budget_steps",
                                                    "train.max_epochs=null", f"train.max_cost={MAX_COST}"],
                    bundle)
    assert summary["status"] == "budget"
    selected = 0
    for cost, _, tag, considered in lr_trace:
        before = (cost - B if tag == "selected" else cost) / MAX_COST      # share spent before its selection forward
        index = (considered - 1) % N // B
        assert (tag == "selected") == (0.5 <= before < 0.9 and (index + 1) % 2 != 0), (before, index, tag)
        selected += tag == "selected"
    assert selected >= 4
    assert summary["examples_forwarded"] - summary["examples_backpropped"] == selected * B


@pytest.mark.slow
@pytest.mark.parametrize("name", ["infobatch", "composer_sb"])
def test_two_ranks_follow_the_budget_together(name, tmp_path, fmnist_root):
    """torchrun K = 2: the budget share (a collective) is read before every step, at InfoBatch's epoch starts
    and before every Composer batch on both ranks alike; the run ends in its last LR stage."""
    from test_distributed import torchrun

    proc = torchrun(str(tmp_path / "dp"), fmnist_root, [f"strategy={name}", "lr_schedule=budget_steps",
                                                        "train.max_epochs=null", f"train.max_cost={MAX_COST}",
                                                        "train.eval_every=1"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["status"] == "budget" and summary["world_size"] == 2 and summary["cost"] >= MAX_COST
    rows = read_metrics(tmp_path / "dp" / "metrics.jsonl")
    lrs = [r["lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(BASE_LR * GAMMA ** 3)
    assert rows[-1]["budget_fraction"] >= 1

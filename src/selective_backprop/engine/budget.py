"""Budgets: when a run stops (epochs, training seconds, cost) and the cost axis itself.

Cost is counted in forward-equivalent units: every example that gets a selection forward costs
`train.cost.select_forward` (default 1), every example that gets a training forward + backward costs
`train.cost.train_example` (default 3, backward ≈ 2 × forward). Evaluation is excluded. It is a pure
function of the run counters, which are checkpointed, so a resumed run's cost is exact.

A run stops at the first of `train.max_epochs`, `train.max_time_s`, `train.max_cost` that is set.

Equal-budget sweeps: `train.budget_from=DIR` (with `train.budget_axis=cost|time`) gives a
non-Traditional run the final cost (or `train_s`) of the finished Traditional run found under DIR
with the same dataset config, model config, LR schedule and seed (see `find_reference_run`).

Budget-fitted schedules (`lr_schedule.index: budget`): the share of the budget spent is the schedule's
position, 1.0 being `train.max_cost` (deterministic; preferred when both are set) or else
`train.max_time_s`; a borrowed budget (`train.budget_from`) counts. `BudgetClock` reads it for the
trainer (LR before every step) and the peers fitted to the budget (strategies/infobatch.py, composer_sb.py).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from selective_backprop.errors import ConfigError
from selective_backprop.record import (DEFAULT_SELECT_FORWARD, DEFAULT_TRAIN_EXAMPLE, FINISHED,  # noqa: F401
                                       SUMMARY_FILE, CostWeights, cost_from_record)

log = logging.getLogger(__name__)

AXES = ("cost", "time")
TRADITIONAL = "traditional"
_DATASET_MACHINE_KEYS = ("root", "download")     # dataset keys that do not change what a run computes


@dataclass(frozen=True)
class Budget:
    """The stopping budgets of a run (None = not set) and where a borrowed one came from."""

    max_epochs: float | None
    max_time_s: float | None
    max_cost: float | None
    weights: CostWeights = field(default_factory=CostWeights)
    source: dict | None = None        # budget_from: {"from", "axis", "run_dir", "value"}

    def record(self) -> dict:
        """The summary.json `budget` entry."""
        return {"max_epochs": self.max_epochs, "max_time_s": self.max_time_s, "max_cost": self.max_cost,
                "cost_weights": {"select_forward": self.weights.select_forward,
                                 "train_example": self.weights.train_example},
                "source": self.source}

    @property
    def schedule_axis(self) -> str | None:
        """What a budget-indexed schedule counts as 1.0: "cost" when max_cost is set (deterministic, exact
        on resume), else "time" when max_time_s is set, else None. With both set, cost wins (the run still
        stops at whichever is spent first)."""
        if self.max_cost is not None:
            return "cost"
        return "time" if self.max_time_s is not None else None

    def fraction(self, cost: float, train_s: float) -> float | None:
        """Share of the schedule's budget spent at `cost` / `train_s` (None: no cost or time budget)."""
        axis = self.schedule_axis
        if axis is None:
            return None
        return cost / self.max_cost if axis == "cost" else train_s / self.max_time_s


def check_schedule_budget(budget: Budget, index: str) -> None:
    """A budget-indexed LR schedule needs a cost or time budget to be a share of: one-line ConfigError."""
    if index == "budget" and budget.schedule_axis is None:
        raise ConfigError("lr_schedule.index=budget: the schedule is a share of the run's cost or time budget, but "
                          "train.max_cost and train.max_time_s are null (train.budget_from gives none here); "
                          "accepted: train.max_cost or train.max_time_s set to a number > 0, train.budget_from=DIR "
                          "(non-Traditional runs), or lr_schedule.index=epoch")


class BudgetClock:
    """The share of its budget (Budget.schedule_axis) a run has spent, read by a budget-indexed LR schedule
    and by the strategies fitted to it. `cost`, `train_s` and `backpropped` give the run's agreed values
    (collectives under data parallelism: every rank calls them equally often); `budget` the current budget
    (a resumed run may restore a borrowed one)."""

    def __init__(self, budget: Callable[[], Budget], cost: Callable[[], float], train_s: Callable[[], float],
                 backpropped: Callable[[], int], epoch_examples: int):
        self.budget, self.cost, self.train_s = budget, cost, train_s
        self.backpropped, self.epoch_examples = backpropped, epoch_examples

    def fraction(self) -> float:
        """Share of the budget spent so far (cost / max_cost, else train_s / max_time_s)."""
        b = self.budget()
        return self.cost() / b.max_cost if b.schedule_axis == "cost" else self.train_s() / b.max_time_s

    def full_epoch_share(self) -> float:
        """The budget share of one epoch that trains every example once without selection forwards: exact
        on the cost axis (train.cost.train_example x examples / max_cost); on the time axis estimated from
        the training seconds per backpropped example so far (0 before the first step)."""
        b = self.budget()
        if b.schedule_axis == "cost":
            return b.weights.train_example * self.epoch_examples / b.max_cost
        done = self.backpropped()
        return 0.0 if done == 0 else self.train_s() / done * self.epoch_examples / b.max_time_s


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, dotted, default=None)
    return default if value is None else value


def cost_weights(cfg: Any) -> CostWeights:
    return CostWeights(float(_get(cfg, "train.cost.select_forward", DEFAULT_SELECT_FORWARD)),
                       float(_get(cfg, "train.cost.train_example", DEFAULT_TRAIN_EXAMPLE)))


def cost_from_counts(counts: dict, weights: CostWeights) -> float:
    """Cost of a run from its counters (Trainer._counts: global sums under data parallelism)."""
    return weights.cost(int(counts["select_forwarded"]), int(counts["backpropped"]))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _run_identity(config: dict, seed: Any) -> tuple:
    """What a reference run must share with the run borrowing its budget."""
    dataset = {k: v for k, v in (config.get("dataset") or {}).items() if k not in _DATASET_MACHINE_KEYS}
    lr_schedule = (config.get("lr_schedule") or {}).get("name")
    return (json.dumps(dataset, sort_keys=True), json.dumps(config.get("model"), sort_keys=True),
            lr_schedule, seed)


def find_reference_run(folder: Path, cfg: Any) -> tuple[Path, dict]:
    """The one finished Traditional run under `folder` (summary.json, searched recursively) with this
    run's dataset config (subset included), model config, LR schedule and seed.

    Raises ConfigError naming train.budget_from when there is none, or more than one.
    """
    want = _run_identity(_plain(cfg), int(_get(cfg, "seed", 0)))
    matches = []
    for path in sorted(folder.rglob(SUMMARY_FILE)):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(summary, dict) or summary.get("strategy") != TRADITIONAL:
            continue
        if summary.get("status") not in FINISHED or not isinstance(summary.get("config"), dict):
            continue
        if _run_identity(summary["config"], summary.get("seed")) == want:
            matches.append((path.parent, summary))
    what = (f"finished Traditional run with dataset {cfg.dataset.name} (subset {_get(cfg, 'dataset.subset')}), "
            f"model {cfg.model.name}, lr_schedule {cfg.lr_schedule.name}, seed {int(_get(cfg, 'seed', 0))}")
    if not matches:
        raise ConfigError(f"train.budget_from={str(folder)!r}: holds no {what}; accepted: a folder holding exactly one "
                          f"(run Traditional first)")
    if len(matches) > 1:
        raise ConfigError(f"train.budget_from={str(folder)!r}: holds {len(matches)} runs matching (a {what}): "
                          f"{', '.join(str(m[0]) for m in matches[:3])}; accepted: a folder holding exactly one")
    return matches[0]


def _borrowed(cfg: Any, weights: CostWeights) -> tuple[str, float, dict]:
    """(axis, value, source) of train.budget_from's reference run."""
    folder = Path(str(_get(cfg, "train.budget_from")))
    axis = str(_get(cfg, "train.budget_axis", "cost"))
    if not folder.is_dir():
        raise ConfigError(f"train.budget_from={str(folder)!r}: not a directory; accepted: a folder of run "
                          f"records holding the matching Traditional run, or null")
    run_dir, summary = find_reference_run(folder, cfg)
    value = cost_from_record(summary, weights) if axis == "cost" else summary.get("train_s")
    if value is None or not math.isfinite(float(value)) or float(value) <= 0:
        raise ConfigError(f"train.budget_from={str(folder)!r}: the Traditional run {run_dir} records no usable "
                          f"{'cost counters' if axis == 'cost' else 'train_s'}; accepted: a finished run record")
    source = {"from": str(folder), "axis": axis, "run_dir": str(run_dir), "value": float(value),
              "config_key": summary.get("config_key")}
    return axis, float(value), source


def resolve_budget(cfg: Any) -> Budget:
    """The run's budgets: train.max_* as configured, with train.budget_from's borrowed cost or time in
    place of max_cost / max_time_s for a non-Traditional strategy (a Traditional run ignores it).
    Raises ConfigError when no budget at all is set."""
    weights = cost_weights(cfg)
    max_epochs = OmegaConf.select(cfg, "train.max_epochs", default=None)
    max_time = OmegaConf.select(cfg, "train.max_time_s", default=None)
    max_cost = OmegaConf.select(cfg, "train.max_cost", default=None)
    source = None
    if _get(cfg, "train.budget_from") is not None:
        if _get(cfg, "strategy.name") == TRADITIONAL:
            log.info("train.budget_from is ignored by a Traditional run (it is the reference)")
        else:
            axis, value, source = _borrowed(cfg, weights)
            if axis == "cost":
                max_cost = value
            else:
                max_time = value
            if max_epochs is not None:
                log.warning("train.budget_from with train.max_epochs=%s: the run stops at whichever comes first; "
                            "set train.max_epochs=null for an equal-%s comparison", max_epochs, axis)
    if max_epochs is None and max_time is None and max_cost is None:
        raise ConfigError("no budget: train.max_epochs and train.max_time_s are null, and so is train.max_cost: the "
                          "run would never stop; accepted: at least one of them set to a number > 0 "
                          "(or train.budget_from)")
    return Budget(None if max_epochs is None else float(max_epochs), None if max_time is None else float(max_time),
                  None if max_cost is None else float(max_cost), weights, source)

"""Budgets: when a run stops (epochs, training seconds, cost) and the cost axis itself.

Cost is counted in forward-equivalent units: every example that gets a selection forward costs
`train.cost.select_forward` (default 1), every example that gets a training forward + backward costs
`train.cost.train_example` (default 3, backward ≈ 2 × forward). Evaluation is excluded. It is a pure
function of the run counters, which are checkpointed, so a resumed run's cost is exact.

A run stops at the first of `train.max_epochs`, `train.max_time_s`, `train.max_cost` that is set.

Equal-budget sweeps: `train.budget_from=DIR` (with `train.budget_axis=cost|time`) gives a
non-Traditional run the final cost (or `train_s`) of the finished Traditional run found under DIR
with the same dataset config, model config, LR schedule and seed (see `find_reference_run`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

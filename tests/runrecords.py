"""Hand-made run records (summary.json + metrics.jsonl, docs/run_record.md) for the analysis tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_run(root: Path, name: str, strategy: str, seed: int, costs: list[float], errors: list[float], *,
              params: dict[str, Any] | None = None, subset: int = 1000, schedule: str = "fashion_mnist_e30",
              s_per_unit: float = 0.01, timing: dict[str, Any] | None = None, loadavg: float | None = None,
              old_format: bool = False, epochs: list[float] | None = None, eval_every_cost: Any = None) -> Path:
    """A finished run at ``root/name``: one evaluation per epoch at the given costs (``train_s`` =
    cost × ``s_per_unit``) and test errors; ``epochs`` gives each evaluation's epoch instead and
    ``eval_every_cost`` puts the run on that cost grid (``train.eval_every_cost``; ``n_train`` = subset). ``timing`` goes into summary.json (and ``loadavg`` into every
    metrics row) as recent records have it; ``old_format`` drops ``config_key``, ``cost`` and
    ``device_name``, as records made before they existed."""
    run = root / name
    run.mkdir(parents=True)
    params = params or {}
    config = {"seed": seed, "dataset": {"name": "fashion_mnist", "subset": subset,
                                        "augment": {"crop_padding": 0, "hflip": False, "cutout": 0}},
              "model": {"name": "resnet8", "width": 16}, "lr_schedule": {"name": schedule},
              "strategy": {"name": strategy, **params}}
    if eval_every_cost is not None:
        config["train"] = {"eval_every_cost": eval_every_cost}
    epochs = epochs or [i + 1.0 for i in range(len(costs))]
    rows = []
    for i, (c, e) in enumerate(zip(costs, errors)):
        row = {"epoch": epochs[i], "step": 10 * (i + 1), "train_s": c * s_per_unit, "eval_s": 1.0, "cost": c,
               "test_error": e, "test_loss": 1.0, "train_loss": 0.1, "examples_forwarded": int(c),
               "examples_backpropped": 0, "phase_s": {}}
        if loadavg is not None:
            row["loadavg"] = loadavg
        if old_format:
            row.pop("cost")
            row["examples_forwarded"] = int(c)          # the cost the counters give: forwarded − 0 + 3 × 0
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": "completed", "dataset": "fashion_mnist", "model": "resnet8", "strategy": strategy,
               "lr_schedule": schedule, "seed": seed, "config": config,
               "config_key": f"{strategy}-{json.dumps(params, sort_keys=True)}-{subset}-{schedule}",
               "final_test_error": errors[-1], "best_test_error": min(errors), "train_s": costs[-1] * s_per_unit,
               "epochs": float(epochs[-1]), "n_train": subset, "steps": 10 * len(costs), "examples_forwarded": int(costs[-1]),
               "examples_backpropped": 0, "cost": costs[-1], "strategy_params": params, "phase_s": {},
               "device_name": "cpu"}
    if timing is not None:
        summary["timing"] = timing
    if old_format:
        for key in ("config_key", "cost", "device_name"):
            summary.pop(key)
    (run / "summary.json").write_text(json.dumps(summary))
    return run

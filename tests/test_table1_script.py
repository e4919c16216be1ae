"""scripts/table1_cpu.sh (make reproduce-table1-cpu) end to end at toy size: every run of the layout
finishes, each borrows its schedule's Traditional cost, evaluates on the cost grid, the phases never
overlap, and the report scripts read the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from selective_backprop.record import read_metrics

STRATEGIES = ("traditional", "sb", "stale_sb_n2", "stale_sb_n3", "kath18", "uniform", "infobatch", "composer_sb")
SCHEDULES = ("fashion_mnist_e30", "fashion_mnist_e30_s2")
SWEEPS = ("stale_sb_n4_s0", "sb_sel0.2_s0", "sb_sel0.5_s0", "sb_sel0.65_s0",
          *(f"noise{p}/{s}_s0" for p in ("0.01", "0.1", "0.2") for s in ("traditional", "sb")))
# toy size; the divergence rule (error at chance after the first LR stage) is off: a 64-example width-4
# model sits at chance for stretches, and the cost grid samples points inside epochs
TOY = ("dataset.subset=64 dataset.test_subset=64 model.width=4 train.batch_size=16 train.tensorboard=false "
       "train.diverge_factor=null")
# the script's phases, in order: no run of one overlaps a run of another
PHASES = ([f"runs/{sch}/traditional_s0" for sch in SCHEDULES],
          [f"runs/{sch}/{s}_s0" for sch in SCHEDULES for s in STRATEGIES[1:]],
          [f"sweeps/{s}" for s in SWEEPS[:4]],
          [f"sweeps/noise{p}/traditional_s0" for p in ("0.01", "0.1", "0.2")],
          [f"sweeps/noise{p}/sb_s0" for p in ("0.01", "0.1", "0.2")])


def span(run_dir: Path) -> tuple[float, float]:
    """(start, end) of a run: Hydra writes .hydra/config.yaml as the job starts, summary.json is the
    run's last write."""
    return (run_dir / ".hydra" / "config.yaml").stat().st_mtime, (run_dir / "summary.json").stat().st_mtime


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                    key=lambda e: (e[0], e[1]))       # an end before a start at the same instant
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_table1_cpu_script_runs_the_whole_layout_at_equal_cost(tmp_path: Path) -> None:
    out = tmp_path / "t1"
    env = {**os.environ, "SEEDS": "0", "JOBS": "2", "OMP_NUM_THREADS": "1", "EXTRA_OVERRIDES": TOY,
           "SB_TRAIN": f"{sys.executable} -m selective_backprop.train"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "table1_cpu.sh"), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "FAILED" not in proc.stderr, proc.stderr[-2000:]
    runs = {f"runs/{sch}/{s}_s0": sch for sch in SCHEDULES for s in STRATEGIES}
    runs.update({f"sweeps/{s}": "fashion_mnist_e30" for s in SWEEPS})
    assert sorted(runs) == sorted(name for phase in PHASES for name in phase)
    spans = [[span(out / name) for name in phase] for phase in PHASES]
    for earlier, later in zip(spans, spans[1:]):
        assert max(end for _, end in earlier) < min(start for start, _ in later)
    assert most_at_once([s for phase in spans for s in phase]) <= 2
    grid = 64 * 3                                                    # train.eval_every_cost=epoch
    for name, schedule in runs.items():
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] in ("completed", "budget"), name
        assert summary["lr_schedule"] == schedule and summary["config"]["dataset"]["subset"] == 64, name
        overrides = yaml.safe_load((out / name / ".hydra" / "overrides.yaml").read_text())
        assert "train.eval_every_cost=epoch" in overrides and not any("test_subset=2000" in o for o in overrides)
        rows = read_metrics(out / name / "metrics.jsonl")
        assert all(row["cost"] >= i * grid for i, row in enumerate(rows[:-1], 1)), name
        # one row per grid point a step reached, and the last (selection forwards may end a run past one)
        assert summary["cost"] // grid - 1 <= len(rows) <= summary["cost"] // grid + 1, name
        assert summary["timing"]["omp_num_threads"] == "1" and summary["timing"]["threads"] == 1, name
        if summary["strategy"] == "traditional":
            assert summary["status"] == "completed" and summary["epochs"] == 30.0, name
            continue
        reference = out / Path(name).parent / "traditional_s0" / "summary.json"
        if not reference.exists():                                  # sweeps borrow from runs/<e30>
            reference = out / "runs" / schedule / "traditional_s0" / "summary.json"
        budget = json.loads(reference.read_text())["cost"]
        assert summary["budget"]["max_cost"] == budget, name
        # stops at the first step past the budget: at most one packed batch (16 x 3) plus a selection chunk
        assert summary["cost"] <= budget + 16 * 3 + 48, name
        if summary["strategy"] in ("infobatch", "composer_sb"):
            assert summary["epochs"] == 30.0, name                # their own schedule, under the cap
        else:
            assert summary["status"] == "budget" and summary["cost"] >= budget, name
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_strategies.py"), str(out / "runs"),
                             "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    configs = [line.split("|")[1].strip() for line in (tmp_path / "report" / "comparison.md").read_text().splitlines()
               if line.startswith("| ") and not line.startswith("| strategy")]
    assert configs == ["Traditional", "SB", "Stale-SB n=2", "Stale-SB n=3", "Kath18", "Uniform", "InfoBatch",
                       "Composer-SB"] * 2

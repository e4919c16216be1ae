"""The error-vs-budget frontier (analysis/frontier.py, scripts/frontier.py, scripts/frontier.sh).

Fixture records with hand-picked errors give hand-checked paired differences (t quantiles: t(0.95, 2) =
2.919986, t(0.95, 1) = 6.313752); the sweep script runs end to end at toy size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from selective_backprop.analysis.frontier import frontier_csv, frontier_markdown, frontier_table
from selective_backprop.analysis.records import load_runs

POINT = {"name": "fashion_mnist", "subset": 6000, "test_subset": None,
         "augment": {"crop_padding": 0, "hflip": False, "cutout": 0}}
MODEL = {"name": "resnet8", "width": 16}
EPOCH_SCHEDULE = {"name": "fashion_mnist_e30", "milestones": [9, 18, 24], "gamma": 0.2, "epochs": 30}
BUDGET_SCHEDULE = {"name": "budget_steps", "index": "budget", "kind": "steps", "milestones": [0.3, 0.6, 0.8],
                   "gamma": 0.2}
REFERENCE_COST = 1000.0
# final errors per (budget, label): seeds 0, 1, 2
ERRORS = {
    (0.5, "traditional"): [0.20, 0.22, 0.21],
    (0.5, "sb"): [0.19, 0.20, 0.18],
    (0.5, "uniform"): [0.21, 0.23, 0.20],
    (0.5, "stale_sb_n2"): [0.20, 0.20],
    (1.0, "traditional"): [0.10, 0.11, 0.12],
    (1.0, "sb"): [0.12, 0.13, 0.14],
    (1.0, "uniform"): [0.11, 0.11, 0.11],
}
T2 = 2.919986


def write_run(folder: Path, strategy: str, seed: int, error: float, schedule: dict, max_cost: float | None,
              params: dict | None = None, dataset: dict | None = None) -> None:
    """A finished run record as the trainer writes it (summary.json + one metrics row)."""
    config = {"dataset": dataset or POINT, "model": MODEL, "lr_schedule": schedule, "seed": seed,
              "strategy": {"name": strategy, **(params or {})}}
    cost = max_cost if max_cost is not None else REFERENCE_COST
    summary = {"status": "budget" if max_cost else "completed", "strategy": strategy, "seed": seed,
               "dataset": "fashion_mnist", "model": "resnet8", "lr_schedule": schedule["name"],
               "config": config, "config_key": f"{strategy}-{json.dumps(params, sort_keys=True)}-{schedule['name']}"
                                               f"-{max_cost}-{(dataset or POINT)['subset']}",
               "strategy_params": params or {}, "final_test_error": error, "best_test_error": error,
               "train_s": 10.0, "epochs": 3.0, "steps": 30, "examples_forwarded": 100, "examples_backpropped": 100,
               "cost": cost, "budget": {"max_epochs": None, "max_time_s": None, "max_cost": max_cost}}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 3.0, "step": 30, "test_error": error,
                                                      "cost": cost, "train_s": 10.0}) + "\n")


@pytest.fixture
def records(tmp_path: Path) -> Path:
    root = tmp_path / "frontier"
    write_run(root / "reference" / "traditional_s0", "traditional", 0, 0.105, EPOCH_SCHEDULE, None)
    for (budget, label), errors in ERRORS.items():
        strategy, params = ("stale_sb", {"staleness": 2}) if label == "stale_sb_n2" else (label, {})
        for seed, error in enumerate(errors):
            write_run(root / "runs" / f"b{budget}" / f"{label}_s{seed}", strategy, seed, error, BUDGET_SCHEDULE,
                      budget * REFERENCE_COST, params)
    # an epoch-schedule SB run (not on the frontier) and a budget run at a point without a reference
    write_run(root / "other" / "sb_epochs", "sb", 0, 0.3, EPOCH_SCHEDULE, None)
    write_run(root / "other" / "orphan", "sb", 0, 0.3, BUDGET_SCHEDULE, 500.0, dataset={**POINT, "subset": 2000})
    return root


def row(df, budget: float, label: str):
    sel = df[(df["budget"] == budget) & (df["label"] == label)]
    assert len(sel) == 1, (budget, label)
    return sel.iloc[0]


def test_frontier_table_hand_checked(records):
    df = frontier_table(load_runs(records))
    assert list(zip(df["budget"], df["label"])) == [
        (0.5, "Traditional"), (0.5, "SB"), (0.5, "Stale-SB n=2"), (0.5, "Uniform"),
        (1.0, "Traditional"), (1.0, "SB"), (1.0, "Uniform")]
    assert set(df["point"]) == {"fashion_mnist n6000 resnet8-w16 noaug"} and set(df["schedule"]) == {"budget_steps"}
    assert (df["reference_cost"] == REFERENCE_COST).all() and (df["reference_error"] == 0.105).all()
    assert row(df, 0.5, "SB")["budget_cost"] == 500.0

    sb = row(df, 0.5, "SB")                   # diffs vs Traditional -0.01, -0.02, -0.03: sd 0.01
    half = T2 * 0.01 / 3 ** 0.5
    assert sb["error"] == pytest.approx(0.19) and sb["error_sd"] == pytest.approx(0.01)
    assert (sb["vs_traditional"], sb["vs_traditional_low"], sb["vs_traditional_high"]) == pytest.approx(
        (-0.02, -0.02 - half, -0.02 + half), abs=1e-6)
    assert sb["vs_traditional_seeds"] == 3 and sb["verdict_traditional"] == "better"
    half_u = T2 * (1 / 3) ** 0.5 * 0.01 / 3 ** 0.5   # vs uniform: -0.02, -0.03, -0.02 (sd 0.01/sqrt 3)
    assert (sb["vs_uniform"], sb["vs_uniform_low"], sb["vs_uniform_high"]) == pytest.approx(
        (-0.07 / 3, -0.07 / 3 - half_u, -0.07 / 3 + half_u), abs=1e-6)
    assert sb["verdict_uniform"] == "better"

    uni = row(df, 0.5, "Uniform")             # vs Traditional 0.01, 0.01, -0.01
    assert uni["vs_traditional"] == pytest.approx(0.01 / 3) and uni["verdict_traditional"] == "indistinguishable"
    assert uni["verdict_uniform"] == "" and uni["vs_uniform_seeds"] == 0
    stale = row(df, 0.5, "Stale-SB n=2")      # two seeds: 0, -0.02 -> t(0.95, 1)
    half2 = 6.313752 * 0.02 / 2 ** 0.5 / 2 ** 0.5
    assert (stale["vs_traditional"], stale["vs_traditional_high"]) == pytest.approx((-0.01, -0.01 + half2), abs=1e-5)
    assert stale["vs_traditional_seeds"] == 2 and stale["verdict_traditional"] == "indistinguishable"

    trad = row(df, 1.0, "Traditional")
    assert trad["verdict_traditional"] == "" and trad["vs_uniform"] == pytest.approx(0.0, abs=1e-12)
    worse = row(df, 1.0, "SB")                # +0.02 on every seed: a zero-width interval above 0
    assert worse["vs_traditional"] == pytest.approx(0.02) and worse["verdict_traditional"] == "worse"


def test_frontier_markdown_and_csv(records):
    df = frontier_table(load_runs(records))
    md = frontier_markdown(df)
    assert "## fashion_mnist n6000 resnet8-w16 noaug · budget_steps" in md
    assert "Budget 1 = 1,000 cost units: Traditional through fashion_mnist_e30 (1 seed(s), final error 10.50 %)" in md
    half = 100 * T2 * 0.01 / 3 ** 0.5
    assert f"| 0.5 | SB | 3 | 19.00 ± 1.00 | -2.00 [{-2 - half:.2f}, {-2 + half:.2f}] | better |" in md
    assert "| 0.5 | Uniform | 3 | 21.33 ± 1.53 | +0.33 [-1.61, +2.28] | indistinguishable | – | – |" in md
    assert "| 1 | SB | 3 | 13.00 ± 1.00 | +2.00 [+2.00, +2.00] | worse |" in md
    csv = frontier_csv(df).splitlines()
    assert csv[0].startswith("point,schedule,budget,budget_cost,strategy,label,n_seeds,error,") and len(csv) == 1 + len(df)
    assert ",500.0,stale_sb,Stale-SB n=2,2,0.2," in csv[3]


def test_frontier_plot_draws_intervals_as_bands_or_at_a_lone_budget_as_bars(records):
    from matplotlib.collections import LineCollection, PolyCollection

    from selective_backprop.analysis.frontier import plot_frontier

    def drawn(df):
        left, right = plot_frontier(df).axes
        kinds = [[sum(isinstance(c, kind) for c in ax.collections) for kind in (PolyCollection, LineCollection)]
                 for ax in (left, right)]
        return kinds, right

    df = frontier_table(load_runs(records))
    # Traditional, SB and uniform at two budgets: bands; Stale-SB n=2 (2 seeds) only at 0.5: a bar
    (left, right), _ = drawn(df)
    assert left == [3, 1] and right == [2, 1]   # the right panel: differences from Traditional only
    (left, right), ax = drawn(df[df["budget"] == 0.5])   # one budget: a bar per configuration
    assert left == [0, 4] and right == [0, 3]
    xs = sorted(float(line.get_xdata()[0]) for line in ax.get_lines() if len(line.get_xdata()) == 1)
    assert len(xs) == 3 and len(set(xs)) == 3 and min(xs) < 0.5 < max(xs)   # dodged around the budget


def test_frontier_script_writes_the_report(records, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "frontier.py"), str(records), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"frontier.csv", "frontier.md", "frontier.png", "frontier.pdf"}
    assert (out / "frontier.png").stat().st_size > 10_000
    assert "| 0.5 | SB |" in proc.stdout
    assert "no reference Traditional run" in proc.stderr and "orphan" in proc.stderr


def test_frontier_script_without_a_reference_fails_in_one_line(records, tmp_path):
    import shutil
    shutil.rmtree(records / "reference")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "frontier.py"), str(records),
                           "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no budget-fitted run")


TOY = "dataset.subset=64 dataset.test_subset=64 model.width=4 train.batch_size=16 train.tensorboard=false"


@pytest.mark.slow
def test_frontier_sweep_script_end_to_end_at_toy_size(tmp_path):
    """POINT=6k at toy size, two seeds, budget 0.5 (the fixture tests above cover several budgets): the
    reference finishes its 30 epochs, every run stops at half its cost with a budget-fitted schedule and
    one evaluation, and the report reads them. Re-running skips a finished run."""
    out = tmp_path / "f"
    env = {**os.environ, "POINT": "6k", "SEEDS": "0 1", "JOBS": "2", "FRACTIONS": "0.5",
           "STRATEGIES": "traditional uniform infobatch", "OMP_NUM_THREADS": "1", "EXTRA_OVERRIDES": TOY,
           "PYTHON": sys.executable}
    script = ["bash", str(REPO / "scripts" / "frontier.sh"), str(out)]
    proc = subprocess.run(script, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "FAILED" not in proc.stderr, proc.stderr[-2000:]
    ref = json.loads((out / "reference" / "traditional_s0" / "summary.json").read_text())
    assert ref["status"] == "completed" and ref["epochs"] == 30 and ref["cost"] == 30 * 64 * 3
    for f in ("0.5",):
        for label in ("traditional", "uniform", "infobatch"):
            for seed in (0, 1):
                run_dir = out / "runs" / f"b{f}" / f"{label}_s{seed}"
                summary = json.loads((run_dir / "summary.json").read_text())
                assert summary["status"] == "budget" and summary["lr_schedule"] == "budget_steps", run_dir
                assert summary["budget"]["max_cost"] == float(f) * ref["cost"], run_dir
                assert summary["cost"] >= float(f) * ref["cost"] and summary["config"]["dataset"]["augment"]["hflip"] is False
                rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                assert len(rows) == 1 and rows[0]["budget_fraction"] >= 1, run_dir
    again = subprocess.run(script, env={**env, "SEEDS": "1", "STRATEGIES": "uniform"}, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "FAILED" not in again.stderr
    assert "already holds this run, finished" in (out / "logs" / "runs_b0.5_uniform_s1.log").read_text()
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "frontier.py"), str(out), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "report" / "frontier.csv").read_text().splitlines()
    assert len(table) == 1 + 3 and ",uniform,Uniform,2," in table[2]

"""The strategy comparison (analysis/compare.py, scripts/compare_strategies.py) on hand-made run
records with known answers: configurations of one strategy stay apart, speedups and spreads follow
Table 1's definitions, the uniform ratio and the seed statistics are right."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from selective_backprop.analysis.compare import compare_markdown, compare_table
from selective_backprop.analysis.regime import config_label
from selective_backprop.analysis.records import load_runs

from conftest import REPO


def _write_run(root: Path, name: str, strategy: str, seed: int, costs: list[float], errors: list[float],
               params: dict | None = None, backpropped: int = 0) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": seed, "dataset": {"name": "fashion_mnist", "subset": 1000,
                                        "augment": {"crop_padding": 0, "hflip": False, "cutout": 0}},
              "model": {"name": "resnet8", "width": 16}, "lr_schedule": {"name": "fashion_mnist_e30"},
              "strategy": {"name": strategy, **(params or {})}}
    rows = [{"epoch": i + 1.0, "step": 10 * (i + 1), "train_s": c / 100, "eval_s": 1.0, "cost": c,
             "test_error": e, "test_loss": 1.0, "train_loss": 0.1, "examples_forwarded": 0,
             "examples_backpropped": backpropped, "phase_s": {}} for i, (c, e) in enumerate(zip(costs, errors))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": "completed", "dataset": "fashion_mnist", "model": "resnet8", "strategy": strategy,
               "lr_schedule": "fashion_mnist_e30", "seed": seed, "config": config,
               "config_key": f"{strategy}-{json.dumps(params, sort_keys=True)}",
               "final_test_error": errors[-1], "best_test_error": min(errors), "train_s": costs[-1] / 100,
               "epochs": float(len(costs)), "steps": 10 * len(costs), "examples_forwarded": backpropped,
               "examples_backpropped": backpropped, "cost": costs[-1], "strategy_params": params or {},
               "phase_s": {}}
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in (0, 1):      # Traditional: final 0.20 on both seeds, reaches 0.22 (x1.1) at 600
        _write_run(root, f"trad_s{seed}", "traditional", seed, [300, 600, 900], [0.30, 0.22, 0.20], backpropped=300)
    # Stale-SB n=2 reaches 0.22 at 300 on both seeds (2x); n=3 at 300 / 600 (mean 450: 1.33x)
    for seed in (0, 1):
        _write_run(root, f"stale2_s{seed}", "stale_sb", seed, [300, 600, 900], [0.22, 0.21, 0.21],
                   {"staleness": 2}, backpropped=100 + 20 * seed)
    _write_run(root, "stale3_s0", "stale_sb", 0, [300, 600, 900], [0.22, 0.21, 0.21], {"staleness": 3})
    _write_run(root, "stale3_s1", "stale_sb", 1, [300, 600, 900], [0.25, 0.22, 0.21], {"staleness": 3})
    # uniform: reaches 0.22 at 900 on both seeds (0.67x)
    for seed in (0, 1):
        _write_run(root, f"uniform_s{seed}", "uniform", seed, [300, 600, 900], [0.30, 0.25, 0.22],
                   {"selectivity": 1 / 3})
    # SB: one seed reaches 0.22, the other never does
    _write_run(root, "sb_s0", "sb", 0, [300, 600, 900], [0.30, 0.22, 0.22], {"selectivity": 1 / 3})
    _write_run(root, "sb_s1", "sb", 1, [300, 600, 900], [0.30, 0.26, 0.24], {"selectivity": 1 / 3})
    return root


def test_configurations_stay_apart_with_their_paired_speedups(runs: Path) -> None:
    """Each seed against the same seed's Traditional run (target 0.22 at x1.1, reached at 600 by both):
    Stale-SB n=2 2.0 / 2.0 (faster, interval [2, 2]); n=3 2.0 / 1.0: sqrt(2), logs ln 2 and 0, half-width
    t(0.95, 1) x ln 2 / 2 = 2.188180; uniform 900 on both seeds (slower); SB seed 1 never reaches 0.22: its
    speedup is at most 600 / 900 (its whole cost), so SB's estimate is an upper bound (1/2 seeds)."""
    df = compare_table(load_runs(runs)).set_index("config")
    assert list(df.index) == ["Traditional", "SB", "Stale-SB n=2", "Stale-SB n=3", "Uniform"]
    n2, n3, uniform, sb = df.loc["Stale-SB n=2"], df.loc["Stale-SB n=3"], df.loc["Uniform"], df.loc["SB"]
    assert n2["n_seeds"] == 2 and n3["n_seeds"] == 2
    assert (n2["speedup_cost_1.1"], n2["speedup_cost_1.1_low"], n2["speedup_cost_1.1_high"]) == pytest.approx((2, 2, 2))
    assert (n2["reached_cost_1.1"], n2["verdict_cost_1.1"]) == ("2/2", "faster")
    assert (n3["speedup_cost_1.1"], n3["speedup_cost_1.1_low"], n3["speedup_cost_1.1_high"]) == pytest.approx(
        (math.sqrt(2), math.exp(math.log(2) / 2 - 2.188180), math.exp(math.log(2) / 2 + 2.188180)), rel=1e-5)
    assert n3["verdict_cost_1.1"] == "indistinguishable"
    assert uniform["speedup_cost_1.1"] == pytest.approx(600 / 900) and uniform["verdict_cost_1.1"] == "slower"
    assert sb["reached_cost_1.1"] == "1/2" and sb["speedup_cost_1.1"] == pytest.approx(math.sqrt(600 / 900))
    assert sb["verdict_cost_1.1"] == "indistinguishable"
    # x1.2 (0.24): SB seed 1 reaches it at 900: both seeds reach, same numbers, no bound
    assert sb["reached_cost_1.2"] == "2/2" and sb["speedup_cost_1.2"] == pytest.approx(math.sqrt(600 / 900))
    # uniform's cost to the target over the configuration's, over the seeds where both reached it
    assert n2["vs_uniform_cost_1.1"] == pytest.approx(3.0) and n2["vs_uniform_cost_1.1_n"] == "2/2"
    assert sb["vs_uniform_cost_1.1"] == pytest.approx(1.5) and sb["vs_uniform_cost_1.1_n"] == "1/2"
    assert math.isnan(uniform["vs_uniform_cost_1.1"])
    # final errors, paired: SB +2 / +4 points over Traditional, 0 / +2 over uniform; n=2 +1 / +1 and -1 / -1
    assert (sb["error_vs_trad_pts"], sb["error_vs_trad_pts_low"], sb["error_vs_trad_pts_high"]) == pytest.approx(
        (3.0, 3 - 6.313752, 3 + 6.313752), rel=1e-6)
    assert (n2["verdict_error_vs_trad"], n2["verdict_error_vs_uniform"]) == ("higher", "lower")
    assert sb["error_vs_uniform_pts"] == pytest.approx(1.0) and sb["verdict_error_vs_uniform"] == "indistinguishable"
    assert n2["backpropped"] == pytest.approx(110) and df.loc["Traditional", "backpropped"] == pytest.approx(300)
    assert sb["final_error"] == pytest.approx(0.23) and sb["final_error_sd"] == pytest.approx(math.sqrt(2e-4))
    # Traditional first reaches 0.22 at epoch 2 on both seeds, 600 of its 900 units
    assert df.loc["Traditional", "trad_epoch_1.1"] == 2.0 and df.loc["Traditional", "trad_cost_frac_1.1"] == pytest.approx(2 / 3)
    md = compare_markdown(compare_table(load_runs(runs)))
    assert "| SB | 2 | 23.00 ± 1.41 % | +3.00 [-3.31, +9.31] indistinguishable |" in md
    assert "≤0.82× [0.23, 2.94] 1/2 indistinguishable" in md and "2.00× [2.00, 2.00] 2/2 faster" in md
    assert "first reaches its own ×1.1 at epoch 2.0 (2), 67 % of its cost (67 %)" in md
    assert "none of the 10 runs flagged" in md


def test_config_label_names_the_distinguishing_parameter() -> None:
    assert config_label("stale_sb", {"staleness": 3}) == "Stale-SB n=3"
    assert config_label("sb", {"selectivity": 1 / 3}) == "SB"
    assert config_label("sb", {"selectivity": 0.5}) == "SB s=0.5"
    assert config_label("kath18", {"selectivity": 1 / 3}) == "Kath18"


def test_script_writes_csv_and_markdown(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_strategies.py"), str(runs),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    assert [r["config"] for r in rows] == ["Traditional", "SB", "Stale-SB n=2", "Stale-SB n=3", "Uniform"]
    assert float(rows[2]["speedup_cost_1.1"]) == pytest.approx(2.0) and rows[2]["verdict_cost_1.1"] == "faster"
    assert rows[0]["speedup_cost_1.1"] == "" and rows[1]["reached_cost_1.1"] == "1/2"
    assert "Stale-SB n=2" in (out / "comparison.md").read_text() and "Stale-SB n=2" in proc.stdout


def test_script_without_a_reference_fails_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_run(root, "sb_s0", "sb", 0, [300], [0.3], {"selectivity": 1 / 3})
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_strategies.py"), str(root),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traditional" in proc.stderr.strip().splitlines()[-1]


def test_peer_labels_name_non_default_parameters_only() -> None:
    assert config_label("infobatch", {"prune_ratio": 0.5}) == "InfoBatch"
    assert config_label("infobatch", {"prune_ratio": 0.3}) == "InfoBatch r=0.3"
    assert config_label("composer_sb", {"keep": 0.5}) == "Composer-SB"
    assert config_label("uniform", {"selectivity": 0.2}) == "Uniform s=0.2"

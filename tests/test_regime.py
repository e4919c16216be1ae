"""The regime map (analysis/regime.py, scripts/regime_map.py) on hand-made run records with known answers."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from selective_backprop.analysis.records import load_runs
from selective_backprop.analysis.regime import point_label, point_of, regime_table

from conftest import REPO


def _write_run(root: Path, name: str, strategy: str, seed: int, costs: list[float], errors: list[float],
               train_loss: float, n_train: int = 1000, augment: bool = True) -> None:
    """A finished run record: metrics.jsonl rows at the given costs (train_s = cost / 100) and summary.json."""
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": seed,
              "dataset": {"name": "fashion_mnist", "subset": n_train,
                          "augment": {"crop_padding": 2 if augment else 0, "hflip": augment, "cutout": 0}},
              "model": {"name": "resnet8", "width": 16}, "lr_schedule": {"name": "fashion_mnist_e30"},
              "strategy": {"name": strategy}}
    rows = [{"epoch": i + 1.0, "step": 10 * (i + 1), "train_s": c / 100, "eval_s": 1.0, "cost": c,
             "test_error": e, "test_loss": 1.0, "train_loss": train_loss if i == len(costs) - 1 else 9.9,
             "examples_forwarded": 0, "examples_backpropped": 0, "phase_s": {}}
            for i, (c, e) in enumerate(zip(costs, errors))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = f"{strategy}-{n_train}-{augment}"
    summary = {"status": "completed", "dataset": "fashion_mnist", "model": "resnet8", "strategy": strategy,
               "lr_schedule": "fashion_mnist_e30", "seed": seed, "config_key": key, "config": config,
               "final_test_error": errors[-1], "best_test_error": min(errors), "train_s": costs[-1] / 100,
               "epochs": float(len(costs)), "steps": 10 * len(costs), "examples_forwarded": 0,
               "examples_backpropped": 0, "strategy_params": {}, "phase_s": {}}
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in (0, 1):                                   # point A: augmented, Traditional loss 0.5
        _write_run(root, f"a/trad_s{seed}", "traditional", seed, [300, 600, 900], [0.30, 0.22, 0.20], 0.5)
    _write_run(root, "a/sb_s0", "sb", 0, [200, 400, 600, 900], [0.35, 0.23, 0.215, 0.21], 1.0)
    _write_run(root, "a/sb_s1", "sb", 1, [200, 400, 600, 900], [0.35, 0.30, 0.22, 0.21], 1.0)
    _write_run(root, "a/uniform_s0", "uniform", 0, [200, 400, 600, 900], [0.40, 0.30, 0.25, 0.23], 0.6)
    # point B: no augmentation, Traditional fits (loss 0.05); SB reaches x1.1 (0.11) at a third of the cost
    _write_run(root, "b/trad_s0", "traditional", 0, [300, 600, 900], [0.20, 0.12, 0.10], 0.05, augment=False)
    _write_run(root, "b/sb_s0", "sb", 0, [300, 600, 900], [0.11, 0.10, 0.10], 0.4, augment=False)
    return root


def test_point_label_names_every_axis() -> None:
    point = point_of({"dataset": {"name": "fashion_mnist", "subset": 2000, "augment": {"crop_padding": 0,
                                                                                        "hflip": False}},
                      "model": {"name": "resnet8", "width": 8}, "lr_schedule": {"name": "fashion_mnist_e10"}})
    assert point_label(point) == "fashion_mnist n2000 resnet8-w8 fashion_mnist_e10 noaug"
    point = point_of({"dataset": {"name": "fashion_mnist", "subset": 6000, "test_subset": 2000},
                      "model": {"name": "resnet8", "width": 16}, "lr_schedule": {"name": "fashion_mnist_e30"}})
    assert point_label(point) == "fashion_mnist n6000 resnet8-w16 fashion_mnist_e30 noaug test2000"


def test_regime_table_speedups_spread_and_uniform_ratio(runs: Path) -> None:
    df = regime_table(load_runs(runs))
    assert list(df["point"]) == ["fashion_mnist n1000 resnet8-w16 fashion_mnist_e30 aug"] * 2 + \
        ["fashion_mnist n1000 resnet8-w16 fashion_mnist_e30 noaug"]       # least saturated point first
    sb, uniform, sb_b = (df.iloc[i] for i in range(3))
    assert (sb["strategy"], uniform["strategy"], sb_b["strategy"]) == ("sb", "uniform", "sb")
    assert sb["trad_train_loss"] == pytest.approx(0.5) and sb_b["trad_train_loss"] == pytest.approx(0.05)
    assert sb["trad_final_error"] == pytest.approx(0.20) and sb["n_seeds"] == 2
    # each seed against its own Traditional run (both end at 0.20): x1.1 (0.22) Traditional 600, SB 600 on
    # both seeds; x1.2 (0.24) SB 400 / 600 -> 1.5 and 1.0, geometric mean sqrt(1.5), half-width on the logs
    # t(0.95, 1) x ln 1.5 / 2 = 1.280013
    for axis in ("cost", "time"):
        assert sb[f"speedup_{axis}_1.1"] == pytest.approx(1.0) and sb[f"reached_{axis}_1.1"] == "2/2"
        assert sb[f"speedup_{axis}_1.2"] == pytest.approx(math.sqrt(1.5))
    half = 6.313752 * math.log(1.5) / 2
    assert (sb["speedup_cost_1.2_low"], sb["speedup_cost_1.2_high"]) == pytest.approx(
        (math.sqrt(1.5) * math.exp(-half), math.sqrt(1.5) * math.exp(half)), rel=1e-5)
    assert sb["verdict_cost_1.1"] == "indistinguishable" and sb["verdict_cost_1.2"] == "indistinguishable"
    # uniform never reaches 0.22: at most 600 / 900 (its whole cost), an upper bound (0/1 seeds)
    assert uniform["speedup_cost_1.1"] == pytest.approx(600 / 900) and uniform["reached_cost_1.1"] == "0/1"
    assert uniform["speedup_cost_1.2"] == pytest.approx(600 / 900) and uniform["reached_cost_1.2"] == "1/1"
    # uniform's cost to 0.24 over SB's, seed 0 (the only seed both ran): 900 / 400
    assert sb["vs_uniform_cost_1.2"] == pytest.approx(900 / 400) and sb["vs_uniform_cost_1.2_n"] == "1/1"
    assert math.isnan(sb["vs_uniform_cost_1.1"]) and sb["vs_uniform_cost_1.1_n"] == "0/1"
    assert math.isnan(uniform["vs_uniform_cost_1.2"])
    assert sb["trad_epoch_1.1"] == 2.0 and sb_b["trad_epoch_1.1"] == 3.0
    assert sb_b["speedup_cost_1.1"] == pytest.approx(900 / 300)     # Traditional first reaches 0.11 at 900


def test_regime_map_script_writes_its_files(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "regime_map.py"), str(runs), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| fashion_mnist n1000 resnet8-w16 fashion_mnist_e30 aug | 0.500 | 20.00 % | SB | 2 |" in proc.stdout
    assert "| 1.22× [0.34, 4.40] 2/2 indistinguishable |" in proc.stdout
    assert "first reaches its own ×1.1 at epoch 2.0 (2), 67 % of its cost (67 %)" in proc.stdout
    for name in ("regime_map.csv", "regime_map.md", "regime_map_cost.png", "regime_map_cost.pdf",
                 "regime_map_time.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "regime_map.csv").open()))
    assert [r["strategy"] for r in rows] == ["sb", "uniform", "sb"]
    assert float(rows[2]["speedup_cost_1.1"]) == pytest.approx(3.0)


def test_regime_map_script_without_traditional_fails_in_one_line(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs", "sb_s0", "sb", 0, [100], [0.3], 1.0)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "regime_map.py"), str(tmp_path / "runs"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no regime point has both")
    assert "Traceback" not in proc.stderr

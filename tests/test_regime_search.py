"""The regime search (analysis/regime_search.py, scripts/regime_search.py, scripts/regime_search.sh):
fixture records with hand-picked error curves, and the sweep script end to end at toy size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from selective_backprop.analysis.records import load_runs
from selective_backprop.analysis.regime_search import augment_label, search_markdown, search_table

SCHEDULE = {"name": "fashion_mnist_e10", "milestones": [3, 6, 8], "gamma": 0.2, "epochs": 10}
# per-epoch test errors (epochs 1..10)
LATE = [0.50, 0.40, 0.30, 0.25, 0.20, 0.18, 0.16, 0.14, 0.12, 0.10]       # x1.1 (0.11) at 10, x1.2 at 9
EARLY = [0.30, 0.20, 0.15, 0.12, 0.11, 0.11, 0.105, 0.105, 0.10, 0.10]   # x1.1 at 5, x1.2 (0.12) at 4


def write_run(folder: Path, seed: int, errors: list[float], train_loss: float, subset: int | None,
              augment: dict, strategy: str = "traditional") -> None:
    config = {"dataset": {"name": "fashion_mnist", "subset": subset, "test_subset": 2000, "augment": augment},
              "model": {"name": "resnet8", "width": 16}, "lr_schedule": SCHEDULE, "seed": seed,
              "strategy": {"name": strategy}}
    folder.mkdir(parents=True)
    rows = [{"epoch": float(e), "step": e, "test_error": err, "train_loss": 1.0 if e < 10 else train_loss,
             "train_s": 6.0 * e, "eval_s": 3.0 * e, "wall_s": 9.5 * e, "cost": 100.0 * e} for e, err in enumerate(errors, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({
        "status": "completed", "strategy": strategy, "seed": seed, "dataset": "fashion_mnist", "model": "resnet8",
        "lr_schedule": SCHEDULE["name"], "config": config, "n_train": subset or 60000,
        "config_key": f"{strategy}-{subset}-{json.dumps(augment, sort_keys=True)}",
        "final_test_error": errors[-1], "train_s": 60.0, "epochs": 10.0, "examples_forwarded": 1,
        "examples_backpropped": 1, "cost": 1000.0}))


NONE = {"crop_padding": 0, "hflip": False, "cutout": 0}
FLIP = {"crop_padding": 0, "hflip": True, "cutout": 0}
CROP2 = {"crop_padding": 2, "hflip": True, "cutout": 0}


@pytest.fixture
def records(tmp_path: Path) -> Path:
    root = tmp_path / "search"
    write_run(root / "late_s0", 0, LATE, 0.02, None, NONE)
    write_run(root / "late_s1", 1, [e * 1.0 for e in LATE[:-1]] + [0.11], 0.04, None, NONE)   # x1.1 = 0.121 at 9
    write_run(root / "early_s0", 0, EARLY, 0.01, 6000, FLIP)
    write_run(root / "lossy_s0", 0, LATE, 0.40, 6000, CROP2)          # late, but the training loss is high
    write_run(root / "sb_s0", 0, LATE, 0.02, 6000, NONE, strategy="sb")   # not Traditional: ignored
    return root


def test_augment_labels():
    assert [augment_label({"augment": a}) for a in (NONE, FLIP, CROP2)] == ["none", "flip", "crop2+flip"]
    assert augment_label({"augment": {"crop_padding": 2, "hflip": False, "cutout": 8}}) == "crop2+cutout8"


def test_search_table_hand_checked(records):
    df = search_table(load_runs(records))
    assert list(df["setup"]) == ["n60000 w16 none fashion_mnist_e10 test2000",
                                 "n6000 w16 crop2+flip fashion_mnist_e10 test2000",
                                 "n6000 w16 flip fashion_mnist_e10 test2000"]
    assert list(df["paper_shaped"]) == [True, False, False]
    late, lossy, early = (df.iloc[i] for i in range(3))
    assert late["n_seeds"] == 2 and late["final_error"] == pytest.approx(0.105)
    assert late["final_train_loss"] == pytest.approx(0.03)
    assert (late["epoch_1.1"], late["share_1.1"]) == pytest.approx((9.5, 0.95))      # seeds: 10 and 9
    assert (late["epoch_1.2"], late["share_1.2"]) == pytest.approx((9.0, 0.9))       # 0.12 at 9; 0.132 at 9
    assert (early["epoch_1.1"], early["share_1.1"], early["epoch_1.2"]) == pytest.approx((5, 0.5, 4))
    assert early["final_train_loss"] == 0.01 and not early["paper_shaped"]
    assert lossy["share_1.1"] == 1.0 and lossy["final_train_loss"] == 0.4 and not lossy["paper_shaped"]
    assert (late["minutes"], late["train_minutes"]) == pytest.approx((1.5, 1.0))
    relaxed = search_table(load_runs(records), low_loss=0.5)
    assert list(relaxed["paper_shaped"]) == [True, True, False]
    md = search_markdown(df)
    assert ("| n60000 w16 none fashion_mnist_e10 test2000 | 2 | 10 | 0.030 | 10.50 % | 9.5 (95 %) | 9.0 (90 %) "
            "| 1.5 (1.0 training) | yes |") in md
    assert "| n6000 w16 flip fashion_mnist_e10 test2000 | 1 | 10 | 0.010 | 10.00 % | 5.0 (50 %) | 4.0 (40 %)" in md


def test_search_script_writes_the_table(records, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "regime_search.py"), str(records), "--out", str(out),
                           "--low-loss", "0.5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"regime_search.csv", "regime_search.md", "regime_search.png"}
    assert "final training loss ≤ 0.5" in (out / "regime_search.md").read_text()
    csv = (out / "regime_search.csv").read_text().splitlines()
    assert len(csv) == 4 and csv[0].startswith("setup,n_train,width,augment,schedule,n_test,n_seeds,")
    assert csv[1].endswith(",True") and csv[3].endswith(",False")


@pytest.mark.slow
def test_regime_search_script_end_to_end_at_toy_size(tmp_path):
    """Two toy setups (no augmentation / flip), 10 epochs each, every epoch evaluated; the table reads them."""
    out = tmp_path / "search"
    setups = ("toy_none dataset.subset=64 dataset.augment.crop_padding=0 dataset.augment.hflip=false "
              "lr_schedule=fashion_mnist_e10\n"
              "toy_flip dataset.subset=64 dataset.augment.crop_padding=0 dataset.augment.hflip=true "
              "lr_schedule=fashion_mnist_e10")
    env = {**os.environ, "SEEDS": "0", "JOBS": "2", "OMP_NUM_THREADS": "1", "SETUPS": setups, "TEST_SUBSET": "64",
           "EXTRA_OVERRIDES": "model.width=4 train.batch_size=16 train.tensorboard=false",
           "SB_TRAIN": f"{sys.executable} -m selective_backprop.train"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "regime_search.sh"), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "FAILED" not in proc.stderr, proc.stderr[-2000:]
    for name in ("toy_none_s0", "toy_flip_s0"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["strategy"] == "traditional" and summary["epochs"] == 10
        assert len((out / name / "metrics.jsonl").read_text().splitlines()) == 10
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "regime_search.py"), str(out), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    setups_found = sorted(line.split(",")[0] for line in
                          (tmp_path / "report" / "regime_search.csv").read_text().splitlines()[1:])
    assert setups_found == ["n64 w4 flip fashion_mnist_e10 test64", "n64 w4 none fashion_mnist_e10 test64"]


@pytest.mark.parametrize("subset, expected", [(None, "dataset.test_subset=null"), ("2000", "dataset.test_subset=2000")])
def test_regime_search_evaluates_on_the_full_test_set_by_default(tmp_path, subset, expected):
    """With SB_TRAIN=echo each run's log holds the overrides it would train with: the whole default grid,
    every run on all 10 000 test images unless TEST_SUBSET names a subset."""
    out = tmp_path / "search"
    env = {k: v for k, v in os.environ.items() if k not in ("TEST_SUBSET", "SETUPS")}
    env.update({"SEEDS": "0", "JOBS": "1", "OMP_NUM_THREADS": "1", "SB_TRAIN": "echo"})
    if subset is not None:
        env["TEST_SUBSET"] = subset
    proc = subprocess.run(["bash", str(REPO / "scripts" / "regime_search.sh"), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    logs = sorted((out / "logs").glob("*.log"))
    assert len(logs) == 13
    for log in logs:
        words = log.read_text().split()
        assert expected in words and "strategy=traditional" in words and "train.eval_every=1" in words, log.name
        assert words[-1] == f"hydra.run.dir={out}/{log.stem}", log.name

"""Sweep configs compose; the reproduction pipeline runs end to end on a tiny real multirun."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, REPO
from omegaconf import OmegaConf
from selective_backprop.engine.strategies import STRATEGIES

SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
TINY = ["dataset=fashion_mnist", "model=resnet8", "model.width=8", "dataset.subset=192", "train.max_epochs=2",
        "train.batch_size=64", "train.num_workers=0", "train.max_time_s=null", "train.progress=false",
        "train.tensorboard=false", "device=cpu"]


def sweep_params(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sweep={name}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


def test_paper_sweeps_cover_table1():
    assert {"table1_cifar10", "table1_cifar100", "table1_svhn", "label_noise", "selectivity", "staleness",
            "architectures", "table1_fashion_mnist_cpu"} <= set(SWEEPS)
    for ds in ("cifar10", "cifar100", "svhn"):
        params = sweep_params(f"table1_{ds}")
        assert params["experiment"].split(",") == [f"{ds}_{s}" for s in ("traditional", "sb", "stale_sb", "kath18")]
        assert params["lr_schedule"].split(",") == [f"{ds}_sched1", f"{ds}_sched2"]


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_job_composes(name):
    """Each job of each sweep composes (the grid's first value of every axis, and the last)."""
    params = sweep_params(name)
    for pick in (0, -1):
        overrides = [f"sweep={name}"] + [f"{k}={v.split(',')[pick]}" for k, v in params.items()]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        assert cfg.strategy.name in STRATEGIES


def test_table1_1gpu_sweep_is_the_papers_protocol_at_40_epochs():
    """conf/sweep/table1_1gpu.yaml: 8 strategies x 2 schedule analogues x 3 seeds of ResNet18 on CIFAR10 with
    the device loader, bf16 and channels_last; Traditional trains its 40 epochs, the rest borrow its cost."""
    params = sweep_params("table1_1gpu")
    experiments = params["experiment"].split(",")
    assert experiments[0] == "cifar10_1gpu_traditional" and len(experiments) == 8       # Traditional runs first
    assert params["lr_schedule"].split(",") == ["cifar10_e40", "cifar10_e40_s2"] and params["seed"] == "0,1,2"
    seen = {}
    for exp in experiments:
        for schedule in ("cifar10_e40", "cifar10_e40_s2"):
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose(config_name="config", overrides=["sweep=table1_1gpu", f"experiment={exp}",
                                                               f"lr_schedule={schedule}"])
            assert (cfg.dataset.name, cfg.model.name, cfg.dataset.loader) == ("cifar10", "resnet18", "device")
            assert (cfg.train.batch_size, cfg.train.precision, cfg.train.channels_last) == (128, "bf16", True)
            assert cfg.lr_schedule.epochs == 40 and cfg.dataset.augment.cutout == 16
            assert OmegaConf.to_container(cfg.train)["budget_from"] == "${hydra:sweep.dir}"
            assert cfg.train.budget_axis == "cost" and cfg.train.max_time_s is None
            capped = cfg.strategy.name in ("traditional", "infobatch", "composer_sb")   # their own schedule
            assert cfg.train.max_epochs == (40 if capped else None), exp
            assert list(cfg.lr_schedule.milestones) == ([12, 24, 32] if schedule == "cifar10_e40" else [10, 19, 26])
            seen[exp] = (cfg.strategy.name, cfg.strategy.get("staleness"), cfg.strategy.get("selectivity"))
    assert sorted(name for name, _, _ in seen.values()) == sorted(
        ["traditional", "sb", "stale_sb", "stale_sb", "kath18", "uniform", "infobatch", "composer_sb"])
    assert {n for _, n, _ in seen.values() if n is not None} == {2, 3}
    assert all(abs(s - 1 / 3) < 1e-9 for name, _, s in seen.values() if name in ("sb", "stale_sb", "kath18", "uniform"))


def _multirun(tmp_path, sweep, extra, fmnist_root):
    cmd = [sys.executable, "-m", "selective_backprop.train", "-m", f"sweep={sweep}", *TINY, *extra,
           f"dataset.root={fmnist_root}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "sweep"


@pytest.mark.slow
def test_cpu_reproduction_pipeline(tmp_path, fmnist_root):
    """The reproduce-table1-cpu pipeline on a shrunk grid: sweep -> collect -> Table 1 + Pareto."""
    sweep = _multirun(tmp_path, "table1_fashion_mnist_cpu",
                      ["hydra.sweeper.params.seed=0", "hydra.sweeper.params.lr_schedule=fashion_mnist_sched1"],
                      fmnist_root)
    runs = tmp_path / "runs"
    for script, args in (("collect_runs.py", [sweep, runs]),
                         ("make_table1.py", [runs, "--out", tmp_path / "out"]),
                         # tiny runs on a busy machine: their timing is not what the audit is for
                         ("plot_pareto.py", [runs, "--out", tmp_path / "out", "--keep-flagged"])):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (script, proc.stderr[-2000:])
    assert len(list(runs.rglob("summary.json"))) == 5
    assert not list(runs.rglob("*.pt")) and not list(runs.rglob("tb"))
    with open(tmp_path / "out" / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["sb", "stale_sb", "kath18", "uniform"]
    assert all(r["dataset"] == "fashion_mnist" for r in rows)
    assert (tmp_path / "out" / "pareto_share.csv").exists()
    assert (tmp_path / "out" / "pareto_fashion_mnist.png").stat().st_size > 0


@pytest.mark.slow
def test_paper_sweep_dry_run(tmp_path, fmnist_root):
    """`make reproduce-table1`'s CIFAR10 sweep, shrunk to tiny Fashion-MNIST jobs: every paper
    experiment of the grid launches and writes a completed run record."""
    sweep = _multirun(tmp_path, "table1_cifar10", ["hydra.sweeper.params.lr_schedule=cifar10_sched2"], fmnist_root)
    summaries = sorted(sweep.rglob("summary.json"))
    assert len(summaries) == 4
    texts = [p.read_text() for p in summaries]
    assert all('"status": "completed"' in t for t in texts)
    assert {s for s in ("traditional", "sb", "stale_sb", "kath18") if any(f'"strategy": "{s}"' in t for t in texts)} \
        == {"traditional", "sb", "stale_sb", "kath18"}


def test_gradient_similarity_script(tmp_path, fmnist_root):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gradient_similarity.py"), "--epochs", "1",
                           "--subset", "256", "--every", "1", "--full-batch", "96", "--root", str(fmnist_root),
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "gradient_similarity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        for key in ("cos_top", "cos_random"):
            assert -1.0 <= float(row[key]) <= 1.0
        for key in ("sign_top", "sign_random"):
            assert 0.0 <= float(row[key]) <= 1.0
    assert (tmp_path / "fig5_gradient_similarity.png").stat().st_size > 0

"""End-to-end runs on a real Fashion-MNIST subset: the run record, phase timing, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, run_tiny
from selective_backprop.timing import PHASES
from selective_backprop.record import TIMING_CONDITIONS

METRIC_KEYS = {"epoch": float, "step": int, "examples_forwarded": int, "examples_backpropped": int,
               "train_s": float, "phase_s": dict, "eval_s": float, "test_error": float,
               "test_loss": float, "train_loss": float, "lr": float, "selected_fraction": float,
               "cost": float, "wall_s": float, "loadavg": float}
SUMMARY_KEYS = {"dataset", "model", "strategy", "lr_schedule", "seed", "strategy_params",
                "final_test_error", "best_test_error", "train_s", "epochs", "status",
                "torch_version", "device_name", "config", "config_key", "timing"}


def check_record(run_dir, epochs):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [float(e) for e in range(1, epochs + 1)]
    for row in rows:
        for key, kind in METRIC_KEYS.items():
            assert isinstance(row[key], (int, float) if kind is float else kind), (key, row[key])
        assert set(row["phase_s"]) == set(PHASES)
        assert 0.0 <= row["test_error"] <= 1.0
    for a, b in zip(rows, rows[1:]):
        assert b["step"] > a["step"] and b["train_s"] > a["train_s"]
        assert b["examples_backpropped"] > a["examples_backpropped"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["final_test_error"] == rows[-1]["test_error"]
    assert summary["best_test_error"] == min(r["test_error"] for r in rows)
    assert summary["status"] == "completed"
    assert set(summary["timing"]) == set(TIMING_CONDITIONS)
    return rows, summary


def test_traditional_run_record(tmp_path, fmnist_root, fmnist_bundle):
    trainer, summary = run_tiny(tmp_path, fmnist_root, ["train.max_epochs=3"], fmnist_bundle)
    rows, _ = check_record(tmp_path / "run", 3)
    n = len(fmnist_bundle.train)
    assert rows[-1]["examples_backpropped"] == rows[-1]["examples_forwarded"] == 3 * n
    assert rows[-1]["step"] == 3 * -(-n // 64)
    assert all(r["selected_fraction"] == 1.0 for r in rows)
    assert summary["epochs"] == 3.0 and summary["strategy"] == "traditional"
    # LR schedule fashion_mnist_sched1: milestones [3, 6, 8] -> epochs 0..2 at 0.1
    assert rows[-1]["lr"] == pytest.approx(0.1)
    # the error must drop below chance (0.9) on real data after 3 tiny epochs
    assert rows[-1]["test_error"] < 0.85


def test_timing_conditions_are_recorded(tmp_path, fmnist_root, fmnist_bundle):
    """summary.json `timing`: the load average at the start and end of training, this process's CPU time
    against the wall time over the same span, the threads and the machine; each row's 1-minute load."""
    import torch

    _, summary = run_tiny(tmp_path, fmnist_root, ["train.tensorboard=false"], fmnist_bundle)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    timing = summary["timing"]
    assert set(timing) == set(TIMING_CONDITIONS)   # exactly these keys
    for key in ("loadavg_start", "loadavg_end"):
        assert len(timing[key]) == 3 and all(isinstance(x, float) and x >= 0 for x in timing[key]), timing[key]
    assert all(isinstance(r["loadavg"], float) and r["loadavg"] >= 0 for r in rows)
    # the span holds the training (and its evaluations); one busy thread: CPU time cannot exceed the
    # wall time by more than the other threads torch runs, and a real run keeps the CPU busy
    assert timing["wall_s"] >= summary["train_s"] > 0
    assert 0 < timing["cpu_s"] <= timing["wall_s"] * (timing["threads"] + timing["interop_threads"])
    assert timing["threads"] == torch.get_num_threads() == 1 and timing["interop_threads"] >= 1
    assert timing["cpu_count"] == os.cpu_count() and timing["host"] == socket.gethostname()
    assert timing["omp_num_threads"] == os.environ.get("OMP_NUM_THREADS") == "1"


def test_phases_account_for_training_time(tmp_path, fmnist_root, fmnist_bundle):
    for strategy in ("traditional", "sb"):
        _, summary = run_tiny(tmp_path / strategy, fmnist_root, [f"strategy={strategy}"], fmnist_bundle)
        phases = summary["phase_s"]
        assert all(phases[p] > 0 for p in PHASES if p != "select_forward" or strategy == "sb")
        assert sum(phases.values()) >= 0.95 * summary["train_s"], (strategy, phases, summary["train_s"])
        assert sum(phases.values()) <= summary["train_s"] * 1.001


def test_lr_schedule_is_applied(tmp_path, fmnist_root, fmnist_bundle):
    _, _ = run_tiny(tmp_path, fmnist_root, ["train.max_epochs=4", "lr_schedule=fashion_mnist_sched2",
                                             "train.tensorboard=false"], fmnist_bundle)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # milestones [2, 5, 6], gamma 0.2: epochs 0,1 -> 0.1; epochs 2,3 -> 0.02 (lr logged after each epoch)
    assert [round(r["lr"], 6) for r in rows] == [0.1, 0.1, 0.02, 0.02]


def test_label_noise_logs_noisy_fraction(tmp_path, fmnist_root):
    _, _ = run_tiny(tmp_path, fmnist_root, ["dataset.label_noise=0.2", "strategy=sb"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["selected_noisy_fraction"] <= 1.0 for r in rows)
    assert any(r["selected_noisy_fraction"] > 0.05 for r in rows)


@pytest.mark.slow
def test_cli_writes_hydra_dir_and_tensorboard(tmp_path, fmnist_root):
    run_dir = tmp_path / "cli"
    cmd = [sys.executable, "-m", "selective_backprop.train", "dataset.subset=256", "train.max_epochs=2",
           "train.batch_size=64", "model.width=8", "strategy=sb", "train.progress=false",
           f"dataset.root={fmnist_root}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / ".hydra" / "config.yaml").exists()
    check_record(run_dir, 2)
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"test_error", "test_loss", "lr", "examples_backpropped", "phase_s/backward"} <= tags
    assert len(events.Scalars("test_error")) == 2


def test_cli_bad_config_is_one_line_error(tmp_path):
    run_dir = tmp_path / "bad"
    cmd = [sys.executable, "-m", "selective_backprop.train", "strategy=sb", "strategy.beta=-1",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "strategy.beta" in errors[0]
    assert not (run_dir / "metrics.jsonl").exists()

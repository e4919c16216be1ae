"""Data parallelism and cluster sweeps with real processes on the CPU (gloo).

`torchrun --nproc_per_node=2` (as `python -m torch.distributed.run`, on a free loopback port) trains
Traditional, SB and Stale-SB on a Fashion-MNIST subset; each rank dumps its final state through the
test hooks (tests/hooked_train.py --rank-state-dir, outside the run dir) so the test can compare them. Also:
a 2-job sweep through Hydra's submitit_local launcher, the Slurm launcher configs, and a K = 2 run
preempted with SIGTERM to torchrun, refused with another K and resumed with K = 2.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONF, REPO, compose_config
from selective_backprop.engine.checkpoint import checkpoint_path, load_checkpoint
from selective_backprop.errors import ConfigError
from resume_helpers import metric_rows, without_timing
from selective_backprop.train import run

BASE = ["dataset.subset=512", "train.max_epochs=2", "train.eval_every=2", "train.batch_size=64",
        "model.width=8", "device=cpu", "deterministic=true", "train.progress=false", "train.tensorboard=false"]
STRATEGIES = {"traditional": ["strategy=traditional"], "sb": ["strategy=sb"],
              "stale_sb": ["strategy=stale_sb", "strategy.staleness=2"]}
TIMEOUT_S = 300


# ----------------------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE",
                                                                    "LOCAL_RANK", "MASTER_", "SUBMITIT_"))}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def torchrun_cmd(run_dir: str, root: Path, extra=(), nproc: int = 2, hooks=()) -> list[str]:
    """torchrun of `-m selective_backprop.train`, or with `hooks` of the same main() with test hooks
    installed (tests/hooked_train.py)."""
    entry = [str(REPO / "tests" / "hooked_train.py"), *hooks, "--"] if hooks else ["-m", "selective_backprop.train"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", *entry,
            *BASE, f"dataset.root={root}", f"hydra.run.dir={run_dir}", *extra]


def torchrun(run_dir: str, root: Path, extra=(), hooks=()) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun_cmd(run_dir, root, extra, hooks=hooks), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    return proc


def rows_without_timing(run_dir: Path) -> list[str]:
    return without_timing(metric_rows(run_dir))


def same_tensors(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def kept_share(counters: dict) -> float:
    return counters["kept"] / counters["considered"]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, fmnist_root):
    """K = 2 torchrun runs per strategy, computed on first use: (run dir, {rank: final state}, output)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            base = tmp_path_factory.mktemp(f"dp-{name}")
            # ${now:...%f} differs between the ranks' Hydra runs: rank 0's directory must win
            proc = torchrun(str(base / "runs" / "${now:%H-%M-%S-%f}"), fmnist_root, STRATEGIES[name],
                            hooks=("--rank-state-dir", str(base / "ranks")))
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, out[-4000:]
            run_dirs = list((base / "runs").iterdir())
            assert len(run_dirs) == 1, (run_dirs, out[-2000:])        # no stray run dir of rank 1
            states = {r: torch.load(base / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)}
            cache[name] = (run_dirs[0], states, out)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, fmnist_root):
    """The same configuration in one process (in-process, no CLI), computed on first use: final counters."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            run_dir = tmp_path_factory.mktemp(f"single-{name}") / "run"
            cfg = compose_config(BASE + STRATEGIES[name] + [f"dataset.root={fmnist_root}"])
            run(cfg, str(run_dir))
            cache[name] = load_checkpoint(checkpoint_path(run_dir))["counters"]
        return cache[name]
    return get


# ------------------------------------------------------------------------------- torchrun, K = 2

@pytest.mark.slow
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_two_ranks_train_one_model_with_global_counts(name, dp_run, single_run):
    run_dir, states, out = dp_run(name)
    # one run record, written by rank 0 only
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["n_train"] == 512
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [2.0] and rows[0]["examples_considered"] == 2 * 512
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoint.pt", "metrics.jsonl",
                                                         "summary.json", "train.log"]
    assert "output_subdir=null" not in (run_dir / ".hydra" / "hydra.yaml").read_text()   # rank 0's snapshot
    assert "Traceback" not in out
    # identical weights (and BatchNorm buffers) on both ranks, and in the checkpoint rank 0 wrote
    assert same_tensors(states[0]["model"], states[1]["model"])
    final = load_checkpoint(checkpoint_path(run_dir))
    assert final["world_size"] == 2 and same_tensors(final["model"], states[0]["model"])
    # global counters: sums over the ranks, which step in lockstep with b/K = 32 examples each
    per_rank = [states[r]["counters"] for r in (0, 1)]
    counts = final["counters"]
    for key in ("considered", "backpropped", "kept"):
        assert counts[key] == per_rank[0][key] + per_rank[1][key] == sum(r["counters"][key] for r in final["ranks"])
    assert per_rank[0]["steps"] == per_rank[1]["steps"] == counts["steps"] == summary["steps"]
    assert per_rank[0]["backpropped"] == per_rank[1]["backpropped"] == 32 * counts["steps"]
    assert summary["examples_backpropped"] == rows[0]["examples_backpropped"] == counts["backpropped"]
    if name == "traditional":       # as in one process: every example, in 2 * 512 / 64 steps of b = 64
        assert counts["backpropped"] == 2 * 512 and counts["steps"] == 2 * 512 // 64
        assert rows[0]["selected_fraction"] == 1.0
    else:
        # the kept share follows the paper's rule as in one process: within binomial noise of it
        single = single_run(name)
        p = kept_share(single)
        sigma = math.sqrt(p * (1 - p) * (1 / counts["considered"] + 1 / single["considered"]))
        assert abs(kept_share(counts) - p) < 4.5 * sigma + 0.01, (kept_share(counts), p)
        assert counts["backpropped"] <= counts["kept"] < counts["backpropped"] + 2 * 2 * 64
        assert abs(rows[0]["selected_fraction"] - kept_share(counts)) < 1e-9


# ------------------------------------------------------------------------- preemption and resume

@pytest.mark.slow
def test_preempted_two_rank_run_resumes_and_another_k_is_refused(tmp_path, fmnist_root, dp_run):
    """SIGTERM to torchrun mid epoch 2: every rank stops, rank 0 records `preempted` (workers exit 75);
    one process may not resume it; two processes resume it to the uninterrupted run's result."""
    run_dir = tmp_path / "run"
    marker = tmp_path / "marker"
    log_path = tmp_path / "log.txt"
    hooks = ("--pause-at", "mid_epoch:1", "--marker", str(marker))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(torchrun_cmd(str(run_dir), fmnist_root, STRATEGIES["sb"], hooks=hooks), cwd=REPO,
                                env=_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not marker.exists():
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGTERM)      # torchrun forwards it to its workers
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    out = log_path.read_text()
    assert out.count("preempted by SIGTERM") == 1, out[-4000:]           # reported by rank 0 only
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    state = load_checkpoint(checkpoint_path(run_dir))
    assert state["world_size"] == 2 and state["next_epoch"] == 1 and len(state["ranks"]) == 2

    # one process: refused before any work, one line naming both numbers; nothing changes
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    cfg = compose_config(BASE + STRATEGIES["sb"] + [f"dataset.root={fmnist_root}"])
    with pytest.raises(ConfigError, match=r"written by 2 data-parallel process\(es\), this run has 1") as err:
        run(cfg, str(run_dir))
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before

    # two processes: resumes and ends where the uninterrupted K = 2 run ended
    proc = torchrun(str(run_dir), fmnist_root, STRATEGIES["sb"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "resuming from" in proc.stdout + proc.stderr
    reference_dir, _, _ = dp_run("sb")
    assert rows_without_timing(run_dir) == rows_without_timing(reference_dir)
    assert same_tensors(load_checkpoint(checkpoint_path(run_dir))["model"],
                        load_checkpoint(checkpoint_path(reference_dir))["model"])


# ------------------------------------------------------------------------------- cluster sweeps

@pytest.mark.slow
def test_submitit_local_sweep_runs_both_jobs(tmp_path, fmnist_root):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "selective_backprop.train", "-m", "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", "strategy=traditional,sb",
           *BASE, "dataset.subset=256", "train.max_epochs=1", "train.eval_every=1", f"dataset.root={fmnist_root}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for job, strategy in enumerate(("traditional", "sb")):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["strategy"] == strategy
        assert len((sweep / str(job) / "metrics.jsonl").read_text().splitlines()) == 1


def test_submitit_slurm_config_composes_with_overrides():
    """The README's Table 1 command, as `--cfg hydra`: the launcher overrides land in its config."""
    cmd = [sys.executable, "-m", "selective_backprop.train", "sweep=table1_cifar10", "hydra/launcher=submitit_slurm",
           "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=720", "hydra.launcher.partition=gpu",
           "--cfg", "hydra"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["gpus_per_node"], launcher["timeout_min"], launcher["partition"]) == (1, 720, "gpu")


def test_slurm_gpu_preset_runs_one_task_per_gpu():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["sweep=table1_svhn", "hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=4",
                                 "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=1440"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition, launcher.timeout_min) == (
        4, 4, "gpu", 1440)
    assert launcher.max_num_timeout > 0        # requeued after time limits, resumed from checkpoint.pt

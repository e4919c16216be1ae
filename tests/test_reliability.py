"""Checkpoints, exact resume after SIGKILL / SIGTERM / SIGINT, and failures during a run.

Real Fashion-MNIST subsets on the CPU with deterministic=true. The CLI tests start
`python -m selective_backprop.train` in a subprocess, and stop it at chosen points through test hooks
(tests/hooked_train.py --pause-at <point>:<epoch> writes a marker file, then sleeps until signalled).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_config
from resume_helpers import metric_rows, run_crashing, wait_for_marker, without_timing
from selective_backprop.engine.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from selective_backprop.record import read_metrics
from selective_backprop.engine.evaluation import Evaluator
from selective_backprop.engine.run_state import RunState
from selective_backprop.engine.trainer import PREEMPTION, DivergedError, Preempted
from selective_backprop.errors import ConfigError
from selective_backprop.train import install_preemption_handlers, run

CLI_BASE = ["dataset.subset=256", "train.max_epochs=2", "train.batch_size=64", "model.width=8", "strategy=sb",
            "deterministic=true", "device=cpu", "train.progress=false", "train.tensorboard=false"]
INPROC_BASE = ["dataset.subset=256", "deterministic=true", "train.max_epochs=3", "train.eval_every=2",
               "train.tensorboard=false"]


# ----------------------------------------------------------------------------------------- helpers

def assert_same_state(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values are equal (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b) if isinstance(b, dict) else b)
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert json.dumps(a) == json.dumps(b), (where, a, b)


def final_state(run_dir: Path) -> dict:
    state = load_checkpoint(checkpoint_path(run_dir))
    assert state["finished"] == "completed"
    return {"model": state["model"], "optimizer": state["optimizer"], "strategy": state["strategy"],
            "counters": state["counters"]}


@pytest.fixture(autouse=True)
def _clear_preemption():
    """Each test starts and ends with no preemption requested (conftest sets one intra-op thread)."""
    PREEMPTION.clear()
    yield
    PREEMPTION.clear()


# --------------------------------------------------------------------------------------- CLI runs

def _cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"       # the same on every run, and kind to a busy machine
    env.update(extra or {})
    return env


def _cli(run_dir: Path, root: Path, extra=(), hooks=()) -> list[str]:
    """The CLI (`python -m selective_backprop.train`), or with `hooks` the same main() with test hooks
    installed (tests/hooked_train.py)."""
    entry = [str(REPO / "tests" / "hooked_train.py"), *hooks, "--"] if hooks else ["-m", "selective_backprop.train"]
    return [sys.executable, *entry, *CLI_BASE, f"dataset.root={root}", f"hydra.run.dir={run_dir}", *extra]


def cli_run(run_dir: Path, root: Path, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(run_dir, root, extra), cwd=REPO, env=_cli_env(), capture_output=True,
                          text=True, timeout=600)


def cli_interrupt(run_dir: Path, root: Path, point: str, sig: int, extra=(), check=None) -> tuple[int, str]:
    """Start the CLI, wait until it pauses at `point` (e.g. 'eval:2'), run `check()`, send `sig`."""
    marker = run_dir.parent / f"marker-{point.replace(':', '-')}"
    marker.unlink(missing_ok=True)
    log_path = run_dir.parent / f"log-{point.replace(':', '-')}-{sig}.txt"
    hooks = ("--pause-at", point, "--marker", str(marker))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_cli(run_dir, root, extra, hooks), cwd=REPO, env=_cli_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for_marker(proc, marker, point, log_path, timeout_s=400)
            if check is not None:
                check()
            proc.send_signal(sig)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, log_path.read_text()


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory, fmnist_root):
    """The uninterrupted CLI run: (metric rows without timings, final state)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = cli_run(run_dir, fmnist_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return without_timing(metric_rows(run_dir)), final_state(run_dir)


def test_killed_and_preempted_cli_run_resumes_exactly(tmp_path, fmnist_root, cli_reference):
    """SIGKILL mid-epoch / during evaluation / during the checkpoint write, and SIGTERM mid-epoch:
    every resume continues metrics.jsonl without duplicates or gaps and ends bit-identical."""
    run_dir = tmp_path / "run"
    ckpt = checkpoint_path(run_dir)

    # 1. SIGKILL in the first epoch: no checkpoint yet, the next run starts over.
    rc, _ = cli_interrupt(run_dir, fmnist_root, "mid_epoch:0", signal.SIGKILL)
    assert rc == -signal.SIGKILL and not ckpt.exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    # 2. SIGTERM in the second epoch; checkpoint_every=2, so epoch 1's boundary was only in memory.
    rc, out = cli_interrupt(run_dir, fmnist_root, "mid_epoch:1", signal.SIGTERM, ["train.checkpoint_every=2"])
    assert rc == 75, out[-3000:]
    assert "preempted by SIGTERM" in out and "Traceback" not in out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    state = load_checkpoint(ckpt)
    assert state["next_epoch"] == 1 and len(state["history"]) == 1 and state["finished"] is None
    assert len(metric_rows(run_dir)) == 1

    # 3. SIGKILL after epoch 2's evaluation row is in metrics.jsonl, before its checkpoint.
    rc, _ = cli_interrupt(run_dir, fmnist_root, "eval:2", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert [r["epoch"] for r in metric_rows(run_dir)] == [1.0, 2.0]
    assert load_checkpoint(ckpt)["next_epoch"] == 1

    # 4. SIGKILL between writing the temp checkpoint and renaming it: the old checkpoint stays valid.
    def temp_written():
        assert list(run_dir.glob(".checkpoint.pt.tmp*"))
    rc, _ = cli_interrupt(run_dir, fmnist_root, "checkpoint_write:2", signal.SIGKILL, check=temp_written)
    assert rc == -signal.SIGKILL
    assert load_checkpoint(ckpt)["next_epoch"] == 1

    # 5. Resume to the end.
    proc = cli_run(run_dir, fmnist_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming from" in proc.stdout
    assert not list(run_dir.glob(".checkpoint.pt.tmp*"))
    rows, state = cli_reference
    assert without_timing(metric_rows(run_dir)) == rows
    assert_same_state(final_state(run_dir), state)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_cli_divergence_is_one_error_line(tmp_path, fmnist_root):
    run_dir = tmp_path / "run"
    proc = cli_run(run_dir, fmnist_root, ["optimizer.lr=1e6", "train.max_epochs=1"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "non-finite" in errors[0] and "optimizer.lr" in errors[0], errors
    assert "Traceback" not in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and "non-finite" in summary["error"]


def test_multirun_failing_job_does_not_stop_the_sweep(tmp_path, fmnist_root):
    """Job 0 diverges at run time; Hydra's launcher records it as failed and runs job 1."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "selective_backprop.train", "-m", *CLI_BASE, "train.max_epochs=1",
           "optimizer.lr=1e6,0.1", f"dataset.root={fmnist_root}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    failed = json.loads((sweep / "0" / "summary.json").read_text())
    good = json.loads((sweep / "1" / "summary.json").read_text())
    assert failed["status"] == "diverged" and "non-finite" in failed["error"]
    assert failed["config"]["optimizer"]["lr"] == 1e6
    assert good["status"] == "completed" and good["config"]["optimizer"]["lr"] == 0.1
    assert len(metric_rows(sweep / "1")) == 1


# ------------------------------------------------------------------------------------ in-process

@pytest.fixture(scope="module")
def small_bundle(fmnist_root):
    """256 training examples; the test set cut to 1000 images to keep evaluations cheap."""
    from selective_backprop.data import ImageArrayDataset, build_data

    cfg = tiny_config(fmnist_root, INPROC_BASE)
    bundle = build_data(cfg.dataset, int(cfg.seed))
    test = ImageArrayDataset(bundle.test.images[:1000], bundle.test.targets[:1000], bundle.test.transform)
    return dataclasses.replace(bundle, test=test)


STRATEGIES = {"traditional": ["strategy=traditional"], "sb": ["strategy=sb"],
              "stale_sb": ["strategy=stale_sb", "strategy.staleness=2"],
              "kath18": ["strategy=kath18", "strategy.selectivity=0.5"],
              # uniform at s=0.5 on 256 examples makes 4 steps in 3 epochs: too short to learn, so the
              # divergence rule (error at chance after the first LR milestone) would stop it; turn it off
              "uniform": ["strategy=uniform", "train.diverge_factor=null"],
              "sb_device_loader": ["strategy=sb", "dataset.loader=device"]}


@pytest.fixture(scope="module")
def references(tmp_path_factory, fmnist_root, small_bundle):
    """Uninterrupted in-process runs per strategy, computed on first use."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            run_dir = tmp_path_factory.mktemp(f"ref-{name}") / "run"
            run(tiny_config(fmnist_root, INPROC_BASE + STRATEGIES[name]), str(run_dir), small_bundle)
            cache[name] = (without_timing(metric_rows(run_dir)), final_state(run_dir))
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_resume_is_exact_for_every_strategy(name, tmp_path, fmnist_root, small_bundle, references, monkeypatch):
    """Crash right after epoch 1's checkpoint (mid evaluation interval: eval_every=2), resume, compare."""
    cfg = tiny_config(fmnist_root, INPROC_BASE + STRATEGIES[name])
    run_dir = tmp_path / "run"
    run_crashing(monkeypatch, lambda: run(cfg, str(run_dir), small_bundle))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "simulated crash" in summary["error"]
    state = load_checkpoint(checkpoint_path(run_dir))
    assert state["next_epoch"] == 1 and state["history"] == [] and state["interval"]["trained"] > 0
    with open(run_dir / "metrics.jsonl", "a") as f:      # a killed writer's partial line
        f.write('{"epoch": 1.0, "step": ')
    run(cfg, str(run_dir), small_bundle)
    rows, final = references(name)
    assert without_timing(metric_rows(run_dir)) == rows      # every line parses: no partial line left
    assert [json.loads(r)["epoch"] for r in rows] == [2.0, 3.0]
    assert_same_state(final_state(run_dir), final)


def test_sigint_at_epoch_boundary_checkpoints_and_resumes(tmp_path, fmnist_root, small_bundle, references,
                                                           monkeypatch):
    """SIGINT during the first evaluation (checkpoint_every=5: not due) -> the boundary is written, status
    preempted; the resumed run matches the uninterrupted one."""
    cfg = tiny_config(fmnist_root, INPROC_BASE + STRATEGIES["sb"] + ["train.eval_every=1",
                                                                     "train.checkpoint_every=5"])
    run_dir = tmp_path / "run"
    original = Evaluator.evaluate

    def evaluate(self, model):
        if not self.rows:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, model)

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        install_preemption_handlers()
        with monkeypatch.context() as m:
            m.setattr(Evaluator, "evaluate", evaluate)
            with pytest.raises(Preempted, match="SIGINT.*holds epoch 1"):
                run(cfg, str(run_dir), small_bundle)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    state = load_checkpoint(checkpoint_path(run_dir))
    assert state["next_epoch"] == 1 and len(state["history"]) == 1
    PREEMPTION.clear()
    run(cfg, str(run_dir), small_bundle)
    reference_dir = tmp_path / "reference"
    run(cfg, str(reference_dir), small_bundle)
    assert without_timing(metric_rows(run_dir)) == without_timing(metric_rows(reference_dir))
    assert_same_state(final_state(run_dir), final_state(reference_dir))


def test_divergence_keeps_the_records_so_far(tmp_path, fmnist_root, small_bundle, monkeypatch):
    """The loss turns non-finite in epoch 2: summary.json says diverged, epoch 1's row and checkpoint stay."""
    cfg = tiny_config(fmnist_root, INPROC_BASE + ["train.eval_every=1"])
    original = RunState.after_epoch

    def after_epoch(self, trainer, epoch):
        original(self, trainer, epoch)
        trainer.base_lr = 1e6            # from epoch 2 on

    monkeypatch.setattr(RunState, "after_epoch", after_epoch)
    run_dir = tmp_path / "run"
    with pytest.raises(DivergedError, match="non-finite"):
        run(cfg, str(run_dir), small_bundle)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and "non-finite" in summary["error"]
    assert [r["epoch"] for r in metric_rows(run_dir)] == [1.0]
    assert load_checkpoint(checkpoint_path(run_dir))["next_epoch"] == 1


def test_kill_after_the_final_checkpoint_finishes_without_training(tmp_path, fmnist_root, small_bundle):
    """Killed between the final checkpoint and the final summary.json: the re-run only writes the summary."""
    cfg = tiny_config(fmnist_root, INPROC_BASE + ["train.max_epochs=1"])
    run_dir = tmp_path / "run"
    error = run(cfg, str(run_dir), small_bundle)
    rows = (run_dir / "metrics.jsonl").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    assert run(cfg, str(run_dir), small_bundle) == error
    assert (run_dir / "metrics.jsonl").read_text() == rows
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["status"] == "completed" and again["steps"] == summary["steps"]


def test_read_metrics_tolerates_partial_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1.0, "test_error": 0.5}, {"epoch": 2.0, "test_error": 0.4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3.0, "test_err')
    assert read_metrics(path) == rows
    path.write_text("")
    assert read_metrics(path) == []


def test_checkpoint_holds_only_tensors_and_plain_types(tmp_path, fmnist_root, small_bundle):
    # no priming epoch, so the one epoch draws and the selector's generator exists (after a priming-only
    # epoch its state is None: "not created yet", resumed from the seed -- see
    # test_unused_generator_state_resumes_from_its_seed)
    cfg = tiny_config(fmnist_root, INPROC_BASE + STRATEGIES["sb"] + ["train.max_epochs=1", "strategy.prime_epochs=0"])
    run(cfg, str(tmp_path / "run"), small_bundle)
    path = checkpoint_path(tmp_path / "run")
    state = torch.load(path, map_location="cpu", weights_only=True)

    def plain(obj, where="") -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                assert isinstance(key, (str, int)), where
                plain(value, f"{where}.{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                plain(value, f"{where}[{i}]")
        else:
            assert obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)), (where, type(obj))
    plain(state)
    assert isinstance(state["config"], dict) and state["config"]["strategy"]["name"] == "sb"
    generator = state["strategy"]["selector"]["generator"]["state"]
    assert generator.dtype == torch.uint8 and state["rng"]["torch"].dtype == torch.uint8
    assert state["next_epoch"] == 1 and state["finished"] == "completed"


def test_unused_generator_state_resumes_from_its_seed():
    """A generator never drawn from (SB's priming epoch) checkpoints as state None with its seed; loading
    that gives the same draws as a fresh generator with that seed."""
    from selective_backprop.selection.selector import SeededGenerator
    unused = SeededGenerator(7).state_dict()
    assert unused == {"seed": 7, "state": None}
    resumed = SeededGenerator(0)
    resumed.load_state_dict(unused)
    fresh = SeededGenerator(7)
    assert torch.equal(torch.rand(5, generator=resumed.get("cpu")), torch.rand(5, generator=fresh.get("cpu")))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    """A pickle that would run code is not loaded (weights_only=True): one-line ConfigError instead."""
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": 1, "x": _Exploit()}, f, protocol=2)
    with pytest.raises(ConfigError, match="checkpoint.*cannot be loaded"):
        load_checkpoint(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="checkpoint"):
        load_checkpoint(path)
    save_checkpoint({"format": 99}, path)
    with pytest.raises(ConfigError, match="format 99"):
        load_checkpoint(path)

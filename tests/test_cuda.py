"""The CUDA code paths: run on a machine with a GPU (`make gpu-check` runs them all), skipped elsewhere.

Every test here is marked `cuda` (conftest skips it when torch.cuda.is_available() is False; the
NCCL test also needs two GPUs). The data are generated in memory or as CIFAR10 files (tests/datagen.py),
so nothing depends on a dataset being installed on the GPU machine.

* host syncs: each strategy trains on CUDA with the device loader, and from its second epoch on every
  step runs under torch.cuda.set_sync_debug_mode("error"); an epoch whose kept set is decided up front
  (uniform, Stale-SB's stale epochs, InfoBatch's pruning epochs) may synchronize once, before its first
  batch. Composer-SB's default `sample` rule and fp16 AMP synchronize on every step by design
  (torch.multinomial without replacement checks its input on the host; the grad scaler reads its
  inf flag before stepping): they run without the sync check;
* phase times from CUDA events add up to the measured training wall time;
* AMP bf16 / fp16 (with the grad scaler) and channels_last training;
* the device loader on CUDA gives the CPU path's batches;
* a run resumed on CUDA ends identical to the uninterrupted one;
* two ranks over NCCL agree on the global loss history, step counts and weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time

import pytest
import torch

import datagen
from conftest import REPO, tiny_config
from selective_backprop.data.transforms import augment_batch
from selective_backprop.engine.trainer import Trainer
from selective_backprop.record import PHASES
from selective_backprop.sources.device_source import DeviceSource
from selective_backprop.sources.source import TorchSource
from selective_backprop.timing import PhaseTimer
from test_device_source import synthetic_bundle

pytestmark = pytest.mark.cuda

CPU = torch.device("cpu")
BASE = ["device=cuda", "dataset.loader=device", "train.batch_size=32", "train.max_epochs=3",
        "train.tensorboard=false", "train.diverge_factor=null"]


def cuda_config(tmp_path, overrides):
    return tiny_config(tmp_path / "data", BASE + list(overrides))


def bundle(n: int = 512):
    """3-channel 16x16 images with crop, flip and Cutout: the device loader's whole augmentation."""
    return synthetic_bundle(n=n, channels=3, size=16, crop_padding=2, hflip=True, cutout=4)


@pytest.fixture(autouse=True)
def _default_sync_mode():
    """Every test ends with sync debugging off, whatever it raised (each Trainer sets cuDNN's mode itself)."""
    yield
    torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------------- host syncs

SYNC_FREE = {
    "traditional": ["strategy=traditional"],
    "sb": ["strategy=sb", "strategy.select_batch_size=128", "train.channels_last=true"],
    "sb_bf16": ["strategy=sb", "train.precision=bf16", "strategy.select_precision=bf16"],
    "stale_sb": ["strategy=stale_sb", "strategy.staleness=2"],
    "kath18": ["strategy=kath18"],
    "kath18_importance": ["strategy=kath18"],          # the gate forced open: importance-sampled steps
    "uniform": ["strategy=uniform"],
    "infobatch": ["strategy=infobatch"],
    "composer_sb_topk": ["strategy=composer_sb", "strategy.rule=topk"],
}


def epoch_starts_with_sync(strategy, epoch: int, max_epochs: float) -> bool:
    """Epochs whose kept set is decided up front index the epoch's order with a boolean mask: one host
    sync before the first batch, by design."""
    if strategy.name == "uniform":
        return True
    if strategy.name == "stale_sb":
        return not strategy.selection_epoch(epoch)
    if strategy.name == "infobatch":
        return strategy.prunes(epoch, max_epochs)
    return False


@contextlib.contextmanager
def sync_errors():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_syncs_from(trainer: Trainer, first_checked: int = 1) -> list[tuple[int, int]]:
    """Wrap the strategy's epochs so that, from epoch `first_checked` on, every batch is produced and
    trained under sync_debug_mode("error") (a synchronizing call raises). Epoch 0 is the warm-up
    (allocations, cuDNN autotuning); from then on cuDNN picks algorithms by heuristics, so a batch
    shape first seen later does not autotune. Returns the (epoch, checked steps) list it fills."""
    original = trainer.strategy.epoch
    max_epochs = float(trainer.cfg.train.max_epochs)
    checked: list[tuple[int, int]] = []

    def epoch(e, ctx):
        batches = original(e, ctx)
        if e < first_checked:
            yield from batches
            return
        torch.backends.cudnn.benchmark = False
        if epoch_starts_with_sync(trainer.strategy, e, max_epochs):
            first = next(batches, None)
            if first is None:
                return
            yield first
        steps = 0
        with sync_errors():
            for batch in batches:
                yield batch          # the trainer's step on it runs inside the checked region too
                steps += 1
        checked.append((e, steps))

    trainer.strategy.epoch = epoch
    return checked


@pytest.mark.parametrize("name", list(SYNC_FREE))
def test_training_steps_make_no_host_sync(name, tmp_path, monkeypatch):
    """Each strategy's epochs 1 and 2 on CUDA: no synchronizing call in the loader, the selection
    forward, percentiles, draw, packing or the training step (the trainer's loop included)."""
    trainer = Trainer(cuda_config(tmp_path, SYNC_FREE[name]), str(tmp_path / "run"), data_bundle=bundle())
    if name == "kath18_importance":
        trainer.strategy.tau_th = 0.0          # open as soon as tau has a value: from epoch 1
    event_waits = []
    synchronize = torch.cuda.Event.synchronize

    def counting_synchronize(event):
        # the packer's and Kath18's lagged reads wait on the event of an earlier submission, by design;
        # torch's sync debug mode does not see Event.synchronize, so those waits are counted here
        if torch.cuda.get_sync_debug_mode():
            event_waits.append(event.query())
        return synchronize(event)

    monkeypatch.setattr(torch.cuda.Event, "synchronize", counting_synchronize)
    checked = check_syncs_from(trainer)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["epochs"] == 3.0
    assert [e for e, _ in checked] == [1, 2] and all(steps >= 2 for _, steps in checked), checked
    if name in ("sb", "sb_bf16", "stale_sb", "uniform"):
        assert event_waits                       # packed batches were counted through lagged reads
    if name == "kath18_importance":
        assert trainer.strategy.importance_steps > 0
    if name == "composer_sb_topk":
        assert summary["examples_backpropped"] < summary["examples_forwarded"]   # epoch 2 selected


@pytest.mark.parametrize("overrides", [["strategy=composer_sb"], ["strategy=sb", "train.precision=fp16"]],
                         ids=["composer_sb_sample", "sb_fp16"])
def test_paths_that_sync_by_design_train_on_cuda(overrides, tmp_path):
    """Composer-SB's `sample` rule and fp16 AMP synchronize each step (see the module doc): checked
    without the sync debug mode, for a finished run with finite losses."""
    trainer = Trainer(cuda_config(tmp_path, overrides), str(tmp_path / "run"), data_bundle=bundle())
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["steps"] > 0
    assert all(math.isfinite(row["train_loss"]) for row in trainer.eval_rows)


# --------------------------------------------------------------------------------- phase timing

def test_cuda_event_phase_times_add_up_to_the_training_wall_time(tmp_path):
    """CUDA events time every phase; with the time outside any phase ('other') they cover the
    perf_counter training time (train_s) within 3 %, and train_s + eval_s fits in the wall time."""
    trainer = Trainer(cuda_config(tmp_path, ["strategy=sb"]), str(tmp_path / "run"), data_bundle=bundle(1024))
    assert trainer.timer.cuda
    start = time.perf_counter()
    summary = trainer.fit()
    wall = time.perf_counter() - start
    assert all(summary["phase_s"][p] > 0 for p in PHASES), summary["phase_s"]
    events = sum(trainer.timer.totals.values())
    assert events == pytest.approx(summary["train_s"], rel=0.03), (trainer.timer.totals, summary["train_s"])
    assert trainer.timer.train_s + trainer.timer.eval_s <= wall


# ------------------------------------------------------------------------ AMP and channels_last

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_training_on_cuda(precision, tmp_path):
    """SB with AMP and channels_last on CUDA: the training forward (and the selection forward, with
    select_precision) run in the low-precision dtype, evaluation in fp32, weights stay fp32, the grad
    scaler is on for fp16 only with a finite scale, and every training loss is finite."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cfg = cuda_config(tmp_path, ["strategy=sb", f"train.precision={precision}",
                                 f"strategy.select_precision={precision}", "train.channels_last=true"])
    trainer = Trainer(cfg, str(tmp_path / "run"), data_bundle=bundle())
    dtypes = []
    trainer.model.register_forward_hook(lambda module, args, out: dtypes.append((module.training, out.dtype)))
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["steps"] > 0
    assert {dtype for training, dtype in dtypes if training} == {amp}
    assert {dtype for training, dtype in dtypes if not training} == {amp, torch.float32}  # selection, evaluation
    assert trainer.amp_dtype == amp and trainer.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert math.isfinite(trainer.scaler.get_scale()) and trainer.scaler.get_scale() > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(math.isfinite(row["train_loss"]) for row in trainer.eval_rows)


# --------------------------------------------------------------------------- the device loader

def test_device_loader_on_cuda_gives_the_cpu_paths_batches():
    """Same seed: the same shuffle order, presampling stream, batch boundaries, indices, labels and
    (un-augmented) pixels as the torchvision path on the CPU."""
    data = synthetic_bundle(n=300, channels=3, size=16, crop_padding=0, hflip=False, cutout=0)
    cpu = TorchSource(data.train, CPU, 7, PhaseTimer(CPU))
    dev = DeviceSource.from_bundle(data, torch.device("cuda"), 7, PhaseTimer(torch.device("cuda")))
    for epoch in (0, 2):
        order = cpu.permutation(epoch)
        assert torch.equal(dev.permutation(epoch).cpu(), order)
        assert torch.equal(dev.with_replacement(epoch, 77).cpu(), cpu.with_replacement(epoch, 77))
        got_c, got_d = list(cpu.batches(order, 64, epoch)), list(dev.batches(order.cuda(), 64, epoch))
        assert [b.x.shape[0] for b in got_d] == [b.x.shape[0] for b in got_c] == [64, 64, 64, 64, 44]
        for bc, bd in zip(got_c, got_d):
            assert bd.x.is_cuda and bd.y.is_cuda
            assert torch.equal(bd.idx.cpu(), bc.idx) and torch.equal(bd.y.cpu(), bc.y)
            torch.testing.assert_close(bd.x.cpu(), bc.x, rtol=0, atol=1e-5)


def test_device_loader_augments_on_cuda_as_the_cpu_arithmetic_does():
    """With crop, flip and Cutout: each CUDA batch is transforms.augment_batch computed on the host
    from the same draws (the CUDA generator of the epoch; CPU and CUDA generators draw different
    streams for one seed, so the draws, not the seed, are shared)."""
    data = synthetic_bundle(n=200, channels=3, size=16, crop_padding=4, hflip=True, cutout=8)
    dev = DeviceSource.from_bundle(data, torch.device("cuda"), 3, PhaseTimer(torch.device("cuda")))
    order = dev.permutation(1)
    draws = dev.generator(1)
    for batch in dev.batches(order, 64, 1):
        idx = batch.idx.cpu()
        want = augment_batch(data.train.images[idx], data.mean, data.std, generator=draws, **data.augment)
        torch.testing.assert_close(batch.x.cpu(), want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- resume

RESUME = {"sb": ["strategy=sb"], "stale_sb": ["strategy=stale_sb", "strategy.staleness=2"],
          "kath18": ["strategy=kath18"]}


@pytest.mark.parametrize("name", list(RESUME))
def test_resume_on_cuda_is_identical_to_the_uninterrupted_run(name, tmp_path, monkeypatch):
    """Crash after epoch 1's checkpoint (deterministic=true), resume: metrics rows (timings aside) and
    the final model, optimizer, strategy state and counters equal the uninterrupted run's."""
    from selective_backprop.engine.checkpoint import checkpoint_path, load_checkpoint
    from selective_backprop.engine.run_state import RunState
    from selective_backprop.train import run
    from resume_helpers import crash_after, metric_rows, without_timing
    from test_reliability import INPROC_BASE, assert_same_state, final_state

    data = bundle(256)
    cfg = cuda_config(tmp_path, INPROC_BASE + RESUME[name])
    run(cfg, str(tmp_path / "reference"), data)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(RunState, "after_epoch", crash_after(1))
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(cfg, str(run_dir), data)
    assert load_checkpoint(checkpoint_path(run_dir))["next_epoch"] == 1
    run(cfg, str(run_dir), data)
    assert without_timing(metric_rows(run_dir)) == without_timing(metric_rows(tmp_path / "reference"))
    assert_same_state(final_state(run_dir), final_state(tmp_path / "reference"))


# --------------------------------------------------------------------------------- NCCL, K = 2

@pytest.mark.cuda(gpus=2)
def test_two_ranks_over_nccl_agree_on_loss_history_and_steps(tmp_path):
    """torchrun, 2 processes on 2 GPUs (NCCL), SB on generated CIFAR10 files with the device loader:
    one run record; both ranks end with the same global loss history, weights and step count."""
    from test_distributed import _env, free_port

    root = tmp_path / "data"
    datagen.make_cifar10(root, n_train_per_batch=128, n_test=128)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(REPO / "tests" / "hooked_train.py"), "--patch-md5", str(root),
           "--rank-state-dir", str(tmp_path / "ranks"), "--", "dataset=cifar10", f"dataset.root={root}",
           "model=resnet8", "model.width=8", "strategy=sb", "device=cuda", "dataset.loader=device",
           "train.batch_size=64", "train.max_epochs=3", "train.progress=false", "train.tensorboard=false",
           "train.diverge_factor=null", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["device_name"] != "cpu"
    states = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    history = [s["strategy"]["selector"]["history"] for s in states]
    assert torch.equal(history[0], history[1]) and states[0]["strategy"]["selector"]["filled"] == 1024
    assert states[0]["counters"]["steps"] == states[1]["counters"]["steps"] == summary["steps"] > 0
    assert all(torch.equal(states[0]["model"][k].cpu(), states[1]["model"][k].cpu()) for k in states[0]["model"])

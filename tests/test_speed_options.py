"""The speed options: selection precision and batch size, channels_last, AMP training and the fast
percentile path, on the CPU. Their CUDA side (no host syncs, AMP with the grad scaler, CUDA-event
timing) is tests/test_cuda.py.

No test here asserts a speed: timings are measured and judged by scripts/benchmark.py only.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import run_tiny, tiny_config
from selective_backprop.sources.device_source import DeviceSource
from selective_backprop.strategies import Context, Counters
from selective_backprop.strategies.sb import SBStrategy
from selective_backprop.timing import PhaseTimer
from selective_backprop.selection import rules
from selective_backprop.selection.packer import BatchPacker
from selective_backprop.selection.selector import LossSelector, selection_forward
from test_device_source import synthetic_bundle

CPU = torch.device("cpu")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return torch.corrcoef(ranks)[0, 1].item()


# ------------------------------------------------------------------------- selection precision

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_selection_losses_rank_like_fp32(precision, fmnist_bundle):
    from selective_backprop.data.transforms import normalize_batch
    from selective_backprop.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, width=8)
    x = normalize_batch(fmnist_bundle.train.images[:256], fmnist_bundle.mean, fmnist_bundle.std)
    y = fmnist_bundle.train.targets[:256]
    ref, _ = selection_forward(model, x, y)
    low, logits = selection_forward(model, x, y, precision=precision)
    assert low.dtype == torch.float32 and low.shape == ref.shape and model.training
    assert spearman(ref, low) > 0.99
    torch.testing.assert_close(low, ref, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_selection_end_to_end(tmp_path, fmnist_root, fmnist_bundle, precision):
    _, summary = run_tiny(tmp_path, fmnist_root, ["strategy=sb", f"strategy.select_precision={precision}",
                                                  "train.max_epochs=1", "train.tensorboard=false"], fmnist_bundle)
    assert summary["status"] == "completed"
    assert summary["strategy_params"]["select_precision"] == precision
    assert math.isfinite(summary["final_test_error"])


# ----------------------------------------------------------------------- selection batch size

class PerExample(nn.Module):
    """Logits that depend on each example alone (no BatchNorm, no reductions across rows)."""

    def forward(self, x):
        return x.flatten(1)[:, :10] * 3.0


def sb_epoch(source, select_batch_size: int, batch_size: int = 64):
    """(training batches, kept indices in selection order) of one SB epoch with a frozen model."""
    ctx = Context(PerExample(), source, source.timer, Counters(), batch_size, CPU)
    # the one-by-one (inclusive) rule without priming: its kept set does not depend on the batching
    strategy = SBStrategy(batch_size, seed=3, beta=2.0, select_batch_size=select_batch_size,
                          percentile="inclusive", prime_epochs=0)
    kept = []
    select = strategy.selector.select

    def spy(losses, **kwargs):
        mask, probs = select(losses, **kwargs)
        kept.append(mask)
        return mask, probs

    strategy.selector.select = spy
    batches = list(strategy.epoch(0, ctx))
    order = source.permutation(0)
    return batches, order[torch.cat(kept)]


def test_select_batch_size_keeps_packing_exact():
    """Selection batches of any size: full training batches of exactly b rows, every kept example once,
    in selection order, with its own pixels and label; the kept set does not depend on the size."""
    bundle = synthetic_bundle(n=700, crop_padding=0, hflip=False, cutout=0)
    source = DeviceSource.from_bundle(bundle, CPU, 0, PhaseTimer(CPU))
    reference = None
    for select_batch_size in (64, 100, 512, 1000):
        batches, kept = sb_epoch(source, select_batch_size)
        assert [b.x.shape[0] for b in batches] == [64] * (kept.shape[0] // 64)
        emitted = torch.cat([b.idx for b in batches])
        assert torch.equal(emitted, kept[:emitted.shape[0]])                # once each, in order
        for b in batches:
            assert torch.equal(b.y, bundle.train_targets[b.idx])
            torch.testing.assert_close(b.x, source.augment(bundle.train.images[b.idx], None), rtol=0, atol=0)
        if reference is None:
            reference = kept
        assert torch.equal(kept, reference), select_batch_size


def test_select_batch_size_end_to_end(tmp_path, fmnist_root, fmnist_bundle):
    _, summary = run_tiny(tmp_path, fmnist_root, ["strategy=sb", "strategy.select_batch_size=200",
                                                  "dataset.loader=device", "train.tensorboard=false"], fmnist_bundle)
    n = len(fmnist_bundle.train)
    assert summary["strategy_params"]["select_batch_size"] == 200
    assert summary["examples_backpropped"] == 64 * summary["steps"]
    assert summary["examples_forwarded"] - summary["examples_backpropped"] == 2 * n


# ------------------------------------------------------------------ channels_last, AMP training

@pytest.mark.parametrize("loader", ["torch", "device"])
def test_channels_last_reaches_selection_and_training(tmp_path, loader):
    """3-channel data: the model, selection inputs and packed training batches are all channels_last."""
    from selective_backprop.engine.trainer import Trainer
    cfg = tiny_config(tmp_path / "data", ["strategy=sb", "train.channels_last=true", f"dataset.loader={loader}",
                                          "train.max_epochs=1", "train.tensorboard=false"])
    trainer = Trainer(cfg, str(tmp_path / "run"), data_bundle=synthetic_bundle(n=300, channels=3))
    seen = {"select": [], "train": []}
    select_forward, train_step = trainer.ctx.select_forward, trainer.train_step

    def spy_select(x, *args, **kwargs):
        seen["select"].append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return select_forward(x, *args, **kwargs)

    def spy_train(batch):
        seen["train"].append(batch.x.is_contiguous(memory_format=torch.channels_last))
        return train_step(batch)

    trainer.ctx.select_forward, trainer.train_step = spy_select, spy_train
    summary = trainer.fit()
    assert summary["status"] == "completed"
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen["select"] and all(seen["select"]) and seen["train"] and all(seen["train"])


def test_packer_keeps_channels_last_and_values():
    x = torch.randn(40, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    idx = torch.arange(40)
    mask = torch.rand(40, generator=torch.Generator().manual_seed(1)) < 0.5
    packer = BatchPacker(8)
    packer.add([idx, x], mask)
    out = list(packer.pop_ready())
    got_idx = torch.cat([b[0] for b in out])
    assert torch.equal(got_idx, idx[mask][:got_idx.shape[0]])
    for b_idx, b_x in out:
        assert b_x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(b_x, x[b_idx])


@pytest.mark.parametrize(("strategy", "precision"), [("traditional", "bf16"), ("sb", "bf16"), ("sb", "fp16")])
def test_train_precision_amp_end_to_end(tmp_path, fmnist_root, fmnist_bundle, strategy, precision):
    trainer, summary = run_tiny(tmp_path, fmnist_root, [f"strategy={strategy}", f"train.precision={precision}",
                                                        "train.max_epochs=1", "train.tensorboard=false"],
                                fmnist_bundle)
    assert summary["status"] == "completed"
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert trainer.scaler.is_enabled() == (precision == "fp16")                # loss scaling for fp16 only
    assert math.isfinite(trainer.eval_rows[-1]["train_loss"])
    assert next(trainer.model.parameters()).dtype == torch.float32          # AMP keeps fp32 weights


# --------------------------------------------------------------- the fast percentile path

def matrix_percentiles(history, filled, losses):
    """The original O(n (R + n)) comparison-matrix form, as the reference."""
    capacity = history.shape[0]
    seq = torch.cat([history[capacity - filled:], losses])
    n = losses.shape[0]
    pos = filled + torch.arange(n)
    t = torch.arange(seq.shape[0])
    in_window = (t[None, :] <= pos[:, None]) & (t[None, :] > pos[:, None] - capacity)
    counts = ((seq[None, :] <= losses[:, None]) & in_window).sum(dim=1)
    return counts.to(torch.float32) / torch.clamp(pos + 1, max=capacity).to(torch.float32)


def test_sorted_percentiles_equal_matrix_form_bit_for_bit():
    """Random histories and batches (n <= R), with ties, NaN, ±inf and ±0: identical results."""
    gen = torch.Generator().manual_seed(7)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    for trial in range(600):
        capacity = int(torch.randint(1, 48, (1,), generator=gen))
        filled = int(torch.randint(0, capacity + 1, (1,), generator=gen))
        n = int(torch.randint(0, capacity + 1, (1,), generator=gen))
        if trial % 2:
            history, losses = torch.randn(capacity, generator=gen), torch.randn(n, generator=gen)
        else:
            history = torch.randint(0, 4, (capacity,), generator=gen).float()
            losses = torch.randint(0, 4, (n,), generator=gen).float()
        if trial % 3 == 0:
            for t in (history, losses):
                if t.numel():
                    where = torch.randint(0, t.numel(), (max(1, t.numel() // 3),), generator=gen)
                    t[where] = specials[torch.randint(0, 5, where.shape, generator=gen)]
        got = rules.sequential_percentiles(history, filled, losses)
        assert torch.equal(got, matrix_percentiles(history, filled, losses)), (capacity, filled, n)


def test_selector_stream_unchanged_by_batching():
    """LossSelector over one stream in different chunkings: the same probabilities and draws.

    A property of the one-by-one (inclusive) rule only: the authors' strict rule pushes each batch
    first, so its percentiles depend on the batching by design (issue 11).
    """
    stream = torch.rand(3000, generator=torch.Generator().manual_seed(2))
    results = []
    for chunk in (128, 1000, 77):
        selector = LossSelector(2.0, 1024, 0.0, seed=1, percentile="inclusive")
        masks, probs = zip(*(selector.select(c) for c in stream.split(chunk)))
        results.append((torch.cat(masks), torch.cat(probs)))
    for mask, probs in results[1:]:
        assert torch.equal(mask, results[0][0]) and torch.equal(probs, results[0][1])


# ------------------------------------------------------------------------- the benchmark script

@pytest.mark.slow
def test_benchmark_script_writes_its_report(tmp_path, fmnist_root):
    """A tiny run of scripts/benchmark.py: the report's structure only (speed is judged by the script)."""
    import importlib.util
    import json

    from conftest import REPO
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench"
    assert bench.main(["--subset", "256", "--epochs", "1", "--rounds", "1", "--batch-size", "32",
                       "--select-batch-sizes", "64",
                       "--precisions", "fp32,bf16", "--quality-examples", "128", "--budget-s", "0.5", "--reps", "2",
                       "--test-subset", "256", "--out", str(out), "--work", str(tmp_path / "work"),
                       f"dataset.root={fmnist_root}", "model.width=8"]) == 0
    res = json.loads((out / "cpu.json").read_text())
    assert set(res["epoch"]) == {"traditional", "sb", "stale_sb"}
    assert res["epoch"]["traditional"]["ratio"] == 1.0 and 0 < res["epoch"]["sb"]["ideal"] < 1
    assert [(r["precision"], r["batch"], r["channels_last"]) for r in res["selection"]][:2] == [
        ("fp32", 32, False), ("fp32", 64, False)]
    assert res["selection"][0]["spearman"] == pytest.approx(1.0) and len(res["train_step"]) == 2
    assert len(res["targets"]) == 4 and res["targets"][3]["met"] is None          # GPU target on CPU
    text = (out / "cpu.md").read_text()
    assert "## Targets" in text and "| sb |" in text

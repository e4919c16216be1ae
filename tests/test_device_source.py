"""The device-resident loader (`dataset.loader: device`): interface, augmentation statistics, seeding.

Statistical bounds are binomial / sample-mean standard errors with 5σ margins (a two-sided 5σ
excursion has probability ≈ 6e-7 per check); every random draw comes from a fixed seed.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import run_tiny, tiny_config
from selective_backprop.data.datasets import DataBundle, ImageArrayDataset
from selective_backprop.data.transforms import augment_batch, build_transforms
from selective_backprop.sources.device_source import DeviceSource, build_source
from selective_backprop.sources.source import Batch, TorchSource
from selective_backprop.timing import PhaseTimer
from selective_backprop.errors import ConfigError

CPU = torch.device("cpu")



def synthetic_bundle(n: int = 256, channels: int = 3, size: int = 16, seed: int = 0, crop_padding: int = 2,
                     hflip: bool = True, cutout: int = 4, n_test: int = 64) -> DataBundle:
    """A small random DataBundle (10 classes) with the given augmentation, for runs without files."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = (0.5,) * channels, (0.25,) * channels
    train_x = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    test_x = torch.randint(0, 256, (n_test, channels, size, size), generator=gen, dtype=torch.uint8)
    train_y, test_y = torch.randint(0, 10, (n,), generator=gen), torch.randint(0, 10, (n_test,), generator=gen)
    augment = {"crop_padding": crop_padding, "hflip": hflip, "cutout": cutout}
    train_tf, test_tf = build_transforms(mean, std, **augment)
    return DataBundle(name="synthetic", train=ImageArrayDataset(train_x, train_y, train_tf),
                      test=ImageArrayDataset(test_x, test_y, test_tf), num_classes=10, in_channels=channels,
                      image_size=(size, size), train_targets=train_y, noisy=None, mean=mean, std=std,
                      augment=augment)


def both_sources(bundle: DataBundle, seed: int = 0, channels_last: bool = False):
    timer = PhaseTimer(CPU)
    return (TorchSource(bundle.train, CPU, seed, timer, channels_last=channels_last),
            DeviceSource.from_bundle(bundle, CPU, seed, timer, channels_last=channels_last))


def collect(source, indices, batch_size, epoch=0) -> Batch:
    return Batch(*(torch.cat(parts) for parts in zip(*source.batches(indices, batch_size, epoch))))


# ---------------------------------------------------------------------------------- interface

def test_interface_parity_with_torch_source():
    """Same length, shuffle order, presampling stream, batch boundaries, labels and (unaugmented) pixels."""
    bundle = synthetic_bundle(n=200, crop_padding=0, hflip=False, cutout=0)
    torch_src, dev_src = both_sources(bundle)
    assert len(dev_src) == len(torch_src) == 200
    for epoch in (0, 3):
        assert torch.equal(dev_src.permutation(epoch), torch_src.permutation(epoch))
        assert torch.equal(dev_src.with_replacement(epoch, 77), torch_src.with_replacement(epoch, 77))
    order = dev_src.permutation(1)
    got_t = list(torch_src.batches(order, 64, 1))
    got_d = list(dev_src.batches(order, 64, 1))
    assert [b.x.shape[0] for b in got_d] == [b.x.shape[0] for b in got_t] == [64, 64, 64, 8]
    for bt, bd in zip(got_t, got_d):
        assert isinstance(bd, Batch)
        assert torch.equal(bd.idx, bt.idx) and torch.equal(bd.y, bt.y)
        assert bd.x.dtype == bt.x.dtype == torch.float32 and bd.x.device == bt.x.device
        torch.testing.assert_close(bd.x, bt.x, rtol=0, atol=1e-5)     # same pixels, same normalisation
    # any index order, including repeats (Kath18) and a subset (Stale-SB)
    some = torch.tensor([5, 5, 199, 0])
    assert torch.equal(collect(dev_src, some, 3).y, bundle.train_targets[some])


def test_augment_is_augment_batch_with_device_constants():
    """The device loader's augmentation is transforms.augment_batch, draw for draw."""
    bundle = synthetic_bundle(n=300, size=20, crop_padding=3, hflip=True, cutout=9)
    _, dev = both_sources(bundle)
    idx = dev.permutation(0)[:150]
    got = collect(dev, idx, 1000, epoch=2).x
    expected = augment_batch(bundle.train.images[idx], bundle.mean, bundle.std, generator=dev.generator(2),
                             **bundle.augment)
    assert torch.equal(got, expected)


def test_channels_last_batches():
    bundle = synthetic_bundle(n=40, channels=3)
    _, dev = both_sources(bundle, channels_last=True)
    batch = next(dev.batches(dev.permutation(0), 16))
    assert batch.x.is_contiguous(memory_format=torch.channels_last) and not batch.x.is_contiguous()


def test_unknown_loader_names_the_key(tmp_path, fmnist_root, fmnist_bundle):
    with pytest.raises(ConfigError, match=r"dataset\.loader='gpu'.*torch, device"):
        build_source("gpu", fmnist_bundle, CPU, 0, PhaseTimer(CPU))
    from selective_backprop.engine.trainer import Trainer
    cfg = tiny_config(fmnist_root, ["dataset.loader=bogus"])
    with pytest.raises(ConfigError, match=r"dataset\.loader='bogus'"):
        Trainer(cfg, str(tmp_path / "run"), data_bundle=fmnist_bundle)


# ------------------------------------------------------------------- augmentation statistics

def coded_bundle(n: int, size: int, crop_padding: int, hflip: bool, cutout: int) -> DataBundle:
    """Images whose channel 0 holds row + 1 and channel 1 column + 1; mean 0, std 1/255 keeps the codes."""
    rows = torch.arange(1, size + 1, dtype=torch.uint8).view(size, 1).expand(size, size)
    image = torch.stack([rows, rows.t()])
    images = image.expand(n, 2, size, size).contiguous()
    augment = {"crop_padding": crop_padding, "hflip": hflip, "cutout": cutout}
    mean, std = (0.0, 0.0), (1 / 255, 1 / 255)
    train_tf, test_tf = build_transforms(mean, std, **augment)
    targets = torch.zeros(n, dtype=torch.int64)
    return DataBundle(name="coded", train=ImageArrayDataset(images, targets, train_tf),
                      test=ImageArrayDataset(images[:1], targets[:1], test_tf), num_classes=10, in_channels=2,
                      image_size=(size, size), train_targets=targets, noisy=None, mean=mean, std=std,
                      augment=augment)


def decode(x: torch.Tensor, pad: int) -> dict[str, torch.Tensor]:
    """Per image: crop offsets (oy, ox) in [0, 2·pad], flipped, and the zeroed (cut-out / padded) mask."""
    codes = x.round().to(torch.int64)
    row, col = codes[:, 0], codes[:, 1]
    _, h, w = row.shape
    valid = row > 0
    r = torch.arange(h).view(1, h, 1)
    c = torch.arange(w).view(1, 1, w)

    def constant(t):
        lo = torch.where(valid, t, 10**6).amin(dim=(1, 2))
        hi = torch.where(valid, t, -10**6).amax(dim=(1, 2))
        return lo == hi, lo

    row_ok, dy = constant(row - 1 - r)
    plain, dx_plain = constant(col - 1 - c)
    mirrored, dx_mirror = constant(col - 1 + c)
    assert row_ok.all() and (plain ^ mirrored).all()       # every image decodes one way only
    dx = torch.where(plain, dx_plain, dx_mirror - (w - 1))
    return {"oy": dy + pad, "ox": dx + pad, "flipped": mirrored, "zero": ~valid}


def both_outputs(bundle: DataBundle, seed: int = 0) -> dict[str, torch.Tensor]:
    torch_src, dev_src = both_sources(bundle, seed)
    order = torch.arange(len(dev_src))
    torch.manual_seed(seed)                     # the torchvision path draws from torch's global RNG
    return {"torch": collect(torch_src, order, 500).x, "device": collect(dev_src, order, 500).x}


def test_crop_offsets_and_flip_rate_match_torchvision_path():
    n, size, pad = 3000, 20, 3
    for name, x in both_outputs(coded_bundle(n, size, pad, hflip=True, cutout=0)).items():
        codes = decode(x, pad)
        for axis in ("oy", "ox"):
            counts = torch.bincount(codes[axis], minlength=2 * pad + 1)
            assert counts.shape[0] == 2 * pad + 1, (name, axis, counts)     # offsets within [0, 2p]
            p = 1 / (2 * pad + 1)
            assert (counts - n * p).abs().max() < 5 * math.sqrt(n * p * (1 - p)), (name, axis, counts)
        rate = codes["flipped"].float().mean().item()
        assert abs(rate - 0.5) < 5 * math.sqrt(0.25 / n), (name, rate)
        # crop padding is zero *before* normalisation: padded pixels decode as code 0 exactly where
        # the offset moved the window past the border
        expected_pad = (size * size - (size - (codes["oy"] - pad).abs()) * (size - (codes["ox"] - pad).abs()))
        assert torch.equal(codes["zero"].sum(dim=(1, 2)), expected_pad), name


def cutout_theory(size: int, length: int) -> tuple[float, float, float]:
    """(E[area], sd[area], P[clipped]) for a centre uniform over the image (DeVries' rule)."""
    half = length // 2
    lengths = torch.tensor([min(c + half, size) - max(c - half, 0) for c in range(size)], dtype=torch.float64)
    area = (lengths.view(-1, 1) * lengths.view(1, -1)).flatten()
    full = (lengths == 2 * half).double().mean().item()
    return area.mean().item(), area.std(unbiased=False).item(), 1 - full ** 2


def test_cutout_area_and_border_clipping_match_torchvision_path():
    n, size, length = 3000, 20, 10
    mean_area, sd_area, p_clipped = cutout_theory(size, length)
    for name, x in both_outputs(coded_bundle(n, size, 0, hflip=False, cutout=length)).items():
        zero = decode(x, 0)["zero"]
        rows, cols = zero.any(dim=2), zero.any(dim=1)
        height, width = rows.sum(dim=1), cols.sum(dim=1)
        assert torch.equal(zero.sum(dim=(1, 2)), height * width), name             # one rectangle
        assert (height >= 1).all() and (height <= length).all() and (width <= length).all(), name
        top, bottom = rows[:, 0], rows[:, -1]
        left, right = cols[:, 0], cols[:, -1]
        short_h, short_w = height < length, width < length
        assert (~short_h | top | bottom).all() and (~short_w | left | right).all(), name  # only borders clip
        area = (height * width).double()
        assert abs(area.mean().item() - mean_area) < 5 * sd_area / math.sqrt(n), (name, area.mean(), mean_area)
        clipped = (short_h | short_w).double().mean().item()
        assert abs(clipped - p_clipped) < 5 * math.sqrt(p_clipped * (1 - p_clipped) / n), (name, clipped)


def test_padding_before_and_cutout_after_normalisation():
    """A white image with mean 0.5, std 0.25: pixels 2.0, zero padding -2.0, Cutout 0.0 — in both paths."""
    bundle = synthetic_bundle(n=400, channels=3, size=16, crop_padding=4, hflip=True, cutout=8)
    bundle.train.images.fill_(255)
    for name, x in both_outputs(bundle).items():
        values = set(torch.unique(x).tolist())
        assert values == {2.0, -2.0, 0.0}, (name, values)


# ------------------------------------------------------------------------------ determinism

def test_augmentation_is_a_function_of_seed_and_epoch():
    """Same (seed, epoch) → same batches, whatever ran before (exact resume); other epoch/seed → different."""
    bundle = synthetic_bundle(n=120, crop_padding=2, hflip=True, cutout=6)
    _, first = both_sources(bundle, seed=5)
    _, fresh = both_sources(bundle, seed=5)
    _, other_seed = both_sources(bundle, seed=6)
    for epoch in range(3):                              # the first source runs epochs 0..2
        collect(first, first.permutation(epoch), 32, epoch)
    a = collect(first, first.permutation(3), 32, 3)
    b = collect(fresh, fresh.permutation(3), 32, 3)     # a resumed run starts at epoch 3
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    c = collect(fresh, first.permutation(3), 32, 4)
    assert torch.equal(c.idx, a.idx) and not torch.equal(c.x, a.x)
    assert not torch.equal(other_seed.permutation(3), a.idx)


# ------------------------------------------------------------------------------ in the trainer

def test_stale_sb_gathers_and_augments_only_chosen_examples(tmp_path, fmnist_root, fmnist_bundle):
    from selective_backprop.engine.trainer import Trainer
    cfg = tiny_config(fmnist_root, ["strategy=stale_sb", "strategy.staleness=2", "dataset.loader=device",
                                    "train.tensorboard=false"])
    trainer = Trainer(cfg, str(tmp_path / "run"), data_bundle=fmnist_bundle)
    source = trainer.source
    assert isinstance(source, DeviceSource)
    asked, augmented = [], []
    batches, augment = source.batches, source.augment

    def spy_batches(indices, batch_size, epoch=0):
        asked.append((epoch, indices.shape[0]))
        return batches(indices, batch_size, epoch)

    def spy_augment(images, generator):
        augmented.append(images.shape[0])
        return augment(images, generator)

    source.batches, source.augment = spy_batches, spy_augment
    trainer.fit()
    n = len(fmnist_bundle.train)
    assert [e for e, _ in asked] == [0, 1]
    (_, selection), (_, stale) = asked
    kept_in_stale_epoch = round(trainer.eval_rows[1]["selected_fraction"] * n)
    assert selection == n and stale == kept_in_stale_epoch < n
    assert sum(augmented) == n + stale             # nothing but the chosen rows was gathered


@pytest.mark.parametrize("strategy", ["traditional", "sb"])
def test_end_to_end_with_device_loader(tmp_path, fmnist_root, fmnist_bundle, strategy):
    trainer, summary = run_tiny(tmp_path, fmnist_root, ["dataset.loader=device", f"strategy={strategy}",
                                                        "train.tensorboard=false"], fmnist_bundle)
    assert isinstance(trainer.source, DeviceSource) and summary["status"] == "completed"
    n = len(fmnist_bundle.train)
    assert summary["epochs"] == 2.0 and summary["examples_backpropped"] % 64 == 0
    if strategy == "traditional":
        assert summary["examples_backpropped"] == 2 * n and summary["steps"] == 2 * math.ceil(n / 64)
    else:
        assert summary["examples_forwarded"] - summary["examples_backpropped"] == 2 * n   # selection forwards
        assert n < summary["examples_backpropped"] < 2 * n     # epoch 0 primes (all n), epoch 1 selects
    assert summary["phase_s"]["data"] > 0
    assert 0.0 <= summary["final_test_error"] < 0.9

"""Data layer: loading through torchvision from fake files, Debian Fashion-MNIST, errors, subset,
label noise and augmentation statistics."""

from __future__ import annotations

import gzip
import logging
import math
import os
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import datagen
from selective_backprop.data import DATASET_INFO, DataBundle, augment_batch, build_data, build_transforms
from selective_backprop.data import fashion_mnist_debian as fmd
from selective_backprop.data.download import main as download_main
from selective_backprop.data.transforms import Cutout, cutout_bounds, shift_crop
from selective_backprop.errors import ConfigError, DataError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
N_PER_BATCH = 20  # fake CIFAR10: 5 batches → 100 train examples


def cfg(name: str, root: Path, **kw: Any) -> dict[str, Any]:
    return {"name": name, "root": str(root), "download": False, **kw}


def normalised(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    return (torch.from_numpy(images).float() / 255 - m) / s


@pytest.fixture
def cifar10_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    datagen.make_cifar10(tmp_path, n_train_per_batch=N_PER_BATCH, n_test=20)
    datagen.patch_md5s(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture
def cifar10(cifar10_root: Path) -> DataBundle:
    return build_data(cfg("cifar10", cifar10_root), seed=0)


@pytest.fixture(scope="module")
def fake_fmnist_gz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size (60000/10000) fake Fashion-MNIST .gz files in the Debian layout."""
    return datagen.make_fashion_mnist_gz(tmp_path_factory.mktemp("fmnist_gz"))


# ----------------------------------------------------------------------------------- loading


def test_cifar10_loads_through_torchvision(cifar10: DataBundle) -> None:
    b = cifar10
    assert (b.name, b.num_classes, b.in_channels, b.image_size) == ("cifar10", 10, 3, (32, 32))
    assert (len(b.train), len(b.test)) == (5 * N_PER_BATCH, 20)
    assert b.noisy is None and b.mean == DATASET_INFO["cifar10"].mean
    x, y = b.train[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int) and y == 7
    images, labels = datagen.fake_split(20, 10)
    for i in (0, 13):
        tx, ty = b.test[i]
        assert ty == labels[i]
        torch.testing.assert_close(tx, normalised(images[i], b.mean, b.std), atol=1e-5, rtol=0)
    train_x, train_y = b.train_arrays()
    assert train_x.shape == (100, 3, 32, 32) and train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert torch.equal(train_x, torch.from_numpy(datagen.fake_split(100, 10)[0]))
    assert torch.equal(train_y, torch.arange(100) % 10) and torch.equal(b.train_targets, train_y)
    test_x, test_y = b.test_arrays()
    assert torch.equal(test_x, torch.from_numpy(images)) and torch.equal(test_y, torch.from_numpy(labels))


def test_cifar100_loads_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datagen.make_cifar100(tmp_path, n_train=150, n_test=50)
    datagen.patch_md5s(monkeypatch, tmp_path)
    b = build_data(cfg("cifar100", tmp_path), seed=0)
    assert (b.num_classes, len(b.train), len(b.test)) == (100, 150, 50)
    assert torch.equal(b.train_targets, torch.arange(150) % 100)
    images, _ = datagen.fake_split(50, 100)
    x, y = b.test[42]
    assert y == 42
    torch.testing.assert_close(x, normalised(images[42], b.mean, b.std), atol=1e-5, rtol=0)
    assert b.augment == {"crop_padding": 4, "hflip": True, "cutout": 8}


@pytest.mark.parametrize("extra", [True, False])
def test_svhn_train_extra_and_label_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: bool
) -> None:
    datagen.make_svhn(tmp_path, n_train=30, n_test=20, n_extra=25)
    datagen.patch_md5s(monkeypatch, tmp_path)
    b = build_data(cfg("svhn", tmp_path, extra=extra), seed=0)
    n = 55 if extra else 30
    assert (len(b.train), len(b.test), b.num_classes, b.in_channels) == (n, 20, 10, 3)
    digits = np.concatenate([datagen.svhn_digits(30), datagen.svhn_digits(25, 1000)])[:n]
    assert torch.equal(b.train_targets, torch.from_numpy(digits))
    assert (b.train_targets == 0).any()  # stored as 10 in the .mat files
    train_x, _ = b.train_arrays()
    assert train_x.shape == (n, 3, 32, 32) and train_x.dtype == torch.uint8 and train_x.is_contiguous()
    assert torch.equal(train_x[3], torch.from_numpy(datagen.fake_image(3, 3)))
    if extra:
        assert torch.equal(train_x[30], torch.from_numpy(datagen.fake_image(1000, 0)))
    tx, ty = b.test[10]
    assert ty == 0
    torch.testing.assert_close(tx, normalised(datagen.fake_image(10, 0), b.mean, b.std), atol=1e-5, rtol=0)
    assert b.augment == {"crop_padding": 0, "hflip": False, "cutout": 20}


def test_real_fashion_mnist_from_debian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not DEBIAN_FMNIST.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DEBIAN_FMNIST} is missing in CI: install the Debian package dataset-fashion-mnist")
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    monkeypatch.delenv(fmd.ENV_VAR, raising=False)
    with caplog.at_level(logging.INFO, logger="selective_backprop.data"):
        b = build_data(cfg("fashion_mnist", tmp_path), seed=0)
    assert "decompressing Debian Fashion-MNIST" in caplog.text
    assert (len(b.train), len(b.test), b.num_classes, b.in_channels, b.image_size) == (
        60000,
        10000,
        10,
        1,
        (28, 28),
    )
    assert torch.equal(torch.bincount(b.train_targets, minlength=10), torch.full((10,), 6000))
    train_x, train_y = b.train_arrays()
    assert (
        train_x.shape == (60000, 1, 28, 28) and train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    )
    x, y = b.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == int(train_y[0])
    for name, spec in fmd.IDX_FILES.items():
        assert (tmp_path / "FashionMNIST" / "raw" / name).stat().st_size == spec.size
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="selective_backprop.data"):
        again = build_data(cfg("fashion_mnist", tmp_path), seed=0)
    assert "decompressing" not in caplog.text and torch.equal(again.train_arrays()[0], train_x)


def test_fashion_mnist_from_env_dir_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_fmnist_gz: Path
) -> None:
    monkeypatch.setenv(fmd.ENV_VAR, str(fake_fmnist_gz))
    b = build_data(cfg("fashion_mnist", tmp_path), seed=0)
    images, labels = datagen.fashion_mnist_arrays(10000)
    test_x, test_y = b.test_arrays()
    assert torch.equal(test_x[:, 0], torch.from_numpy(images)) and torch.equal(
        test_y, torch.from_numpy(labels).long()
    )
    assert b.augment == {"crop_padding": 2, "hflip": True, "cutout": 0}
    assert not [p for p in (tmp_path / "FashionMNIST" / "raw").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fashion_mnist"])
def test_missing_files_name_folder_and_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(fmd.ENV_VAR, str(tmp_path / "no_debian_here"))
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        build_data(cfg(name, root), seed=0)
    msg = str(info.value)
    folder = {
        "cifar10": root / "cifar-10-batches-py",
        "cifar100": root / "cifar-100-python",
        "svhn": root,
    }.get(name, root / "FashionMNIST" / "raw")
    assert f"'{folder}'" in msg and "download" in msg and f"download {name} --root {root}" in msg
    assert "\n" not in msg and msg.startswith("dataset.root")


def test_corrupted_cifar_file_is_named(cifar10_root: Path) -> None:
    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3") as info:
        build_data(cfg("cifar10", cifar10_root), seed=0)
    assert str(batch) in str(info.value) and "corrupted" in str(info.value)


def test_missing_svhn_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datagen.make_svhn(tmp_path, n_extra=None)
    datagen.patch_md5s(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="extra_32x32.mat"):
        build_data(cfg("svhn", tmp_path, extra=True), seed=0)


def test_svhn_mat_with_wrong_shape_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datagen.make_svhn(tmp_path, n_extra=None)
    bad = tmp_path / "train_32x32.mat"
    datagen.scipy.io.savemat(
        str(bad), {"X": np.zeros((32, 32, 1, 5), np.uint8), "y": np.ones((5, 1), np.uint8)}
    )
    datagen.patch_md5s(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="train_32x32.mat"):
        build_data(cfg("svhn", tmp_path, extra=False), seed=0)


def test_truncated_idx_gz_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_fmnist_gz: Path
) -> None:
    src = tmp_path / "debian"
    src.mkdir()
    for p in fake_fmnist_gz.iterdir():
        data = p.read_bytes()
        (src / p.name).write_bytes(data[: len(data) // 2] if p.name.startswith("train-images") else data)
    monkeypatch.setenv(fmd.ENV_VAR, str(src))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz") as info:
        build_data(cfg("fashion_mnist", tmp_path / "data"), seed=0)
    assert str(src / "train-images-idx3-ubyte.gz") in str(info.value)
    assert not (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()  # atomic
    assert [
        p.name for p in (tmp_path / "data" / "FashionMNIST" / "raw").iterdir() if p.name.startswith(".")
    ] == []


def test_idx_with_wrong_count_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fmd.ENV_VAR, str(datagen.make_fashion_mnist_gz(tmp_path / "debian", 100, 10)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*bad IDX header"):
        build_data(cfg("fashion_mnist", tmp_path / "data"), seed=0)


def test_corrupt_raw_idx_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_fmnist_gz: Path
) -> None:
    monkeypatch.setenv(fmd.ENV_VAR, str(fake_fmnist_gz))
    build_data(cfg("fashion_mnist", tmp_path), seed=0)
    labels = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        build_data(cfg("fashion_mnist", tmp_path), seed=0)


def test_unknown_name_lists_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset.name.*cifar10, cifar100, svhn, fashion_mnist"):
        build_data(cfg("imagenet", tmp_path), seed=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("augment", {"cutout": -1}),
        ("augment", {"hflip": "yes"}),
        ("mean", [0.5]),
        ("std", [1, 1, 0]),
        ("download", "no"),
    ],
)
def test_bad_options_raise_config_error(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"dataset.{key}"):
        build_data(cfg("cifar10", tmp_path, **{key: value}), seed=0)


# ---------------------------------------------------------------------------- subset & noise


def test_subset_is_seeded_sorted_and_indexed(cifar10_root: Path) -> None:
    full = build_data(cfg("cifar10", cifar10_root), seed=0)
    a = build_data(cfg("cifar10", cifar10_root, subset=37), seed=3)
    again = build_data(cfg("cifar10", cifar10_root, subset=37), seed=3)
    other = build_data(cfg("cifar10", cifar10_root, subset=37), seed=4)
    assert len(a.train) == 37 and len(a.test) == 20 and a.train_arrays()[0].shape[0] == 37
    idx = a.subset_indices
    assert (
        idx is not None
        and torch.equal(idx, again.subset_indices)
        and not torch.equal(idx, other.subset_indices)
    )
    assert torch.equal(
        idx, torch.randperm(100, generator=torch.Generator().manual_seed(3))[:37].sort().values
    )
    assert torch.equal(a.train_arrays()[0], full.train_arrays()[0][idx])
    assert torch.equal(a.train_targets, full.train_targets[idx]) and a.train[5][1] == int(
        full.train_targets[idx[5]]
    )
    assert len(build_data(cfg("cifar10", cifar10_root, subset=100), seed=0).train) == 100


@pytest.mark.parametrize("bad", [0, -3, 101, 2.5, True, "10"])
def test_subset_out_of_range(cifar10_root: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="dataset.subset"):
        build_data(cfg("cifar10", cifar10_root, subset=bad), seed=0)


def test_subset_error_names_range(cifar10_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset.subset: 101 .*\[1, 100\]"):
        build_data(cfg("cifar10", cifar10_root, subset=101), seed=0)


def test_test_subset_is_one_fixed_subset_for_every_seed(cifar10_root: Path) -> None:
    from selective_backprop.data.datasets import TEST_SUBSET_SEED

    full = build_data(cfg("cifar10", cifar10_root), seed=0)
    a = build_data(cfg("cifar10", cifar10_root, test_subset=7), seed=3)
    b = build_data(cfg("cifar10", cifar10_root, test_subset=7), seed=4)
    keep = torch.randperm(20, generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))[:7].sort().values
    assert len(a.test) == 7 and len(a.train) == len(full.train) == 100
    assert torch.equal(a.test_arrays()[0], full.test_arrays()[0][keep])
    assert torch.equal(a.test_arrays()[1], b.test_arrays()[1]) and torch.equal(a.test_arrays()[0], b.test_arrays()[0])


@pytest.mark.parametrize("bad", [0, 21, 2.5, True])
def test_test_subset_out_of_range(cifar10_root: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="dataset.test_subset"):
        build_data(cfg("cifar10", cifar10_root, test_subset=bad), seed=0)


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5])
def test_label_noise_uniform_flip(cifar10_root: Path, fraction: float) -> None:
    b = build_data(cfg("cifar10", cifar10_root, label_noise=fraction), seed=1)
    clean = torch.arange(100) % 10
    assert b.noisy is not None and b.noisy.dtype == torch.bool and b.noisy.shape == (100,)
    assert int(b.noisy.sum()) == round(fraction * 100)
    assert torch.equal(b.noisy, b.train_targets != clean) and torch.equal(b.clean_train_targets, clean)
    assert torch.equal(torch.tensor([b.train[i][1] for i in range(100)]), b.train_targets)
    assert torch.equal(b.train_arrays()[1], b.train_targets)
    again = build_data(cfg("cifar10", cifar10_root, label_noise=fraction), seed=1)
    assert torch.equal(again.train_targets, b.train_targets) and torch.equal(again.noisy, b.noisy)


def test_label_noise_seed_and_subset(cifar10_root: Path) -> None:
    a = build_data(cfg("cifar10", cifar10_root, label_noise=0.3), seed=1)
    b = build_data(cfg("cifar10", cifar10_root, label_noise=0.3), seed=2)
    assert not torch.equal(a.noisy, b.noisy)
    s = build_data(cfg("cifar10", cifar10_root, label_noise=0.2, subset=50), seed=1)
    assert int(s.noisy.sum()) == 10 and torch.equal(s.noisy, s.train_targets != s.clean_train_targets)


def test_label_noise_new_class_is_uniform() -> None:
    from selective_backprop.data import apply_label_noise

    n, c = 90000, 10
    clean = torch.arange(n) % c
    noisy_targets, mask = apply_label_noise(clean, c, 0.5, seed=0)
    shift = ((noisy_targets - clean) % c)[mask]
    counts = torch.bincount(shift, minlength=c).double()
    assert counts[0] == 0 and int(mask.sum()) == n // 2
    expected, sd = n / 2 / (c - 1), math.sqrt(n / 2 * (1 / 9) * (8 / 9))
    assert (counts[1:] - expected).abs().max() < 5 * sd


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.1"])
def test_label_noise_out_of_range(cifar10_root: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"dataset.label_noise.*\[0, 1\)"):
        build_data(cfg("cifar10", cifar10_root, label_noise=bad), seed=0)


# ------------------------------------------------------------------------------ augmentation


def crop_offset(mask: torch.Tensor, pad: int, axis: int) -> int:
    """Offset in [0, 2p] of a crop of a zero-padded all-ones image, from its zero rows/columns."""
    filled = mask.any(dim=1 - axis)  # per row (axis 0) or column (axis 1): any image pixel
    lead = int(torch.argmax(filled.int()))
    trail = int(torch.argmax(filled.flip(0).int()))
    return pad - lead if lead else pad + trail


def test_random_crop_offsets_uniform() -> None:
    pad, n, size = 3, 3500, 10
    train_tf, _ = build_transforms((0.5,), (0.25,), crop_padding=pad)
    img = torch.full((1, size, size), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    offsets = torch.zeros(2, 2 * pad + 1)
    for _ in range(n):
        x = train_tf(img)[0]
        assert set(x.unique().tolist()) <= {2.0, -2.0}  # image (1-0.5)/0.25, zero fill (0-0.5)/0.25
        for axis in (0, 1):
            offsets[axis, crop_offset(x > 0, pad, axis)] += 1
    k = 2 * pad + 1
    sd = math.sqrt(n * (1 / k) * (1 - 1 / k))
    assert (offsets > 0).all() and (offsets - n / k).abs().max() < 5 * sd


def test_shift_crop_equals_torchvision_pad_then_crop() -> None:
    img = torch.randint(0, 256, (3, 7, 9), dtype=torch.uint8)
    pad = 4
    padded = TF.pad(img, pad, fill=0)
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            assert torch.equal(shift_crop(img, oy - pad, ox - pad), TF.crop(padded, oy, ox, 7, 9))


def test_hflip_rate() -> None:
    n = 4000
    train_tf, test_tf = build_transforms((0.0,), (1.0,), hflip=True)
    img = torch.arange(8, dtype=torch.uint8).view(1, 1, 8).expand(1, 4, 8).contiguous()
    plain = test_tf(img)
    torch.manual_seed(1)
    flips = 0
    for _ in range(n):
        x = train_tf(img)
        flipped = torch.equal(x, plain.flip(-1))
        assert flipped or torch.equal(x, plain)
        flips += flipped
    assert abs(flips / n - 0.5) < 5 * math.sqrt(0.25 / n)


def expected_cutout_area(h: int, w: int, length: int) -> float:
    """E[clipped area] for a centre uniform over the h×w pixels (axes independent)."""

    def mean_extent(extent: int) -> float:
        spans = [cutout_bounds(c, length, extent) for c in range(extent)]
        return sum(hi - lo for lo, hi in spans) / extent

    return mean_extent(h) * mean_extent(w)


@pytest.mark.parametrize(("size", "length"), [(32, 16), (12, 8), (10, 9)])
def test_cutout_area_and_clipping(size: int, length: int) -> None:
    n = 3000
    train_tf, _ = build_transforms((0.5,), (0.25,), cutout=length)
    img = torch.full((2, size, size), 255, dtype=torch.uint8)
    torch.manual_seed(2)
    areas = []
    for _ in range(n):
        x = train_tf(img)
        masked = x[0] == 0
        assert torch.equal(x[1] == 0, masked)  # same square on every channel
        assert torch.all((x == 0) | (x == 2.0))  # set to 0 after normalisation
        rows, cols = masked.any(1).nonzero(), masked.any(0).nonzero()
        area = int(masked.sum())
        if area:
            assert area == len(rows) * len(cols)  # a rectangle
        areas.append(area)
    a = torch.tensor(areas, dtype=torch.float64)
    side = 2 * (length // 2)
    assert a.max() == side * side and (a < side * side).any()  # full squares and border-clipped ones
    assert abs(a.mean() - expected_cutout_area(size, size, length)) < 5 * a.std() / math.sqrt(n)


def test_cutout_centre_reaches_corners() -> None:
    torch.manual_seed(3)
    cut = Cutout(2)  # a 2×2 square: [c-1, c+1)
    hits = torch.zeros(6, 6)
    for _ in range(3000):
        hits += cut(torch.ones(1, 6, 6))[0] == 0
    assert (hits > 0).all()


def test_test_transform_is_deterministic_and_augmentation_reproducible(cifar10: DataBundle) -> None:
    assert torch.equal(cifar10.test[3][0], cifar10.test[3][0])
    torch.manual_seed(5)
    a = torch.stack([cifar10.train[i][0] for i in range(10)])
    torch.manual_seed(5)
    b = torch.stack([cifar10.train[i][0] for i in range(10)])
    assert torch.equal(a, b) and not torch.equal(a, torch.stack([cifar10.train[i][0] for i in range(10)]))


def test_augment_batch_semantics() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.full((500, 1, 10, 10), 255, dtype=torch.uint8)
    out = augment_batch(img, (0.5,), (0.25,), crop_padding=2, generator=g)
    offsets = {crop_offset(x[0] > 0, 2, 0) for x in out}
    assert offsets == set(range(5)) and set(out.unique().tolist()) == {-2.0, 2.0}
    out = augment_batch(img, (0.5,), (0.25,), cutout=8, generator=g)
    areas = (out[:, 0] == 0).sum((1, 2)).double()
    assert set(out.unique().tolist()) == {0.0, 2.0} and areas.max() == 64 and (areas < 64).any()
    assert abs(areas.mean() - expected_cutout_area(10, 10, 8)) < 5 * areas.std() / math.sqrt(500)
    ramp = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).expand(400, 1, 2, 8)
    flipped = augment_batch(ramp, (0.0,), (1.0,), hflip=True, generator=g)[:, 0, 0, 0] > 0
    assert abs(flipped.double().mean() - 0.5) < 5 * math.sqrt(0.25 / 400)
    plain = augment_batch(ramp, (0.0,), (1.0,))
    torch.testing.assert_close(plain, ramp.float() / 255)


# --------------------------------------------------------------------------- plumbing & CLI


def test_dataloader_and_dictconfig(cifar10_root: Path) -> None:
    node = OmegaConf.create(
        {
            **cfg("cifar10", cifar10_root),
            "subset": None,
            "label_noise": 0.0,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "augment": {"crop_padding": 4, "hflip": True, "cutout": 16},
        }
    )
    b = build_data(node, seed=0)
    assert b.mean == (0.5, 0.5, 0.5) and b.std == (0.25, 0.25, 0.25)
    x, y = next(iter(DataLoader(b.train, batch_size=16, shuffle=True)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_dataset_info_defaults() -> None:
    info = DATASET_INFO
    assert [info[n].cutout for n in ("cifar10", "cifar100", "svhn", "fashion_mnist")] == [16, 8, 20, 0]
    assert info["cifar10"]["std"] == (0.2470, 0.2435, 0.2616) and info["svhn"].crop_padding == 0
    assert info["fashion_mnist"].in_channels == 1 and info["cifar100"]["num_classes"] == 100


def test_download_cli_keeps_intact_files(cifar10_root: Path) -> None:
    assert download_main(["cifar10", "--root", str(cifar10_root)]) == 0


def test_download_cli_fashion_mnist_from_debian_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_fmnist_gz: Path
) -> None:
    monkeypatch.setenv(fmd.ENV_VAR, str(fake_fmnist_gz))
    assert download_main(["fashion_mnist", "--root", str(tmp_path)]) == 0
    assert fmd.raw_files_present(tmp_path)
    with gzip.open(fake_fmnist_gz / "t10k-labels-idx1-ubyte.gz") as f:
        assert (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes() == f.read()
    assert os.environ[fmd.ENV_VAR] == str(fake_fmnist_gz)


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: Any) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(
        DataError, match=r"downloading CIFAR10 failed \(URLError.*no CIFAR10 files in"
    ) as info:
        build_data(cfg("cifar10", tmp_path, download=True), seed=0)
    assert "\n" not in str(info.value)

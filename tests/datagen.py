"""Small fake datasets written in the exact on-disk formats torchvision reads.

* CIFAR10 / CIFAR100: Python-2 style protocol-2 pickles (keys load as ``b'data'`` with
  ``encoding='bytes'`` and as ``'data'`` with ``encoding='latin1'``, like the real files);
  ``data`` is uint8 N×3072 (R, G, B planes, each 32×32 row-major).
* SVHN: MATLAB v5 ``.mat`` files with ``X`` uint8 32×32×3×N and ``y`` N×1 with labels 1..10
  (10 = digit 0).
* Fashion-MNIST: the four gzip'd big-endian IDX files.

Content is deterministic: example i of a split has label ``i % num_classes`` (SVHN: digit
``i % 10``) and pixels :func:`fake_image` (i, label). ``patch_md5s`` points torchvision's md5
tables at the generated files so the real torchvision code (integrity checks included) runs.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torchvision
import torch

CIFAR10_TRAIN_BATCHES = 5


def fake_image(index: int, label: int, channels: int = 3, size: int = 32) -> np.ndarray:
    """uint8 [C, H, W] with pixel (c, h, w) = (7·label + 3·index + 11·c + h + 2·w) mod 256."""
    c, h, w = np.meshgrid(np.arange(channels), np.arange(size), np.arange(size), indexing="ij")
    return ((7 * label + 3 * index + 11 * c + h + 2 * w) % 256).astype(np.uint8)


def fake_split(
    n: int, num_classes: int, channels: int = 3, size: int = 32, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, C, H, W] images, int64 [n] labels) for examples start..start+n-1."""
    labels = (np.arange(start, start + n) % num_classes).astype(np.int64)
    images = (
        np.stack([fake_image(start + i, int(labels[i]), channels, size) for i in range(n)])
        if n
        else np.zeros((0, channels, size, size), np.uint8)
    )
    return images, labels


# ------------------------------------------------------------------------------------------ CIFAR


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as the real CIFAR files do."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: Any) -> None:
    """Pickle ``obj`` with protocol 2, bytes written as Python 2 strings."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _cifar_batch(
    images: np.ndarray,
    labels: np.ndarray,
    label_key: bytes,
    batch_label: bytes,
    extra: dict[bytes, Any] | None = None,
) -> dict[bytes, Any]:
    d: dict[bytes, Any] = {
        b"batch_label": batch_label,
        label_key: [int(v) for v in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"fake_{i:05d}.png".encode() for i in range(len(images))],
    }
    d.update(extra or {})
    return d


def make_cifar10(root: str | Path, n_train_per_batch: int = 20, n_test: int = 20) -> Path:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; returns the folder."""
    folder = Path(root) / torchvision.datasets.CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(CIFAR10_TRAIN_BATCHES):
        x, y = fake_split(n_train_per_batch, 10, start=b * n_train_per_batch)
        write_py2_pickle(
            folder / f"data_batch_{b + 1}",
            _cifar_batch(x, y, b"labels", f"training batch {b + 1} of 5".encode()),
        )
    x, y = fake_split(n_test, 10)
    write_py2_pickle(folder / "test_batch", _cifar_batch(x, y, b"labels", b"testing batch 1 of 1"))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    meta = {b"num_cases_per_batch": n_train_per_batch, b"label_names": names, b"num_vis": 3072}
    write_py2_pickle(folder / "batches.meta", meta)
    return folder


def make_cifar100(root: str | Path, n_train: int = 200, n_test: int = 100) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}``; returns the folder."""
    folder = Path(root) / torchvision.datasets.CIFAR100.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    for fname, n in (("train", n_train), ("test", n_test)):
        x, y = fake_split(n, 100)
        coarse = {b"coarse_labels": [int(v) // 5 for v in y]}
        write_py2_pickle(folder / fname, _cifar_batch(x, y, b"fine_labels", fname.encode(), coarse))
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    write_py2_pickle(folder / "meta", meta)
    return folder


# ------------------------------------------------------------------------------------------- SVHN


def svhn_digits(n: int, start: int = 0) -> np.ndarray:
    """Digits 0..9 of the fake SVHN examples (what torchvision returns: label 10 becomes 0)."""
    return (np.arange(start, start + n) % 10).astype(np.int64)


def write_svhn_mat(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    """``X`` uint8 32×32×3×N (row, col, channel, n), ``y`` N×1 uint8 with 10 for digit 0."""
    x = np.ascontiguousarray(images.transpose(2, 3, 1, 0))  # N,C,H,W → H,W,C,N
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(str(path), {"X": x, "y": y}, format="5")


def make_svhn(root: str | Path, n_train: int = 30, n_test: int = 20, n_extra: int = 25) -> Path:
    """Write ``root/{train,test,extra}_32x32.mat`` (extra skipped when n_extra is None)."""
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, start in (("train", n_train, 0), ("test", n_test, 0), ("extra", n_extra, 1000)):
        if n is None:
            continue
        digits = svhn_digits(n, start)
        images = np.stack([fake_image(start + i, int(digits[i])) for i in range(n)])
        write_svhn_mat(folder / torchvision.datasets.SVHN.split_list[split][1], images, digits)
    return folder


# ---------------------------------------------------------------------------------- Fashion-MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    """A uint8 array as an IDX file: magic 0x08·256 + ndim, big-endian dims, then the bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fashion_mnist_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 28, 28], uint8 [n]) with label i % 10 and images from :func:`fake_image`."""
    labels = (np.arange(n) % 10).astype(np.uint8)
    base = {k: fake_image(k, k, 1, 28)[0] for k in range(10)}  # one image per class keeps this fast
    images = np.stack([base[int(k)] for k in labels]) if n else np.zeros((0, 28, 28), np.uint8)
    return images, labels


def make_fashion_mnist_gz(directory: str | Path, n_train: int = 60000, n_test: int = 10000) -> Path:
    """Write the four ``*-ubyte.gz`` files (Debian layout); the defaults are the real sizes."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = fashion_mnist_arrays(n)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb", compresslevel=1) as f:
                f.write(idx_bytes(arr))
    return folder


# ------------------------------------------------------------------------------------ md5 patches


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def patch_md5s(monkeypatch: pytest.MonkeyPatch, root: str | Path) -> None:
    """Point torchvision's md5 tables at whatever generated files exist under ``root``."""
    root = Path(root)
    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):
        folder = root / cls.base_folder
        if not folder.is_dir():
            continue
        for attr in ("train_list", "test_list"):
            table = [
                [name, md5(folder / name) if (folder / name).is_file() else old]
                for name, old in getattr(cls, attr)
            ]
            monkeypatch.setattr(cls, attr, table)
        meta = dict(cls.meta)
        if (folder / meta["filename"]).is_file():
            meta["md5"] = md5(folder / meta["filename"])
        monkeypatch.setattr(cls, "meta", meta)
    table = {}
    for split, (url, fname, old) in torchvision.datasets.SVHN.split_list.items():
        table[split] = [url, fname, md5(root / fname) if (root / fname).is_file() else old]
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", table)


class SyntheticImages(torch.utils.data.Dataset):
    """n examples of 1×8×8 noise with 4 labels (no augmentation): x and y by index (strategy unit tests)."""

    def __init__(self, n: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=gen)
        self.y = torch.randint(0, 4, (n,), generator=gen)

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

"""Datasets for the paper's setups: CIFAR10, CIFAR100, SVHN (train+extra), Fashion-MNIST.

Files are read once through torchvision's dataset classes (``download`` passed through); their
in-memory arrays become uint8 N×C×H×W tensors, wrapped by :class:`ImageArrayDataset`, which
applies the transforms per item without touching the files again. :func:`build_data` also takes
a seeded subset and applies seeded UniformFlip label noise.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.datasets.utils import calculate_md5

from selective_backprop.data import fashion_mnist_debian as fmd
from selective_backprop.data.info import DATASET_INFO, DatasetInfo
from selective_backprop.data.transforms import build_transforms
from selective_backprop.errors import ConfigError, DataError, check_folder

__all__ = [
    "DATASET_INFO",
    "DataBundle",
    "DatasetInfo",
    "DatasetOptions",
    "ImageArrayDataset",
    "apply_label_noise",
    "build_data",
    "check_root",
    "fetch",
    "load_arrays",
    "parse_options",
    "select_subset",
]

log = logging.getLogger(__name__)

Arrays = tuple[torch.Tensor, torch.Tensor]  # uint8 [N,C,H,W], int64 [N]


_DEBIAN_HINT = ", or install the Debian package dataset-fashion-mnist"
TEST_SUBSET_SEED = 20240101  # dataset.test_subset: the same test examples for every run
_NOISE_SEED_XOR = 0x9E3779B97F4A7C15  # label noise draws from its own stream, not the subset's


class ImageArrayDataset(Dataset):
    """Item i → (transform(images[i]), int(targets[i])) from in-memory uint8 C×H×W images."""

    def __init__(
        self, images: torch.Tensor, targets: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets must be [N={images.shape[0]}], got {tuple(targets.shape)}")
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.targets[index])


@dataclass
class DataBundle:
    """Everything the engine needs about one dataset; see :func:`build_data`."""

    name: str
    train: ImageArrayDataset
    test: ImageArrayDataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    train_targets: torch.Tensor  # int64 [N], after label noise; the same tensor train[i] reads
    noisy: torch.Tensor | None  # bool [N] where noise flipped the label; None without noise
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # crop_padding, hflip, cutout: the train augmentation, as keyword arguments of augment_batch
    augment: dict[str, Any] = field(default_factory=dict)
    clean_train_targets: torch.Tensor | None = field(default=None, repr=False)  # before label noise
    subset_indices: torch.Tensor | None = field(default=None, repr=False)  # into the full train set

    def train_arrays(self) -> Arrays:
        """(uint8 [N,C,H,W] un-augmented images, int64 [N] targets after noise); shared, do not modify."""
        return self.train.images, self.train.targets

    def test_arrays(self) -> Arrays:
        """(uint8 [M,C,H,W] images, int64 [M] targets); shared, do not modify."""
        return self.test.images, self.test.targets


@dataclass(frozen=True)
class DatasetOptions:
    """A dataset config, checked (ConfigError naming the field) and with DATASET_INFO's defaults filled in."""

    name: str
    root: Path
    download: bool
    subset: int | None
    test_subset: int | None
    label_noise: float
    extra: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    hflip: bool
    cutout: int


# ---------------------------------------------------------------------------------------- config


def _as_dict(cfg: Any, field_name: str) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ConfigError(f"{field_name}: expected a mapping, got {type(cfg).__name__}")


def _canonical_name(raw: Any) -> str:
    name = str(raw).strip().lower().replace("-", "_") if raw is not None else ""
    if name not in DATASET_INFO:
        raise ConfigError(f"dataset.name: unknown dataset {raw!r}; accepted: {', '.join(DATASET_INFO)}")
    return name


def _int_opt(value: Any, key: str, minimum: int, accepted: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: {accepted}")
    return int(value)


def _bool_opt(value: Any, key: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: true or false")
    return bool(value)


def _stats_opt(value: Any, key: str, default: tuple[float, ...], positive: bool) -> tuple[float, ...]:
    if value is None:
        return default
    accepted = f"a list of {len(default)} {'positive ' if positive else ''}numbers"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(default):
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: {accepted}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: {accepted}") from None
    if positive and min(out) <= 0:
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: {accepted}")
    return out


def _noise_opt(value: Any) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"dataset.label_noise: {value!r} is out of range; accepted: a fraction in [0, 1)")
    return float(value)


def _test_subset_opt(value: Any) -> int | None:
    if value is None:
        return None
    return _int_opt(value, "dataset.test_subset", 1, "a positive integer (at most the test-set size) or null")


def _subset_opt(value: Any) -> int | None:
    if value is None:
        return None
    return _int_opt(value, "dataset.subset", 1, "a positive integer (at most the training-set size) or null")


def parse_options(cfg: Any) -> DatasetOptions:
    """The `dataset` config as DatasetOptions: name, root, download, subset >= 1, label_noise in [0, 1),
    stats, augmentation (no files are touched)."""
    d = _as_dict(cfg, "dataset")
    name = _canonical_name(d.get("name"))
    info = DATASET_INFO[name]
    if not d.get("root"):
        raise ConfigError(
            "dataset.root: missing; set it to the folder that holds (or will hold) the dataset files"
        )
    aug = _as_dict(d.get("augment"), "dataset.augment")
    crop = aug.get("crop_padding", info.crop_padding)
    cutout = aug.get("cutout", info.cutout)
    return DatasetOptions(
        name=name,
        root=Path(str(d["root"])).expanduser().absolute(),
        download=_bool_opt(d.get("download", False), "dataset.download"),
        subset=_subset_opt(d.get("subset")),
        test_subset=_test_subset_opt(d.get("test_subset")),
        label_noise=_noise_opt(d.get("label_noise", 0.0) or 0.0),
        extra=_bool_opt(d.get("extra", True), "dataset.extra"),
        mean=_stats_opt(d.get("mean"), "dataset.mean", info.mean, positive=False),
        std=_stats_opt(d.get("std"), "dataset.std", info.std, positive=True),
        crop_padding=_int_opt(crop, "dataset.augment.crop_padding", 0, "an integer >= 0 (0 = off)"),
        hflip=_bool_opt(aug.get("hflip", info.hflip), "dataset.augment.hflip"),
        cutout=_int_opt(cutout, "dataset.augment.cutout", 0, "an integer >= 0 (0 = off)"),
    )


# ------------------------------------------------------------------------------------ file errors


def _fetch_hint(name: str, root: Path, alternative: str = "") -> str:
    command = f"python -m selective_backprop.data.download {name} --root {root}"
    return f"{command} (or set dataset.download=true{alternative})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _diagnose(
    name: str, root: Path, folder: Path, files: list[tuple[str, str]], exc: BaseException, download: bool
) -> DataError:
    """Turn torchvision's 'not found or corrupted' into a one-line DataError naming the folder/file."""
    title, hint = DATASET_INFO[name].title, _fetch_hint(name, root)
    prefix = (
        f"dataset.root: downloading {title} failed ({_first_line(exc)}); " if download else "dataset.root: "
    )
    missing = [folder / f for f, _ in files if not (folder / f).is_file()]
    if len(missing) == len(files):
        return DataError(f"{prefix}no {title} files in '{folder}'; fetch them with: {hint}")
    if missing:
        return DataError(f"{prefix}{title} file '{missing[0]}' is missing; fetch it with: {hint}")
    for fname, md5 in files:
        actual = calculate_md5(folder / fname)
        if actual != md5:
            return DataError(
                f"{prefix}{title} file '{folder / fname}' is corrupted or truncated "
                f"(md5 {actual}, expected {md5}); delete it and fetch again with: {hint}"
            )
    return DataError(
        f"{prefix}cannot load {title} from '{folder}' ({_first_line(exc)}); fetch again with: {hint}"
    )


def _check_arrays(images: torch.Tensor, targets: torch.Tensor, name: str, where: Path,
                  labels_where: Path | None = None) -> Arrays:
    """The arrays, checked: shapes, and labels in range (a label problem is reported under `labels_where`,
    the labels' own file, when they have one)."""
    info = DATASET_INFO[name]
    expected = (info.in_channels, *info.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected or targets.shape != (images.shape[0],):
        raise DataError(
            f"dataset.root: {info.title} file '{where}' holds images {tuple(images.shape)} and labels "
            f"{tuple(targets.shape)}; expected [N, {', '.join(map(str, expected))}] and [N]"
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= info.num_classes):
        bad = targets[(targets < 0) | (targets >= info.num_classes)]
        raise DataError(
            f"dataset.root: {info.title} file '{labels_where or where}' has labels outside "
            f"[0, {info.num_classes}) (e.g. {int(bad[0])}; corrupted?); delete it and fetch it again"
        )
    return images, targets.to(torch.int64)


_PARSE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
    AttributeError,
)


# ------------------------------------------------------------------------------------- data root


def _needs_write(name: str, root: Path, download: bool) -> bool:
    """Whether loading ``name`` from ``root`` will write there (decompress the Debian copy, download)."""
    if name == "fashion_mnist":
        return not fmd.raw_files_present(root)
    return download


def check_root(name: str, root: str | Path, download: bool = False) -> None:
    """Raise DataError (one line naming the path) when ``root`` cannot serve as the data folder.

    ``root`` (or the first of its parents that exists) must be a folder, and writable when loading
    will write there. Writability is probed with a temporary file that is deleted at once (permission
    bits alone do not tell: root users, read-only mounts, /proc); nothing else is created.
    """
    root = Path(root).expanduser().absolute()
    check_folder(root, "dataset.root", error=DataError,
                 accepted="a folder (set dataset.root or SB_DATA_ROOT)",
                 writable=_needs_write(name, root, download),
                 accepted_writable=f"a writable folder, or one that already holds the "
                                   f"{DATASET_INFO[name].title} files (set dataset.root or SB_DATA_ROOT)")


# ---------------------------------------------------------------------------------------- loaders


def _load_cifar(name: str, root: Path, download: bool) -> tuple[Arrays, Arrays]:
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = root / cls.base_folder
    files = [(f, m) for f, m in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
        except (RuntimeError, OSError) as exc:
            raise _diagnose(name, root, folder, files, exc, download) from exc
        except _PARSE_ERRORS as exc:
            raise DataError(
                f"dataset.root: cannot parse {cls.__name__} files in '{folder}' ({_first_line(exc)})"
            ) from exc
        images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2)  # HWC → CHW
        splits.append(_check_arrays(images, torch.as_tensor(ds.targets, dtype=torch.int64), name, folder))
    return splits[0], splits[1]


def _load_svhn_split(root: Path, split: str, download: bool, files: list[tuple[str, str]]) -> Arrays:
    cls = torchvision.datasets.SVHN
    path = root / cls.split_list[split][1]
    try:
        ds = cls(str(root), split=split, download=download)
    except (RuntimeError, OSError) as exc:
        raise _diagnose("svhn", root, root, files, exc, download) from exc
    except Exception as exc:  # scipy.io raises several unrelated types for a malformed .mat
        raise DataError(f"dataset.root: cannot parse SVHN file '{path}' ({_first_line(exc)})") from exc
    images = torch.from_numpy(np.asarray(ds.data))  # torchvision already made it N×C×H×W
    return _check_arrays(images, torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)), "svhn", path)


def _load_svhn(root: Path, download: bool, extra: bool) -> tuple[Arrays, Arrays]:
    table = torchvision.datasets.SVHN.split_list
    train_splits = ["train", "extra"] if extra else ["train"]
    files = [(table[s][1], table[s][2]) for s in train_splits + ["test"]]
    parts = [_load_svhn_split(root, s, download, files) for s in train_splits]
    test = _load_svhn_split(root, "test", download, files)
    if len(parts) == 1:
        return parts[0], test
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])), test


def _prepare_fashion_mnist(root: Path, download: bool) -> None:
    """Make sure ``root/FashionMNIST/raw`` holds four valid IDX files (Debian copy, else download)."""
    raw = fmd.raw_folder(root)
    if not fmd.raw_files_present(root) and not fmd.decompress_debian(root) and download:
        try:
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        except (RuntimeError, OSError) as exc:
            raise DataError(
                f"dataset.root: downloading FashionMNIST into '{raw}' failed ({_first_line(exc)}); "
                f"fetch it with: {_fetch_hint('fashion_mnist', root)}"
            ) from exc
    if not fmd.raw_files_present(root):
        raise DataError(
            f"dataset.root: no FashionMNIST files in '{raw}' and no Debian copy in '{fmd.debian_dir()}'; "
            f"fetch them with: {_fetch_hint('fashion_mnist', root, _DEBIAN_HINT)}"
        )
    for fname, spec in fmd.IDX_FILES.items():
        fmd.validate_idx(raw / fname, spec)


def _load_fashion_mnist(root: Path, download: bool) -> tuple[Arrays, Arrays]:
    _prepare_fashion_mnist(root, download)
    splits = []
    for train in (True, False):
        ds = torchvision.datasets.FashionMNIST(str(root), train=train, download=False)
        prefix = fmd.raw_folder(root) / ("train" if train else "t10k")
        splits.append(_check_arrays(ds.data.unsqueeze(1), ds.targets, "fashion_mnist",
                                    Path(f"{prefix}-images-idx3-ubyte"), Path(f"{prefix}-labels-idx1-ubyte")))
    return splits[0], splits[1]


def load_arrays(
    name: str, root: str | Path, download: bool = False, extra: bool = True
) -> tuple[Arrays, Arrays]:
    """((train images, train targets), (test images, test targets)) as uint8 N×C×H×W / int64 tensors."""
    name = _canonical_name(name)
    root = Path(root).expanduser().absolute()
    check_root(name, root, download)
    if name in ("cifar10", "cifar100"):
        train, test = _load_cifar(name, root, download)
    elif name == "svhn":
        train, test = _load_svhn(root, download, extra)
    else:
        train, test = _load_fashion_mnist(root, download)
    return (train[0].contiguous(), train[1]), (test[0].contiguous(), test[1])


def fetch(name: str, root: str | Path, extra: bool = True) -> None:
    """Download (or, for Fashion-MNIST, copy from the Debian package) a dataset into ``root``."""
    load_arrays(name, root, download=True, extra=extra)


# ------------------------------------------------------------------------------- subset and noise


def select_subset(n_total: int, n: int, seed: int, field: str = "dataset.subset") -> torch.Tensor:
    """Sorted int64 indices of a seeded subset of ``n`` out of ``n_total`` examples."""
    if not 1 <= n <= n_total:
        raise ConfigError(
            f"{field}: {n} is out of range; accepted: an integer in [1, {n_total}] or null"
        )
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def apply_label_noise(
    targets: torch.Tensor, num_classes: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """UniformFlip: round(fraction·N) labels, chosen without replacement, moved to a different class.

    Returns (new targets, bool mask of flipped labels), or (a copy of targets, None) for fraction 0.
    """
    fraction = _noise_opt(fraction)
    if fraction == 0.0:
        return targets.clone(), None
    n = targets.shape[0]
    k = round(fraction * n)
    g = torch.Generator().manual_seed((seed ^ _NOISE_SEED_XOR) & 0xFFFF_FFFF_FFFF_FFFF)
    idx = torch.randperm(n, generator=g)[:k]
    shift = torch.randint(1, num_classes, (k,), generator=g)  # uniform over the other classes
    noisy_targets = targets.clone()
    noisy_targets[idx] = (targets[idx] + shift) % num_classes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return noisy_targets, mask


# ----------------------------------------------------------------------------------------- bundle


def build_data(cfg: Any, seed: int) -> DataBundle:
    """Load the dataset the ``dataset`` config node names; see the module docstring."""
    opt = parse_options(cfg)
    info = DATASET_INFO[opt.name]
    (train_x, train_y), (test_x, test_y) = load_arrays(opt.name, opt.root, opt.download, opt.extra)
    subset_idx = None
    if opt.subset is not None:
        subset_idx = select_subset(train_x.shape[0], opt.subset, seed)
        train_x, train_y = train_x[subset_idx], train_y[subset_idx]
    if opt.test_subset is not None:     # one fixed subset whatever the run's seed: seeds compare alike
        keep = select_subset(test_x.shape[0], opt.test_subset, TEST_SUBSET_SEED, "dataset.test_subset")
        test_x, test_y = test_x[keep], test_y[keep]
    targets, noisy = apply_label_noise(train_y, info.num_classes, opt.label_noise, seed)
    augment = {"crop_padding": opt.crop_padding, "hflip": opt.hflip, "cutout": opt.cutout}
    train_tf, test_tf = build_transforms(opt.mean, opt.std, **augment)
    log.info(
        "dataset %s: %d train / %d test examples from '%s'", opt.name, len(targets), len(test_y), opt.root
    )
    return DataBundle(
        name=opt.name,
        train=ImageArrayDataset(train_x, targets, train_tf),
        test=ImageArrayDataset(test_x, test_y, test_tf),
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=info.image_size,
        train_targets=targets,
        noisy=noisy,
        mean=opt.mean,
        std=opt.std,
        augment=augment,
        clean_train_targets=train_y,
        subset_indices=subset_idx,
    )

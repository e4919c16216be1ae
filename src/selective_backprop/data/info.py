"""What each dataset is: classes, channels, image size, normalisation stats, augmentation defaults, sizes.

The one place these facts are written (torch-free). The dataset configs (conf/dataset/*.yaml) repeat
mean, std and the augmentation defaults as documentation; tests/test_strategy_config.py holds them
equal to these. The loaders (datasets.py), the Debian Fashion-MNIST checks (fashion_mnist_debian.py)
and validation read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DATASET_INFO", "DatasetInfo"]


@dataclass(frozen=True)
class DatasetInfo:
    """Per-dataset facts and default settings (also readable as ``info['num_classes']``)."""

    num_classes: int
    in_channels: int
    image_size: tuple[int, int]      # (height, width)
    mean: tuple[float, ...]          # per channel, of the [0, 1] training images
    std: tuple[float, ...]
    crop_padding: int                # augmentation defaults: random crop of the zero-padded image,
    hflip: bool                      # horizontal flip,
    cutout: int                      # Cutout length (0 = off)
    train_size: int                  # the full training set (SVHN: train + extra)
    test_size: int
    title: str                       # as in messages: torchvision's class name
    extra_size: int = 0              # of train_size, the examples of an optional `extra` split (SVHN)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def training_examples(self, extra: bool = True) -> int:
        """The training-set size, with or without the `extra` split (dataset.extra)."""
        return self.train_size if extra else self.train_size - self.extra_size


DATASET_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        num_classes=10, in_channels=3, image_size=(32, 32),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        crop_padding=4, hflip=True, cutout=16,
        train_size=50000, test_size=10000, title="CIFAR10",
    ),
    "cifar100": DatasetInfo(
        num_classes=100, in_channels=3, image_size=(32, 32),
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        crop_padding=4, hflip=True, cutout=8,
        train_size=50000, test_size=10000, title="CIFAR100",
    ),
    # Cutout's SVHN setup uses neither crop nor flip; train_size is train (73,257) + extra (531,131).
    "svhn": DatasetInfo(
        num_classes=10, in_channels=3, image_size=(32, 32),
        mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
        crop_padding=0, hflip=False, cutout=20,
        train_size=604388, test_size=26032, title="SVHN", extra_size=531131,
    ),
    # (decision) crop padding 2 + flip for Fashion-MNIST, no Cutout.
    "fashion_mnist": DatasetInfo(
        num_classes=10, in_channels=1, image_size=(28, 28),
        mean=(0.2860,), std=(0.3530,),
        crop_padding=2, hflip=True, cutout=0,
        train_size=60000, test_size=10000, title="FashionMNIST",
    ),
}

"""Data layer: ``build_data(cfg, seed) -> DataBundle`` for CIFAR10/100, SVHN and Fashion-MNIST."""

from selective_backprop.data.datasets import (
    DATASET_INFO,
    DataBundle,
    DatasetInfo,
    ImageArrayDataset,
    apply_label_noise,
    build_data,
    fetch,
    load_arrays,
    select_subset,
)
from selective_backprop.data.transforms import Cutout, augment_batch, build_transforms, normalize_batch

__all__ = [
    "DATASET_INFO",
    "Cutout",
    "DataBundle",
    "DatasetInfo",
    "ImageArrayDataset",
    "apply_label_noise",
    "augment_batch",
    "build_data",
    "build_transforms",
    "fetch",
    "load_arrays",
    "normalize_batch",
    "select_subset",
]

"""Device-resident training data (`dataset.loader: device`): no DataLoader, no host round trip.

The whole training set lives on the model's device as one uint8 [N,C,H,W] tensor (4x smaller than
float; SVHN train+extra is 1.9 GB). A batch is an `index_select` of the requested indices followed
by the augmentation as batched tensor ops (crop with zero padding before normalisation, flip,
normalise, Cutout after normalisation; the semantics of :mod:`selective_backprop.data.transforms`),
drawn from a torch.Generator on the device seeded from (seed, epoch): an epoch's augmentation is a
pure function of (seed, epoch, the indices asked for), so a resumed run sees the same batches.

Only the rows asked for are gathered and augmented: under Stale-SB and the uniform control that is
the chosen examples only. Shuffle orders are the same as :class:`TorchSource`'s (drawn on the host
from the same seed), copied to the device without blocking. Nothing here waits for the device.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from selective_backprop.data.transforms import batch_crop, batch_cutout
from selective_backprop.errors import ConfigError
from selective_backprop.sources.source import Batch, TorchSource, derive_seed
from selective_backprop.timing import PhaseTimer

LOADERS = ("torch", "device")
_AUGMENT_STREAM = 4     # derive_seed(seed, epoch, 4): the device loader's augmentation draws


class DeviceSource:
    """The training set on `device`, augmented per batch with tensor ops (same interface as TorchSource)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, device: torch.device, seed: int,
                 timer: PhaseTimer, mean: Sequence[float], std: Sequence[float], crop_padding: int = 0,
                 hflip: bool = False, cutout: int = 0, channels_last: bool = False):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {images.dtype} {tuple(images.shape)}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.targets = targets.to(self.device, torch.int64)
        self.seed = int(seed)
        self.timer = timer
        channels = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1).to(self.device)
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.cutout = int(cutout)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def from_bundle(cls, data: Any, device: torch.device, seed: int, timer: PhaseTimer,
                    channels_last: bool = False) -> "DeviceSource":
        """From a DataBundle: its un-augmented training arrays, normalisation and augmentation settings."""
        images, targets = data.train_arrays()
        return cls(images, targets, device, seed, timer, data.mean, data.std, channels_last=channels_last,
                   **dict(data.augment))

    def __len__(self) -> int:
        return self.images.shape[0]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host → device without a host sync (pinned staging + non-blocking copy on CUDA)."""
        if t.device == self.device or self.device.type == "cpu":
            return t.to(self.device)
        if t.device.type == "cpu" and self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's shuffle order on the device: the same order TorchSource gives for (seed, epoch)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
        return self._to_device(torch.randperm(len(self), generator=gen))

    def with_replacement(self, epoch: int, count: int) -> torch.Tensor:
        """`count` indices drawn uniformly with replacement (Kath18's stream), on the device."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 1))
        return self._to_device(torch.randint(len(self), (count,), generator=gen))

    def generator(self, epoch: int) -> torch.Generator:
        """The augmentation generator of `epoch`, on the device."""
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, epoch, _AUGMENT_STREAM))

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B,C,H,W] → augmented, normalised float32, drawing crop, flip, Cutout in that order.

        The same draws and arithmetic as :func:`~selective_backprop.data.transforms.augment_batch`
        (so it is tested against it), with the normalisation constants already on the device.
        """
        x = images
        if self.crop_padding > 0:
            x = batch_crop(x, self.crop_padding, generator)
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=generator, device=self.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x.to(torch.float32) / 255.0 - self.mean) / self.std
        if self.cutout > 0:
            x = batch_cutout(x, self.cutout, generator)
        return x.contiguous(memory_format=self.memory_format)

    def batches(self, indices: torch.Tensor, batch_size: int, epoch: int = 0) -> Iterator[Batch]:
        """Gather and augment `indices` in this order, `batch_size` at a time (last batch may be smaller)."""
        with self.timer.phase("data"):
            order = self._to_device(indices.detach().to(torch.int64))
            gen = self.generator(epoch)
        for start in range(0, order.shape[0], batch_size):
            with self.timer.phase("data"):
                idx = order[start:start + batch_size]
                batch = Batch(idx, self.augment(self.images.index_select(0, idx), gen),
                              self.targets.index_select(0, idx))
            yield batch


def build_source(loader: str, data: Any, device: torch.device, seed: int, timer: PhaseTimer,
                 num_workers: int = 0, channels_last: bool = False):
    """The training-data source named by `dataset.loader`: 'torch' (DataLoader) or 'device'."""
    if loader == "torch":
        return TorchSource(data.train, device, seed, timer, num_workers, channels_last)
    if loader == "device":
        return DeviceSource.from_bundle(data, device, seed, timer, channels_last)
    raise ConfigError(f"dataset.loader={loader!r}: unknown; accepted: {', '.join(LOADERS)}")

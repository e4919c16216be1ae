"""Training data by dataset index: the strategy says which examples, the source loads them."""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from selective_backprop.timing import PhaseTimer


class Batch(NamedTuple):
    """Examples with their dataset indices, on the model's device."""

    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, stream): stable across runs and resumes."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


class _Indexed(Dataset):
    """Wraps a dataset so items carry their index."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return i, x, y


class TorchSource:
    """torchvision Dataset + DataLoader path (`dataset.loader: torch`): augmentation per example on the host."""

    def __init__(self, dataset: Dataset, device: torch.device, seed: int, timer: PhaseTimer,
                 num_workers: int = 0, channels_last: bool = False):
        self.dataset = _Indexed(dataset)
        self.device = device
        self.seed = seed
        self.timer = timer
        self.num_workers = num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.dataset)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's shuffle order (CPU int64), a pure function of (seed, epoch)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
        return torch.randperm(len(self), generator=gen)

    def with_replacement(self, epoch: int, count: int) -> torch.Tensor:
        """`count` indices drawn uniformly with replacement (Kath18's presampling stream)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 1))
        return torch.randint(len(self), (count,), generator=gen)

    def batches(self, indices: torch.Tensor, batch_size: int, epoch: int = 0) -> Iterator[Batch]:
        """Load `indices` in this order, `batch_size` at a time (last batch may be smaller)."""
        order = indices.detach().cpu().tolist()
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=chunks, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch, 2)))
        iterator = iter(loader)
        while True:
            with self.timer.phase("data"):
                try:
                    idx, x, y = next(iterator)
                except StopIteration:
                    return
                batch = Batch(idx.to(self.device, non_blocking=True),
                              x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                              y.to(self.device, non_blocking=True))
            yield batch

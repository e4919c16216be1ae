"""The drop-in API: Selective-Backprop for any training loop."""

from __future__ import annotations

from typing import Iterator

import torch

from selective_backprop.selection import rules
from selective_backprop.selection.packer import BatchPacker
from selective_backprop.selection.selector import (HISTORY, PERCENTILE, LossFn, LossSelector,
                                                   per_example_cross_entropy, selection_forward)


class SelectiveBackprop:
    """Selective-Backprop (Jiang et al., Alg. 1-2) as an iterator over full training batches.

    >>> sb = SelectiveBackprop(beta=2.0, history=1024, batch_size=128, seed=0)  # or selectivity=1/3
    >>> for x, y in loader:
    ...     for xb, yb in sb.select(model, x, y):
    ...         loss = F.cross_entropy(model(xb), yb); ...

    `select` runs a no-grad selection forward (in `select_mode`, precision `select_precision`),
    computes per-example losses with `loss_fn`, keeps each example with probability
    max(CDF(loss)^β, prob_min) over the last `history` losses (`percentile='strict'`, the authors'
    rule: the batch is pushed first and CDF counts the losses strictly below; 'inclusive': one by
    one, counting <=), and yields every full batch of
    exactly `batch_size` kept examples; the remainder is carried to the next call. Extra
    per-example tensors (e.g. dataset indices) passed after `y` ride along and are yielded too.
    """

    def __init__(self, beta: float | None = None, selectivity: float | None = None, history: int = HISTORY,
                 batch_size: int = 128, seed: int = 0, prob_min: float = 0.0,
                 loss_fn: LossFn | None = None, select_mode: str = "eval", select_precision: str = "fp32",
                 percentile: str = PERCENTILE):
        self.beta, self.selectivity = rules.resolve_beta(beta, selectivity)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1")
        self.batch_size = batch_size
        self.loss_fn = loss_fn or per_example_cross_entropy
        self.select_mode = select_mode
        self.select_precision = select_precision
        self.selector = LossSelector(self.beta, history, prob_min, seed, percentile)
        self.percentile = percentile
        # lag=0: the kept count is read after every select() (one tiny sync), so every full batch is
        # yielded by the select() call that completed it and flush() returns only a partial batch.
        self.packer = BatchPacker(batch_size, lag=0)
        self.seen = 0
        self._kept = None

    def select(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               *extras: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        """Selection forward + draw + pack; yields zero or more (x, y, *extras) full batches."""
        losses, _ = selection_forward(model, x, y, self.loss_fn, self.select_mode, self.select_precision)
        mask, _ = self.selector.select(losses)
        self._kept = mask.sum() if self._kept is None else self._kept + mask.sum()
        self.seen += mask.shape[0]
        self.packer.add([x, y, *extras], mask)
        for batch in self.packer.pop_ready():
            yield tuple(batch)

    def flush(self) -> tuple[torch.Tensor, ...] | None:
        """Remove and return the carried-over remainder (fewer than batch_size rows), or None."""
        rest = self.packer.flush()
        return None if rest is None else tuple(rest)

    @property
    def kept(self) -> int:
        """Examples kept so far (reads a device counter: call it rarely)."""
        return 0 if self._kept is None else int(self._kept)

    def state_dict(self) -> dict:
        return {"selector": self.selector.state_dict(), "packer": self.packer.state_dict(),
                "seen": self.seen, "kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.selector.load_state_dict(state["selector"])
        self.packer.load_state_dict(state["packer"])
        self.seen = int(state["seen"])
        self._kept = torch.tensor(int(state["kept"]))

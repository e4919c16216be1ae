"""A strategy defined outside the package (tests/test_adding_a_strategy.py): each epoch, train on every
other example of the epoch's shuffled order, packed into full batches. Written as docs/architecture.md
"Adding a strategy" says: one file, a Strategy subclass with a name and a checked keyword constructor."""

from __future__ import annotations

from typing import Iterator

from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, TrainBatch, _Packing


class EveryOther(_Packing):
    """Keeps the examples at positions offset, offset + 2, ... of each epoch's order."""

    name = "every_other"

    def __init__(self, batch_size: int, seed: int = 0, *, offset: int = 0):
        super().__init__(batch_size, seed, selectivity=0.5)
        self.offset = arg.integer("offset", offset, 0)
        if self.offset > 1:
            arg.fail("offset", offset, "0 or 1")

    def params(self) -> dict:
        return {"offset": self.offset}

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        order = ctx.source.permutation(epoch)
        chosen = order[self.offset::2]
        ctx.counters.considered += order.shape[0]
        ctx.counters.add_kept(chosen.shape[0])
        yield from self._train_on_chosen(chosen, epoch, ctx)

"""Traditional: shuffle each epoch, train on every minibatch (the baseline every strategy is measured against)."""

from __future__ import annotations

from typing import Iterator

from selective_backprop.strategies.base import Context, Strategy, TrainBatch


class Traditional(Strategy):
    """Shuffle each epoch, train on every minibatch."""

    name = "traditional"

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        for b in ctx.source.batches(ctx.source.permutation(epoch), self.batch_size, epoch):
            ctx.counters.considered += b.x.shape[0]
            ctx.counters.add_kept(b.x.shape[0])
            yield TrainBatch(b.idx, b.x, b.y)

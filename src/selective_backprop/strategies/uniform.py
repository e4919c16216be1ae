"""The uniform control: each example kept with probability s regardless of its loss."""

from __future__ import annotations

from typing import Iterator

import torch

from selective_backprop.selection import rules
from selective_backprop.selection.selector import SeededGenerator
from selective_backprop.strategies.base import Context, TrainBatch, _Packing


class Uniform(_Packing):
    """Control: each example kept with probability s regardless of its loss; only kept ones are loaded."""

    name = "uniform"

    def __init__(self, batch_size: int, seed: int = 0, *, beta: float | None = None,
                 selectivity: float | None = None):
        super().__init__(batch_size, seed, beta=beta, selectivity=selectivity)
        self.generator = SeededGenerator(seed)

    def params(self) -> dict:
        return {"beta": self.beta, "selectivity": self.selectivity}

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        order = ctx.source.permutation(epoch).to(ctx.device)
        probs = torch.full(order.shape, self.selectivity, device=ctx.device)
        mask = rules.draw(probs, self.generator.get(ctx.device))
        ctx.counters.considered += order.shape[0]
        ctx.counters.add_kept(mask.sum())
        yield from self._train_on_chosen(order[mask], epoch, ctx)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        super().load_state_dict(state, device)
        self.generator.load_state_dict(state["generator"])

"""Selective-Backprop (Alg. 1 + 2 of the paper): selection forward, keep by the loss's percentile, pack."""

from __future__ import annotations

from typing import Iterator

import torch

from selective_backprop.selection import rules
from selective_backprop.selection.selector import HISTORY, PERCENTILE, PRECISIONS, SELECT_MODES, LossSelector
from selective_backprop.sources.source import Batch
from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, TrainBatch, _Packing


class SBStrategy(_Packing):
    """SB (Alg. 1 + 2): selection forward, P = CDF(loss)^β over the last R losses, pack kept examples.

    `percentile`: strict (the authors': batch pushed first, share strictly below) | inclusive (one by
    one, <=). `prime_epochs` (default 1, the authors' PrimedSelector in SelectiveBackprop
    `lib/selectors.py`): in the first prime_epochs epochs every example is backpropped; the selection
    forward still runs (counted and timed as select_forward) but its losses do not enter the history
    (the authors' BaselineSelector never calls the probability calculator). Its losses feed nothing
    else in SB; Stale-SB stores them as the examples' losses (the authors' forwardpropper writes
    metadata["loss"]), superseded at once by the training forward since every example trains.
    """

    name = "sb"

    def __init__(self, batch_size: int, seed: int = 0, *, beta: float | None = None,
                 selectivity: float | None = None, history: int = HISTORY, prob_min: float = 0.0,
                 select_batch_size: int | None = None, select_mode: str = "eval",
                 select_precision: str = "fp32", percentile: str = PERCENTILE, prime_epochs: int = 1):
        super().__init__(batch_size, seed, beta=beta, selectivity=selectivity)
        self.history = arg.integer("history", history, 1)
        self.prob_min = arg.number("prob_min", prob_min, 0.0, 1.0)
        self.select_batch_size = arg.integer("select_batch_size", select_batch_size, 1, nullable=True) or batch_size
        self.select_mode = arg.choice("select_mode", select_mode, SELECT_MODES)
        self.select_precision = arg.choice("select_precision", select_precision, tuple(PRECISIONS))
        self.percentile = arg.choice("percentile", percentile, rules.PERCENTILE_RULES)
        self.prime_epochs = arg.integer("prime_epochs", prime_epochs, 0)
        self.selector = LossSelector(self.beta, self.history, self.prob_min, seed, self.percentile)

    def params(self) -> dict:
        return {"beta": self.beta, "selectivity": self.selectivity, "history": self.history,
                "prob_min": self.prob_min, "select_batch_size": self.select_batch_size,
                "select_mode": self.select_mode, "select_precision": self.select_precision,
                "percentile": self.percentile, "prime_epochs": self.prime_epochs}

    def priming(self, epoch: int) -> bool:
        """True in the first prime_epochs epochs (every example is backpropped)."""
        return epoch < self.prime_epochs

    def _select_pass(self, epoch: int, ctx: Context) -> Iterator[tuple[Batch, torch.Tensor]]:
        priming = self.priming(epoch)
        for b in ctx.source.batches(ctx.source.permutation(epoch), self.select_batch_size, epoch):
            losses, _ = ctx.select_forward(b.x, b.y, self.select_mode, self.select_precision)
            mask = self._decide(b, losses, priming, ctx)
            ctx.counters.considered += b.x.shape[0]
            ctx.counters.add_kept(mask.sum())
            yield b, mask

    def _decide(self, b: Batch, losses: torch.Tensor, priming: bool, ctx: Context) -> torch.Tensor:
        """Keep mask; priming keeps all (history untouched); data parallel: the CDF is over every
        rank's losses (rank order)."""
        if priming:
            return torch.ones(losses.shape, dtype=torch.bool, device=losses.device)
        all_losses, offset = ctx.dist.all_gather_cat(losses)
        return self.selector.select(losses, all_losses=all_losses, offset=offset)[0]

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        for b, mask in self._select_pass(epoch, ctx):
            yield from self._pack(b, mask, ctx)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "selector": self.selector.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        super().load_state_dict(state, device)
        self.selector.load_state_dict(state["selector"])

"""Stale-SB: selection forwards only every n-th epoch; in between, stored losses decide."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

from selective_backprop.distributed import SINGLE, Dist
from selective_backprop.selection import rules
from selective_backprop.sources.source import Batch
from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, TrainBatch
from selective_backprop.strategies.sb import SBStrategy

logger = logging.getLogger(__name__)


class StaleSB(SBStrategy):
    """Stale-SB as the authors' (SelectiveBackprop `lib/fp_selectors.py` StaleSelector,
    `lib/forwardproppers.py`, `lib/backproppers.py`): a table holds each example's latest loss.

    Selection epochs (every n-th after priming) run the selection forward and store every forwarded
    example's loss; whenever an example is trained, its training-forward loss replaces the stored
    one (after_train_step). Stale epochs run no selection forward: each example's stored loss is
    pushed into the history and ranked against it with the same rule as SB (the authors' selector
    saw stale and fresh losses alike, so stale losses enter the history), chunks of
    select_batch_size; the keep decision is redrawn and only the chosen examples are loaded and
    trained (with an up-to-date training forward).

    Selection epochs: epoch < prime_epochs, or (epoch − max(prime_epochs − 1, 0)) % n == 0 — the
    authors' "epochs since the last forward >= n" (epoch % n == 0 with one priming epoch).
    Not copied: the authors' forwardpropper forwarded the whole queued batch and zipped its losses
    onto the selected examples only (mislabelled losses). Examples never forwarded yet (data
    parallel with N not divisible by K: at most K − 1) hold +inf: ranked above every loss.

    Data parallel: the table is global (identical on every rank): selection losses and training
    losses are all-gathered with their indices before being stored.
    """

    name = "stale_sb"

    def __init__(self, batch_size: int, seed: int = 0, *, staleness: int = 2, **sb_options: Any):
        """`staleness` n (the authors' runs: 2); `sb_options`: SBStrategy's keywords, same defaults."""
        self.staleness = arg.integer("staleness", staleness, 1)
        super().__init__(batch_size, seed, **sb_options)
        self.loss_table: torch.Tensor | None = None
        self.dist: Dist = SINGLE          # set from the context each epoch (after_train_step has none)

    def params(self) -> dict:
        return {**super().params(), "staleness": self.staleness}

    def _tables(self, ctx: Context) -> None:
        if self.loss_table is None:
            self.loss_table = torch.full((len(ctx.source),), float("inf"), device=ctx.device)

    def selection_epoch(self, epoch: int) -> bool:
        """Does `epoch` run selection forwards (see the class docstring)?"""
        anchor = max(self.prime_epochs - 1, 0)
        return self.priming(epoch) or (epoch - anchor) % self.staleness == 0

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        self._tables(ctx)
        self.dist = ctx.dist
        if self.selection_epoch(epoch):
            yield from super().epoch(epoch, ctx)
            return
        order = ctx.source.permutation(epoch).to(ctx.device)
        mask = self._stale_mask(order, ctx)
        ctx.counters.considered += order.shape[0]
        ctx.counters.add_kept(mask.sum())
        yield from self._train_on_chosen(order[mask], epoch, ctx)

    def _stale_mask(self, order: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Keep mask of a stale epoch: stored losses pushed and ranked chunk by chunk, then drawn.

        Data parallel: one gather of every rank's order; chunk c of the global stream is every
        rank's chunk c in rank order, as in a selection epoch, so the history stays global.
        """
        generator = self.selector.generator.get(order.device)
        step = self.select_batch_size
        all_order, offset = ctx.dist.all_gather_cat(order)
        grid = all_order.view(-1, order.shape[0])     # one row per rank: equal shards (ShardedSource)
        rank = offset // max(order.shape[0], 1)
        masks = []
        for start in range(0, order.shape[0], step):
            cols = grid[:, start:start + step]
            all_losses = self.loss_table[cols.reshape(-1)]
            mine = all_losses[rank * cols.shape[1]:(rank + 1) * cols.shape[1]]
            probs = self.selector.probabilities(mine, all_losses=all_losses, offset=rank * cols.shape[1])
            masks.append(rules.draw(probs, generator))
        if not masks:
            return torch.zeros(0, dtype=torch.bool, device=order.device)
        return torch.cat(masks)

    def _decide(self, b: Batch, losses: torch.Tensor, priming: bool, ctx: Context) -> torch.Tensor:
        """Store the selection losses (data parallel: every rank's, so the table stays global), then
        decide as SB."""
        all_losses, offset = ctx.dist.all_gather_cat(losses)
        all_idx, _ = ctx.dist.all_gather_cat(b.idx.to(losses.device))
        self.loss_table[all_idx] = all_losses
        if priming:
            return torch.ones(losses.shape, dtype=torch.bool, device=losses.device)
        probs = self.selector.probabilities(losses, all_losses=all_losses, offset=offset)
        return rules.draw(probs, self.selector.generator.get(probs.device))

    def after_train_step(self, batch: TrainBatch, losses: torch.Tensor, logits: torch.Tensor) -> None:
        """Refresh the stored losses of the trained examples with their training-forward losses
        (the authors' backpropper writes metadata["loss"]); data parallel: every rank's, gathered."""
        if self.loss_table is None:
            return
        idx = batch.idx.to(self.loss_table.device)
        losses = losses.detach().to(self.loss_table.dtype)
        losses, _ = self.dist.all_gather_cat(losses)
        idx, _ = self.dist.all_gather_cat(idx)
        self.loss_table[idx] = losses

    def state_dict(self) -> dict:
        table = None if self.loss_table is None else self.loss_table.cpu()
        return {**super().state_dict(), "loss_table": table}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        super().load_state_dict(state, device)
        table = state.get("loss_table")
        if table is None and "prob_table" in state:
            logger.warning("Stale-SB checkpoint from before issue 11 (a probability table): its losses "
                           "are unknown until the next selection epoch; stale epochs keep them all")
        self.loss_table = None if table is None else table.to(device)

"""InfoBatch (Qin et al., ICLR 2024; github.com/NUS-HPC-AI-Lab/InfoBatch), a peer method in this harness.

No selection pass. Each example's score is the loss of its most recent training forward; every
epoch, a random share r of the examples scoring below the mean is left out and the kept below-mean
ones get weight 1/(1-r); the epochs after the first `delta` share of the run train on everything
(InfoBatch's annealing, with its epoch counter: see `InfoBatch.schedule`).

It needs the run's length: `ctx.extras["max_epochs"]` (train.max_epochs; null is a ConfigError, see
base.run_epochs). Its schedule compares the strategy's epoch index (passes over the data) with it;
with `train.epoch_unit: backpropped` a run takes more passes than max_epochs, and the passes beyond
it count as the annealing tail. With a budget-indexed LR schedule (`lr_schedule.index: budget`) it is
fitted to the run's budget instead (`ctx.extras["budget_clock"]`; train.max_epochs may be null): its
run length is the number of epochs the budget affords (`InfoBatch.schedule_within_budget`).
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import torch

from selective_backprop.distributed import SINGLE, Dist
from selective_backprop.errors import ConfigError
from selective_backprop.selection.selector import SeededGenerator
from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, Strategy, TrainBatch, run_epochs

log = logging.getLogger(__name__)


DELTA = 0.875          # InfoBatch's default share of the run that prunes (its `delta`)
MAX_PRUNE_RATIO = 0.9  # InfoBatch clamps its keep ratio at >= 0.1; larger ratios are refused here


class InfoBatch(Strategy):
    """InfoBatch: prune a random share r of the below-mean-loss examples each epoch, rescale the rest.

    Score: the per-example loss of the example's most recent training forward (`after_train_step`);
    examples never trained on have no score and are never pruned (InfoBatch starts every score at 3,
    above typical losses, to the same effect). In a pruning epoch, of the examples whose score is
    below the mean score (mean over examples with a score), exactly int((1-r)·n_below) are kept,
    drawn uniformly without replacement with a seeded generator (as InfoBatch's `np.random.choice`);
    they get weight 1/(1-r), everything else weight 1. Kept examples are loaded in the epoch's
    seeded order in full batches of b (the last one may be smaller). No selection forward: pruned
    examples cost nothing.

    Schedule (`schedule`): InfoBatch's IBSampler counter. Epoch e (0-based) runs with
    iterations = e + 1 and prunes while iterations <= max_epochs·delta; later epochs train on every
    example. The weights are reset to 1 only in the epoch with iterations == max_epochs·delta + 1,
    so when max_epochs·delta is not a whole number they are never reset: the examples kept with
    weight 1/(1-r) in the last pruning epoch keep it through the whole full-data tail, as in
    InfoBatch (30 epochs, delta 0.875: epochs 0–25 prune, 26–29 train in full with those weights).

    Counters: considered = every example of the epoch; kept = those trained on.

    Data parallel (K ranks): the score table is global, as in InfoBatch: after every step the ranks
    all-gather (index, loss) and every rank writes all of them, so the table and the mean are
    identical everywhere. Unlike InfoBatch, which prunes the whole dataset and then shards the kept
    list, each rank prunes its own shard of the epoch with its own generator; ranks keep different
    counts, so every rank trains on the first m of its kept examples, m = the smallest kept count
    over the ranks (at most a few examples a rank are dropped on top of the pruned ones; the same
    number of steps everywhere, which DDP and the gather need). With one process there is no
    collective.
    """

    name = "infobatch"

    def __init__(self, batch_size: int, seed: int = 0, *, prune_ratio: float = 0.5, delta: float | None = None,
                 anneal: float | None = None):
        """`prune_ratio` r (InfoBatch's default 0.5; at most 0.9); `delta`: the share of the run that
        prunes (InfoBatch's `delta`; null: 0.875); `anneal`: deprecated alias, delta = 1 - anneal
        (give one of the two)."""
        super().__init__(batch_size, seed)
        if not (arg.is_number(prune_ratio) and 0 <= prune_ratio <= MAX_PRUNE_RATIO):
            arg.fail("prune_ratio", prune_ratio, f"a number in [0, {MAX_PRUNE_RATIO}] (InfoBatch keeps at least "
                                                 f"10 % of the below-mean examples)")
        self.prune_ratio = float(prune_ratio)
        self.delta = self._resolve_delta(delta, anneal)
        self.generator = SeededGenerator(seed)
        self.scores: torch.Tensor | None = None     # per dataset index; NaN = never trained on
        self.weights: torch.Tensor | None = None    # per dataset index; persists into the tail as InfoBatch's
        self.last_epoch: dict[str, int] = {}        # {"below_mean", "pruned", "kept"} of the last epoch
        self.dist: Dist = SINGLE                    # set from the context each epoch

    @staticmethod
    def _resolve_delta(delta: float | None, anneal: float | None) -> float:
        if delta is not None and anneal is not None:
            raise ConfigError(f"strategy.delta={delta!r}, strategy.anneal={anneal!r}: not accepted together; "
                              f"accepted: one of them (anneal is the deprecated alias, delta = 1 - anneal)")
        if anneal is not None:
            resolved = 1.0 - arg.number("anneal", anneal, 0, 1)
            log.warning("strategy.anneal is deprecated: write strategy.delta=%s (InfoBatch's name)", resolved)
            return resolved
        return DELTA if delta is None else arg.number("delta", delta, 0, 1)

    def params(self) -> dict:
        return {"prune_ratio": self.prune_ratio, "delta": self.delta, "anneal": 1.0 - self.delta}

    def schedule(self, epoch: int, max_epochs: float) -> tuple[bool, bool]:
        """(prunes, resets_weights) of `epoch`: InfoBatch's IBSampler.reset with iterations = epoch + 1
        (its __init__ calls reset() once, then every epoch's __iter__ again). A pruning epoch resets the
        weights itself; a full-data epoch resets them only when iterations == max_epochs·delta + 1."""
        iterations = epoch + 1
        stop_prune = max_epochs * self.delta
        if iterations > stop_prune:
            return False, iterations == stop_prune + 1
        return self.prune_ratio > 0, True

    def prunes(self, epoch: int, max_epochs: float) -> bool:
        """Pruning epochs: epoch + 1 <= max_epochs·delta (see `schedule`)."""
        return self.schedule(epoch, max_epochs)[0]

    def schedule_within_budget(self, epoch: int, spent: float, full_epoch: float) -> tuple[bool, bool]:
        """`schedule` fitted to the budget (lr_schedule.index=budget). `epoch` epochs are done, `spent` is the
        budget share used so far and `full_epoch` the share one full-data epoch costs. InfoBatch's run
        length is the number of epochs the budget affords, max_epochs = epoch + (1 - spent) / full_epoch
        (those done plus the full-data epochs the rest buys; rounded to 1e-9), re-estimated at every epoch
        start. Once the full-data tail starts the estimate stays put (a full epoch spends exactly
        full_epoch), so the tail is the run's last epochs. The estimate counts the epochs left at the
        full-data price, so against an epoch-indexed run of the same cost the tail starts at the same
        epoch or earlier (one epoch at most when delta · prune_ratio <= 0.5, as with the defaults)."""
        if full_epoch <= 0:                        # no rate measured yet (time budget, first epoch)
            return self.schedule(epoch, math.inf) if self.delta > 0 else (False, False)
        affords = round(epoch + max(0.0, 1.0 - spent) / full_epoch, 9)
        return self.schedule(epoch, affords)

    def _schedule_now(self, epoch: int, ctx: Context) -> tuple[bool, bool]:
        clock = ctx.extras.get("budget_clock")
        if clock is None:
            return self.schedule(epoch, run_epochs(ctx, self.name))
        return self.schedule_within_budget(epoch, clock.fraction(), clock.full_epoch_share())

    def _table(self, ctx: Context) -> torch.Tensor:
        if self.scores is None:
            self.scores = torch.full((len(ctx.source),), float("nan"), device=ctx.device)
        return self.scores

    def _weights(self, ctx: Context) -> torch.Tensor:
        if self.weights is None:
            self.weights = torch.ones(len(ctx.source), device=ctx.device)
        return self.weights

    def prune(self, order: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Kept indices in `order`'s order for one pruning epoch; sets the weights (1/(1-r) for the kept
        below-mean examples, 1 for every other)."""
        scores = self._table(ctx)
        seen = ~torch.isnan(scores)
        mean = scores[seen].mean() if bool(seen.any()) else scores.new_tensor(float("nan"))
        below = scores[order] < mean                                  # NaN (unseen) compares False
        positions = below.nonzero().squeeze(1)
        n_below = positions.shape[0]
        n_keep = int((1.0 - self.prune_ratio) * n_below)
        gen = self.generator.get(order.device)
        chosen = positions[torch.randperm(n_below, generator=gen, device=order.device)[:n_keep]]
        keep = ~below
        keep[chosen] = True
        weights = self._weights(ctx)
        weights.fill_(1.0)
        weights[order[chosen]] = 1.0 / (1.0 - self.prune_ratio)
        self.last_epoch = {"below_mean": n_below, "pruned": n_below - n_keep,
                           "kept": int(order.shape[0] - (n_below - n_keep))}
        return order[keep]

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        prunes, resets = self._schedule_now(epoch, ctx)
        self.dist = ctx.dist
        order = ctx.source.permutation(epoch).to(ctx.device)
        self._table(ctx)
        ctx.counters.considered += order.shape[0]
        if prunes:
            order = self.prune(order, ctx)
        else:
            if resets and self.weights is not None:
                self.weights.fill_(1.0)
            self.last_epoch = {"below_mean": 0, "pruned": 0, "kept": int(order.shape[0])}
        boosted = self.weights is not None and bool((self.weights != 1).any())   # InfoBatch's leftover weights
        weights = self.weights if prunes or boosted else None
        order = order[:ctx.dist.min_int(order.shape[0])]     # the same number of steps on every rank
        ctx.counters.add_kept(order.shape[0])
        log.debug("infobatch epoch %d: %s", epoch, self.last_epoch)
        tag = "pruned" if prunes else "full"
        for b in ctx.source.batches(order, self.batch_size, epoch):
            yield TrainBatch(b.idx, b.x, b.y, None if weights is None else weights[b.idx], tag=tag)

    def after_train_step(self, batch: TrainBatch, losses: torch.Tensor, logits: torch.Tensor) -> None:
        """Record the (unweighted) training losses as scores; data parallel: every rank's, gathered."""
        if self.scores is None:
            return
        idx, values = batch.idx, losses.float()
        idx, _ = self.dist.all_gather_cat(idx)
        values, _ = self.dist.all_gather_cat(values)
        self.scores[idx.to(self.scores.device)] = values.to(self.scores.device)

    def state_dict(self) -> dict:
        return {"scores": None if self.scores is None else self.scores.cpu(),
                "weights": None if self.weights is None else self.weights.cpu(),
                "generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        """Checkpoints without "weights" (older ones) restore weight 1 everywhere."""
        self.scores = None if state["scores"] is None else state["scores"].to(device)
        weights = state.get("weights")
        self.weights = None if weights is None else weights.to(device)
        self.generator.load_state_dict(state["generator"])

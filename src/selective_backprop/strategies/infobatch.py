"""InfoBatch (Qin et al., ICLR 2024; github.com/NUS-HPC-AI-Lab/InfoBatch), a peer method in this harness.

No selection pass. Each example's score is the loss of its most recent training forward; every
epoch, a random share r of the examples scoring below the mean is left out and the kept below-mean
ones get weight 1/(1-r); the last `anneal` share of the epochs trains on everything.

It needs the run's length: `ctx.extras["max_epochs"]` (train.max_epochs; null is a ConfigError, see
base.run_epochs). Its schedule compares the strategy's epoch index (passes over the data) with it;
with `train.epoch_unit: backpropped` a run takes more passes than max_epochs, and the passes beyond
it count as the annealing tail.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch

from selective_backprop.distributed import SINGLE, Dist
from selective_backprop.selection.selector import SeededGenerator
from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, Strategy, TrainBatch, run_epochs

log = logging.getLogger(__name__)


class InfoBatch(Strategy):
    """InfoBatch: prune a random share r of the below-mean-loss examples each epoch, rescale the rest.

    Score: the per-example loss of the example's most recent training forward (`after_train_step`);
    examples never trained on have no score and are never pruned (InfoBatch starts every score at 3,
    above typical losses, to the same effect). Each epoch (except the annealing tail), of the examples
    whose score is below the mean score (mean over examples with a score), exactly
    int((1-r)·n_below) are kept, drawn uniformly without replacement with a seeded generator (as
    InfoBatch's `np.random.choice`); they train with weight 1/(1-r), everything else with weight 1.
    Epochs with index >= (1-anneal)·max_epochs train on every example with weight 1 (InfoBatch's
    delta = 1-anneal). Kept examples are loaded in the epoch's seeded order in full batches of b
    (the last one may be smaller). No selection forward: pruned examples cost nothing.

    Counters: considered = every example of the epoch; kept = those trained on.

    Data parallel (K ranks): the score table is global, as in InfoBatch: after every step the ranks
    all-gather (index, loss) and every rank writes all of them, so the table and the mean are
    identical everywhere. Each rank prunes its own shard of the epoch with its own generator; ranks
    keep different counts, so every rank trains on the first m of its kept examples, m = the smallest
    kept count over the ranks (at most a few examples a rank are dropped on top of the pruned ones;
    the same number of steps everywhere, which DDP and the gather need). With one process there is
    no collective.
    """

    name = "infobatch"

    def __init__(self, batch_size: int, seed: int = 0, *, prune_ratio: float = 0.5, anneal: float = 0.125):
        """`prune_ratio` r (InfoBatch's default 0.5); `anneal`: the last share of the epochs on the full
        data (InfoBatch's delta = 1 - anneal = 0.875)."""
        super().__init__(batch_size, seed)
        self.prune_ratio = arg.number("prune_ratio", prune_ratio, 0, 1, hi_open=True)
        self.anneal = arg.number("anneal", anneal, 0, 1)
        self.generator = SeededGenerator(seed)
        self.scores: torch.Tensor | None = None     # per dataset index; NaN = never trained on
        self.last_epoch: dict[str, int] = {}        # {"below_mean", "pruned", "kept"} of the last epoch
        self.dist: Dist = SINGLE                    # set from the context each epoch

    def params(self) -> dict:
        return {"prune_ratio": self.prune_ratio, "anneal": self.anneal}

    def prunes(self, epoch: int, max_epochs: float) -> bool:
        """Pruning epochs: index < (1 - anneal) · max_epochs; the rest anneal on the full data."""
        return self.prune_ratio > 0 and epoch < (1.0 - self.anneal) * max_epochs - 1e-9

    def _table(self, ctx: Context) -> torch.Tensor:
        if self.scores is None:
            self.scores = torch.full((len(ctx.source),), float("nan"), device=ctx.device)
        return self.scores

    def prune(self, order: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept indices in `order`'s order, per-dataset-index weights) for one pruning epoch."""
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
        weights = torch.ones(scores.shape[0], device=ctx.device)
        weights[order[chosen]] = 1.0 / (1.0 - self.prune_ratio)
        self.last_epoch = {"below_mean": n_below, "pruned": n_below - n_keep,
                           "kept": int(order.shape[0] - (n_below - n_keep))}
        return order[keep], weights

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        max_epochs = run_epochs(ctx, self.name)
        self.dist = ctx.dist
        order = ctx.source.permutation(epoch).to(ctx.device)
        self._table(ctx)
        ctx.counters.considered += order.shape[0]
        weights = None
        if self.prunes(epoch, max_epochs):
            order, weights = self.prune(order, ctx)
        else:
            self.last_epoch = {"below_mean": 0, "pruned": 0, "kept": int(order.shape[0])}
        order = order[:ctx.dist.min_int(order.shape[0])]     # the same number of steps on every rank
        ctx.counters.add_kept(order.shape[0])
        log.debug("infobatch epoch %d: %s", epoch, self.last_epoch)
        tag = "full" if weights is None else "pruned"
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
                "generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        self.scores = None if state["scores"] is None else state["scores"].to(device)
        self.generator.load_state_dict(state["generator"])

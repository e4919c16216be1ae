"""Peer methods in the same harness: InfoBatch and Composer's SelectiveBackprop.

Both are strategies (engine/strategies.py): same data source, trainer, counters, timing and run
records as Traditional, SB, Stale-SB and Kath18, so their cost and error compare directly.

* `infobatch` (Qin et al., ICLR 2024; github.com/NUS-HPC-AI-Lab/InfoBatch): no selection pass. Each
  example's score is the loss of its most recent training forward; every epoch, a random share r of
  the examples scoring below the mean is left out and the kept below-mean ones get weight 1/(1-r);
  the last `anneal` share of the epochs trains on everything.
* `composer_sb` (MosaicML Composer's `SelectiveBackprop` algorithm,
  composer/algorithms/selective_backprop/selective_backprop.py): per batch of b, a no-grad forward
  (optionally on spatially downscaled inputs), keep int(keep·b) examples by loss and train on that
  smaller batch (no packing); only while start <= epoch/max_epochs < end, and every `interrupt`-th
  batch of an epoch trains on the full batch.

Both need the run's length: `ctx.extras["max_epochs"]` (train.max_epochs; null is a ConfigError).
Their schedules compare the strategy's epoch index (passes over the data) with it; with
`train.epoch_unit: backpropped` a run takes more passes than max_epochs, and the passes beyond
it count as the schedule's end (InfoBatch: annealing; Composer: after `end`, plain batches).
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
import torch.nn.functional as F

from selective_backprop.engine import strategy_args as arg
from selective_backprop.engine.distributed import SINGLE, Dist
from selective_backprop.engine.source import Batch
from selective_backprop.engine.strategies import STRATEGIES, Context, Strategy, TrainBatch
from selective_backprop.errors import ConfigError
from selective_backprop.selection.selector import PRECISIONS, SELECT_MODES, SeededGenerator

log = logging.getLogger(__name__)

_INTERPOLATE_MODES = {3: "linear", 4: "bilinear", 5: "trilinear"}     # input dims -> mode (as Composer)


# ------------------------------------------------------------------------------------------ schedule

def run_epochs(ctx: Context, strategy: str) -> float:
    """train.max_epochs as passed by the trainer in `ctx.extras`; both peers schedule on it."""
    value = ctx.extras.get("max_epochs")
    if value is None:
        raise ConfigError(f"train.max_epochs=None: not accepted with strategy={strategy} (it schedules on the "
                          f"run's length); accepted: a number > 0")
    return float(value)


# ------------------------------------------------------------------------------------------ InfoBatch

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


# ------------------------------------------------------------------------------------------ Composer SB

def composer_rank_probabilities(n: int, keep: float, device: torch.device | None = None) -> torch.Tensor:
    """Composer's sampling weights over loss ranks (ascending): ((r + 0.5)/n)^(1/keep − 1), normalised."""
    percentiles = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n
    probs = percentiles ** (1.0 / keep - 1.0)
    return probs / probs.sum()


def should_select(duration: float, batch_index: int, start: float, end: float, interrupt: int) -> bool:
    """Composer's rule: start <= duration < end, and not an interrupt batch ((i + 1) % interrupt == 0)."""
    in_window = start <= duration < end
    return in_window and (interrupt == 0 or (batch_index + 1) % interrupt != 0)


class ComposerSB(Strategy):
    """MosaicML Composer's SelectiveBackprop, as its code runs it, inside this harness.

    Per training batch of b: a no-grad selection forward (inputs downscaled by `scale_factor` with
    F.interpolate when < 1; Composer: bilinear for images, align_corners=False), then int(keep·n)
    examples of the batch (at least 1) are trained on, without packing. `rule` says which:
    `sample` (Composer's code, default): rank the batch by loss and draw int(keep·n) ranks without
    replacement with probability ∝ ((rank + 0.5)/n)^(1/keep − 1), so high losses are likely but not
    certain; `topk`: exactly the int(keep·n) highest losses (the description in Composer's docs).
    Selection runs only in epochs with start <= epoch/max_epochs < end (Composer's elapsed duration
    when max_duration is in epochs: completed epochs / total), and within those every batch i of an
    epoch with (i + 1) % interrupt == 0 trains on the full batch (interrupt 0: never; 1: always, so
    no selection at all). keep = 1 never selects (Composer's `match` skips it). Outside: plain
    batches of b, no selection forward. The selection forward uses `select_mode` (default train:
    Composer forwards the model in its training mode; here BatchNorm uses batch statistics and
    dropout is off) and `select_precision`; it is timed as select_forward, with the downscaling.

    Counters: considered = every example; kept = examples trained on (= backpropped, no packing);
    select_forwarded = the examples of selected batches.

    Data parallel (K ranks): per-rank, as Composer under DDP: each rank selects within its own
    b/K-example share of the step (no collective); ranks hold equal shards, so they take the same
    number of steps and every step trains int(keep·b/K) examples on each rank.
    """

    name = "composer_sb"

    def __init__(self, batch_size: int, seed: int = 0, *, keep: float = 0.5, start: float = 0.5, end: float = 0.9,
                 interrupt: int = 2, scale_factor: float = 1.0, rule: str = "sample", select_mode: str = "train",
                 select_precision: str = "fp32"):
        """Defaults are Composer's (select_mode train: Composer forwards the model in training mode)."""
        super().__init__(batch_size, seed)
        self.keep = arg.number("keep", keep, 0, 1, lo_open=True)
        self.start = arg.number("start", start, 0, 1)
        self.end = arg.number("end", end, 0, 1)
        if not self.start < self.end:
            raise ConfigError(f"strategy.start={self.start!r}, strategy.end={self.end!r}: not accepted; "
                              f"accepted: 0 <= start < end <= 1")
        self.interrupt = arg.integer("interrupt", interrupt, 0)
        self.scale_factor = arg.number("scale_factor", scale_factor, 0, 1, lo_open=True)
        self.rule = arg.choice("rule", rule, ("sample", "topk"))
        self.select_mode = arg.choice("select_mode", select_mode, SELECT_MODES)
        self.select_precision = arg.choice("select_precision", select_precision, tuple(PRECISIONS))
        self.generator = SeededGenerator(seed)

    def params(self) -> dict:
        return {"keep": self.keep, "start": self.start, "end": self.end, "interrupt": self.interrupt,
                "scale_factor": self.scale_factor, "rule": self.rule, "select_mode": self.select_mode,
                "select_precision": self.select_precision}

    def active(self, epoch: int, max_epochs: float) -> bool:
        """Whether this epoch lies in the selection window (and keep < 1)."""
        return self.keep < 1 and self.start <= epoch / max_epochs < self.end

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        max_epochs = run_epochs(ctx, self.name)
        duration = epoch / max_epochs
        window = self.active(epoch, max_epochs)
        for i, b in enumerate(ctx.source.batches(ctx.source.permutation(epoch), self.batch_size, epoch)):
            ctx.counters.considered += b.x.shape[0]
            if window and should_select(duration, i, self.start, self.end, self.interrupt):
                yield self.select(b, ctx)
            else:
                ctx.counters.add_kept(b.x.shape[0])
                yield TrainBatch(b.idx, b.x, b.y, tag="full")

    def _downscale(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_factor == 1.0:
            return x
        if x.dim() not in _INTERPOLATE_MODES:
            raise ConfigError(f"strategy.scale_factor={self.scale_factor!r}: needs 3-5 dimensional inputs, "
                              f"got {x.dim()}; accepted: 1.0 for these data")
        return F.interpolate(x, scale_factor=self.scale_factor, mode=_INTERPOLATE_MODES[x.dim()],
                             align_corners=False, recompute_scale_factor=False)

    def positions(self, losses: torch.Tensor) -> torch.Tensor:
        """Batch positions to train on (ascending), chosen from the selection losses by `rule`."""
        n = losses.shape[0]
        n_select = max(1, int(self.keep * n))
        if self.rule == "topk":
            chosen = torch.topk(losses, n_select, sorted=False).indices
        else:
            ranks = torch.argsort(losses)                 # ascending loss, as Composer
            probs = composer_rank_probabilities(n, self.keep, losses.device)
            draws = torch.multinomial(probs, n_select, replacement=False,
                                      generator=self.generator.get(losses.device))
            chosen = ranks[draws]
        return torch.sort(chosen).values

    def select(self, b: Batch, ctx: Context) -> TrainBatch:
        """Selection forward on the batch and the smaller batch to train on."""
        with ctx.timer.phase("select_forward"):
            x_small = self._downscale(b.x)
            losses, _ = ctx.select_forward(x_small, b.y, self.select_mode, self.select_precision)
        keep = self.positions(losses)
        ctx.counters.add_kept(keep.shape[0])
        return TrainBatch(b.idx[keep], b.x[keep], b.y[keep], tag="selected")

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        self.generator.load_state_dict(state["generator"])


# Registered here (strategies.py imports this module at its end), so `strategy=infobatch` and
# `strategy=composer_sb` build through build_strategy like the others.
STRATEGIES.update({cls.name: cls for cls in (InfoBatch, ComposerSB)})

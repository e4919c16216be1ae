"""MosaicML Composer's `SelectiveBackprop` algorithm (composer/algorithms/selective_backprop/
selective_backprop.py), a peer method in this harness.

Per batch of b, a no-grad forward (optionally on spatially downscaled inputs), keep int(keep·b)
examples by loss and train on that smaller batch (no packing); only while start <= epoch/max_epochs
< end, and every `interrupt`-th batch of an epoch trains on the full batch.

It needs the run's length: `ctx.extras["max_epochs"]` (train.max_epochs; null is a ConfigError, see
base.run_epochs). With `train.epoch_unit: backpropped` a run takes more passes than max_epochs, and
the passes beyond it count as after `end` (plain batches). With a budget-indexed LR schedule
(`lr_schedule.index: budget`) it is fitted to the run's budget instead (`ctx.extras["budget_clock"]`;
train.max_epochs may be null): its elapsed duration is the budget share spent before each batch, as
Composer's own duration when max_duration is counted in samples.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from selective_backprop.errors import ConfigError
from selective_backprop.selection.selector import PRECISIONS, SELECT_MODES, SeededGenerator
from selective_backprop.sources.source import Batch
from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, Strategy, TrainBatch, run_epochs

_INTERPOLATE_MODES = {3: "linear", 4: "bilinear", 5: "trilinear"}     # input dims -> mode (as Composer)
TRAIN_PRECISION = "train"       # select_precision: the training step's precision (train.precision)


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
    when max_duration is in epochs: completed epochs / total; budget-fitted, lr_schedule.index=budget:
    in batches with start <= budget share spent before the batch < end), and within those every batch i of an
    epoch with (i + 1) % interrupt == 0 trains on the full batch (interrupt 0: never; 1: always, so
    no selection at all). keep = 1 never selects (Composer's `match` skips it). Outside: plain
    batches of b, no selection forward. The selection forward uses `select_mode` (default
    train_dropout: Composer forwards the model in its training mode, BatchNorm batch statistics and
    dropout on; `train` turns dropout off, `eval` uses running statistics) and `select_precision`
    (default train: the training step's precision, train.precision, as Composer's precision
    context; or fp32 | bf16 | fp16); it is timed as select_forward, with the downscaling. Unlike
    Composer, whose int(keep·n) can be 0 (an empty batch), at least one example is kept.

    Counters: considered = every example; kept = examples trained on (= backpropped, no packing);
    select_forwarded = the examples of selected batches.

    Data parallel (K ranks): per-rank, as Composer under DDP: each rank selects within its own
    b/K-example share of the step (no collective); ranks hold equal shards, so they take the same
    number of steps and every step trains int(keep·b/K) examples on each rank.
    """

    name = "composer_sb"

    def __init__(self, batch_size: int, seed: int = 0, *, keep: float = 0.5, start: float = 0.5, end: float = 0.9,
                 interrupt: int = 2, scale_factor: float = 1.0, rule: str = "sample",
                 select_mode: str = "train_dropout", select_precision: str = "train"):
        """Defaults are Composer's (its selection forward runs in the model's training mode and the
        training precision)."""
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
        self.select_precision = arg.choice("select_precision", select_precision, (TRAIN_PRECISION, *PRECISIONS))
        self.generator = SeededGenerator(seed)

    def params(self) -> dict:
        return {"keep": self.keep, "start": self.start, "end": self.end, "interrupt": self.interrupt,
                "scale_factor": self.scale_factor, "rule": self.rule, "select_mode": self.select_mode,
                "select_precision": self.select_precision}

    def active(self, epoch: int, max_epochs: float) -> bool:
        """Whether this epoch lies in the selection window (and keep < 1)."""
        return self.keep < 1 and self.start <= epoch / max_epochs < self.end

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        clock = ctx.extras.get("budget_clock")     # budget-fitted: the duration moves batch by batch
        duration = None if clock is not None else epoch / run_epochs(ctx, self.name)
        for i, b in enumerate(ctx.source.batches(ctx.source.permutation(epoch), self.batch_size, epoch)):
            ctx.counters.considered += b.x.shape[0]
            now = clock.fraction() if clock is not None else duration
            if self.keep < 1 and should_select(now, i, self.start, self.end, self.interrupt):
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

    def _precision(self, ctx: Context) -> str:
        """The selection forward's precision; `train`: the training step's (ctx.extras["precision"])."""
        if self.select_precision == TRAIN_PRECISION:
            return str(ctx.extras.get("precision", "fp32"))
        return self.select_precision

    def select(self, b: Batch, ctx: Context) -> TrainBatch:
        """Selection forward on the batch and the smaller batch to train on."""
        with ctx.timer.phase("select_forward"):
            x_small = self._downscale(b.x)
            losses, _ = ctx.select_forward(x_small, b.y, self.select_mode, self._precision(ctx))
        keep = self.positions(losses)
        ctx.counters.add_kept(keep.shape[0])
        return TrainBatch(b.idx[keep], b.x[keep], b.y[keep], tag="selected")

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        self.generator.load_state_dict(state["generator"])

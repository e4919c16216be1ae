"""Kath18: Katharopoulos & Fleuret 2018 importance sampling with variable starting, as the paper ran it."""

from __future__ import annotations

from typing import Iterator

import torch

from selective_backprop.distributed import SINGLE, Dist
from selective_backprop.selection import rules
from selective_backprop.selection.readback import LaggedReader
from selective_backprop.selection.selector import PRECISIONS, SELECT_MODES, SeededGenerator
from selective_backprop.sources.source import Batch
from selective_backprop.strategies import args as arg
from selective_backprop.strategies.base import Context, Strategy, TrainBatch, _ExampleStream


CLOSED_TAU = ("train", "score")          # which losses τ learns from while the gate is closed
SAMPLING = ("shuffle", "replacement")     # how an epoch's examples are drawn
_CLOSED_TAGS = ("uniform", "uniform_scored")


class Kath18(Strategy):
    """Katharopoulos & Fleuret 2018 with variable starting, as the paper ran it.

    While τ ≤ τ_th: uniform minibatches of b. While τ > τ_th: take B = b/s examples, score them in
    inference mode, update τ from those scores and train on b drawn with replacement, p ∝ score.
    Not sticky. An epoch = N examples considered.

    `sampling: shuffle` (default, the SelectiveBackprop authors' port: its KathTrainer reads a
    shuffled DataLoader in both gate states): each epoch is one seeded permutation of the data, so a
    closed-gate epoch trains every example exactly once and an open-gate epoch scores every example
    exactly once; `replacement`: every example of the epoch is drawn uniformly with replacement
    (idiap/importance-sampling's UniformSampler and ModelSampler; about 37 % unseen per epoch).

    `gate_every: epoch` (default, the authors' port): the gate is read once, at the start of each
    epoch, and holds for the whole epoch; `step`: before every step (idiap's ConditionalStartSampler).

    Closed gate. `score_while_closed: true` (default, the authors' port): each minibatch of b also
    gets the inference-mode scoring forward (timed and counted as select_forward). `closed_tau`:
    which losses τ learns from while the gate is closed: `train` (default; the authors' `train_all`,
    whose training pass overwrites each example's loss before τ is updated, and idiap's reference)
    the training forward's (train mode, dropout on), so the scoring forward is paid for and its
    losses unused; `score`: the scoring forward's (needs score_while_closed: true). With
    `score_while_closed: false` there is no scoring forward (idiap's cost).
    """

    name = "kath18"

    def __init__(self, batch_size: int, seed: int = 0, *, selectivity: float = 1 / 3, score: str = "loss",
                 reweight: bool = False, tau_momentum: float = 0.9, select_mode: str = "eval",
                 select_precision: str = "fp32", gate_every: str = "epoch", score_while_closed: bool = True,
                 closed_tau: str = "train", sampling: str = "shuffle"):
        super().__init__(batch_size, seed)
        self.selectivity = arg.number("selectivity", selectivity, 0.0, 1.0, lo_open=True)
        self.presample = int(round(batch_size / self.selectivity))
        if self.presample <= batch_size:
            arg.fail("selectivity", selectivity, f"selectivity < 1 (Kath18's presample ratio B/b = "
                     f"{self.presample}/{batch_size} must be > 1: round(train.batch_size / selectivity) > "
                     f"train.batch_size)")
        self.score = arg.choice("score", score, ("loss", "gnorm"))
        self.reweight = arg.boolean("reweight", reweight)
        self.momentum = arg.number("tau_momentum", tau_momentum, 0.0, 1.0, hi_open=True)
        self.select_mode = arg.choice("select_mode", select_mode, SELECT_MODES)
        self.select_precision = arg.choice("select_precision", select_precision, tuple(PRECISIONS))
        self.gate_every = arg.choice("gate_every", gate_every, ("epoch", "step"))
        self.score_while_closed = arg.boolean("score_while_closed", score_while_closed)
        self.closed_tau = arg.choice("closed_tau", closed_tau, CLOSED_TAU)
        if self.closed_tau == "score" and not self.score_while_closed:
            arg.fail("closed_tau", closed_tau, "train when strategy.score_while_closed=false (no scoring forward "
                     "to learn from)")
        self.sampling = arg.choice("sampling", sampling, SAMPLING)
        self.tau_th = rules.tau_threshold(self.presample, batch_size)
        self.tau: torch.Tensor | None = None
        self._tau_reader: LaggedReader | None = None
        self.generator = SeededGenerator(seed)
        self.importance_steps = 0
        self.uniform_steps = 0
        self.dist: Dist = SINGLE          # set from the context each epoch

    def params(self) -> dict:
        return {"selectivity": self.selectivity, "presample": self.presample, "score": self.score,
                "reweight": self.reweight, "tau_momentum": self.momentum, "tau_th": self.tau_th,
                "select_mode": self.select_mode, "select_precision": self.select_precision,
                "gate_every": self.gate_every, "score_while_closed": self.score_while_closed,
                "closed_tau": self.closed_tau, "sampling": self.sampling}

    def _scores(self, losses: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses if self.score == "loss" else rules.gradient_norm_scores(logits, y)

    def _update_tau(self, scores: torch.Tensor) -> None:
        estimate = rules.tau_estimate(scores)
        estimate = self.dist.mean(estimate)     # one global τ: the mean of the ranks' estimates
        if self.tau is None:
            self.tau = torch.zeros((), device=scores.device)
            self._tau_reader = LaggedReader(scores.device)
        self.tau = self.momentum * self.tau + (1.0 - self.momentum) * estimate
        self._tau_reader.submit(self.tau.to(torch.float64))

    def gate_open(self) -> bool:
        """τ > τ_th, as the host last saw τ (one update late on CUDA); data parallel: open on every rank
        or on none (the gate decides how many examples a step consumes, so ranks must agree)."""
        is_open = self._tau_reader is not None and float(self._tau_reader.value) > self.tau_th
        return self.dist.all_true(is_open)

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        self.dist = ctx.dist
        stream = _ExampleStream(ctx.source.batches(self.order(epoch, ctx), self.batch_size, epoch))
        epoch_gate = self.gate_open() if self.gate_every == "epoch" else None
        while True:
            is_open = epoch_gate if epoch_gate is not None else self.gate_open()
            chunk = stream.take(self.presample if is_open else self.batch_size)
            if chunk is None:
                return
            yield self._importance_batch(chunk, ctx) if is_open else self._uniform_batch(chunk, ctx)

    def order(self, epoch: int, ctx: Context) -> torch.Tensor:
        """The epoch's N examples: one shuffled pass (`sampling: shuffle`) or N uniform draws with
        replacement (`replacement`)."""
        if self.sampling == "shuffle":
            return ctx.source.permutation(epoch)
        return ctx.source.with_replacement(epoch, len(ctx.source))

    def _uniform_batch(self, chunk: Batch, ctx: Context) -> TrainBatch:
        """Closed gate: train on the minibatch; run the scoring forward first if score_while_closed
        (τ learns from it only with closed_tau: score; otherwise after_train_step feeds τ)."""
        if self.score_while_closed:
            losses, logits = ctx.select_forward(chunk.x, chunk.y, self.select_mode, self.select_precision)
            if self.closed_tau == "score":
                self._update_tau(self._scores(losses, logits, chunk.y))
        ctx.counters.considered += chunk.x.shape[0]
        ctx.counters.add_kept(chunk.x.shape[0])
        self.uniform_steps += 1
        tag = "uniform_scored" if self.score_while_closed else "uniform"
        return TrainBatch(chunk.idx, chunk.x, chunk.y, tag=tag)

    def _importance_batch(self, chunk: Batch, ctx: Context) -> TrainBatch:
        losses, logits = ctx.select_forward(chunk.x, chunk.y, self.select_mode, self.select_precision)
        scores = self._scores(losses, logits, chunk.y)
        self._update_tau(scores)
        positions, p = rules.importance_sample(scores, self.batch_size, self.generator.get(scores.device))
        ctx.counters.considered += chunk.x.shape[0]
        ctx.counters.add_kept(self.batch_size)
        self.importance_steps += 1
        weight = 1.0 / (chunk.x.shape[0] * p) if self.reweight else None
        return TrainBatch(chunk.idx[positions], chunk.x[positions], chunk.y[positions], weight, tag="importance")

    def after_train_step(self, batch: TrainBatch, losses: torch.Tensor, logits: torch.Tensor) -> None:
        """Closed gate with closed_tau: train: τ learns from the training forward's scores."""
        if batch.tag in _CLOSED_TAGS and self.closed_tau == "train":
            self._update_tau(self._scores(losses, logits, batch.y))

    def state_dict(self) -> dict:
        """τ, and `tau_seen`: the τ the gate reads now (on CUDA one update older than τ)."""
        tau = None if self.tau is None else float(self.tau)
        seen = None if self._tau_reader is None else float(self._tau_reader.value)
        return {"tau": tau, "tau_seen": seen, "generator": self.generator.state_dict(),
                "importance_steps": self.importance_steps, "uniform_steps": self.uniform_steps}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        """Restores the reader as it was: showing `tau_seen`, with τ pending, so a resumed run's gate
        reads what the uninterrupted run's read, one update late on CUDA as before."""
        self.generator.load_state_dict(state["generator"])
        self.importance_steps = int(state["importance_steps"])
        self.uniform_steps = int(state["uniform_steps"])
        if state["tau"] is not None:
            self.tau = torch.tensor(state["tau"], device=device)
            self._tau_reader = LaggedReader(self.tau.device)
            seen = state.get("tau_seen")          # checkpoints before it: the gate reads τ itself
            for value in (state["tau"] if seen is None else seen, state["tau"]):
                self._tau_reader.submit(torch.tensor(value, dtype=torch.float64, device=self.tau.device))

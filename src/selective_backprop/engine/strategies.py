"""Which examples get trained on: Traditional, SB, Stale-SB, Kath18 and the uniform control.

A strategy turns one epoch of the data source into training batches; the trainer decides how to
train on them. Strategies count what they consider, forward and keep in `ctx.counters`.

Data parallel: every rank runs its own strategy on its shard of each epoch, and the strategies stay
in lockstep through `ctx.dist`'s collectives: SB's loss history is global (the selection losses are
all-gathered, rank order), every rank emits the same number of packed batches (the minimum ready on
any rank; the rest is carried), Stale-SB's loss table is filled from the gathered selection and
training losses, and Kath18's τ is averaged over ranks with one agreed gate decision (per epoch or
per step). Strategies have one code path and never ask for the world size: in a single process every
collective of `Dist` is the identity (all_gather_cat returns the tensor itself at offset 0).

Construction: each strategy has a typed keyword constructor, `Cls(batch_size, seed, *, key=default,
...)`, that validates its keywords (one-line ConfigError naming `strategy.<key>`); the defaults live
in those signatures only (tests/test_strategy_config.py holds conf/strategy/*.yaml to them).
`build_strategy(cfg, batch_size, seed)` builds the class named by the config's `_target_` (or, in
configs without one, by `name`) with every other key as a keyword.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from omegaconf import OmegaConf

from selective_backprop.engine import strategy_args as arg
from selective_backprop.engine.distributed import SINGLE, Dist
from selective_backprop.engine.source import Batch
from selective_backprop.engine.timing import PhaseTimer
from selective_backprop.errors import ConfigError
from selective_backprop.selection import rules
from selective_backprop.selection.packer import BatchPacker
from selective_backprop.selection.readback import LaggedReader
from selective_backprop.selection.selector import (HISTORY, PERCENTILE, PRECISIONS, SELECT_MODES, LossSelector,
                                                   SeededGenerator, per_example_cross_entropy, selection_forward)

logger = logging.getLogger(__name__)


@dataclass
class TrainBatch:
    """Examples to train on; `weight` scales each example's loss (None = plain mean)."""

    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor | None = None
    tag: str = ""


@dataclass
class Counters:
    """Run counters: host ints where the host knows them, device tensors where it would have to sync."""

    considered: int = 0
    select_forwarded: int = 0
    train_forwarded: int = 0
    backpropped: int = 0
    steps: int = 0
    kept: Any = 0                     # device tensor or int: examples chosen for training

    def add_kept(self, value) -> None:
        self.kept = self.kept + value

    def snapshot(self) -> dict[str, int]:
        """Plain ints (reads the device counter once)."""
        return {"considered": self.considered, "select_forwarded": self.select_forwarded,
                "train_forwarded": self.train_forwarded, "backpropped": self.backpropped,
                "steps": self.steps, "kept": int(self.kept)}

    def load(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


@dataclass
class Context:
    """What a strategy may use: the model, the data source, timing and counters."""

    model: torch.nn.Module
    source: Any
    timer: PhaseTimer
    counters: Counters
    batch_size: int
    device: torch.device
    loss_fn: Callable = per_example_cross_entropy
    extras: dict = field(default_factory=dict)
    dist: Dist = SINGLE                # data parallelism (engine/distributed.py); SINGLE: one process

    def select_forward(self, x: torch.Tensor, y: torch.Tensor, mode: str, precision: str):
        """Selection forward (no grad), timed as `select_forward`; returns (losses, logits)."""
        with self.timer.phase("select_forward"):
            out = selection_forward(self.model, x, y, self.loss_fn, mode, precision)
        self.counters.select_forwarded += x.shape[0]
        return out


class Strategy:
    """Base: subclasses implement `epoch`; state is resumable through state_dict().

    `name` is the config's `strategy.name` (and the run record's `strategy`). A subclass's options are
    keyword-only constructor arguments with their defaults; the constructor validates them.
    """

    name = "base"

    def __init__(self, batch_size: int, seed: int = 0):
        self.batch_size = batch_size
        self.seed = seed

    def params(self) -> dict:
        return {}

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        raise NotImplementedError

    def after_train_step(self, batch: TrainBatch, losses: torch.Tensor, logits: torch.Tensor) -> None:
        """Called with the training forward's per-example losses (detached)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        """Restore what state_dict() returned, placing tensors on `device`."""


class Traditional(Strategy):
    """Shuffle each epoch, train on every minibatch."""

    name = "traditional"

    def epoch(self, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        for b in ctx.source.batches(ctx.source.permutation(epoch), self.batch_size, epoch):
            ctx.counters.considered += b.x.shape[0]
            ctx.counters.add_kept(b.x.shape[0])
            yield TrainBatch(b.idx, b.x, b.y)


class _Packing(Strategy):
    """Shared by SB, Stale-SB and Uniform: kept examples queue up and leave in full batches.

    `beta` OR `selectivity` (β = 1/s − 1; both given must agree; neither: β = 2, s = 1/3)."""

    def __init__(self, batch_size: int, seed: int = 0, *, beta: float | None = None,
                 selectivity: float | None = None):
        super().__init__(batch_size, seed)
        self.beta, self.selectivity = rules.resolve_beta(beta, selectivity)
        self.packer = BatchPacker(batch_size)

    def _pack(self, b: Batch, mask: torch.Tensor, ctx: Context | None = None) -> Iterator[TrainBatch]:
        self.packer.add([b.idx, b.x, b.y], mask)
        yield from self._emit(ctx)

    def _emit(self, ctx: Context | None) -> Iterator[TrainBatch]:
        """The full batches ready; data parallel: only as many as every rank has (the rest is carried)."""
        dist = SINGLE if ctx is None else ctx.dist
        agreed = dist.min_int(self.packer.ready_batches())
        for idx, x, y in itertools.islice(self.packer.pop_ready(), agreed):
            yield TrainBatch(idx, x, y)

    def _train_on_chosen(self, chosen: torch.Tensor, epoch: int, ctx: Context) -> Iterator[TrainBatch]:
        """Load, augment and pack only the chosen indices (no selection forward)."""
        # ranks chose different numbers of examples: all take as many packing rounds as the busiest one
        rounds = ctx.dist.max_int(-(-chosen.shape[0] // self.batch_size))
        loads = ctx.source.batches(chosen, self.batch_size, epoch)
        for _ in range(rounds):
            b = next(loads, None)
            if b is not None:
                self.packer.add([b.idx, b.x, b.y], torch.ones(b.x.shape[0], dtype=torch.bool, device=b.x.device))
            yield from self._emit(ctx)

    def state_dict(self) -> dict:
        return {"packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        self.packer.load_state_dict(state["packer"], device)


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


class _ExampleStream:
    """Takes exactly k examples at a time from an iterator of batches (splitting and joining)."""

    def __init__(self, batches: Iterator[Batch]):
        self._batches = batches
        self._pieces: list[Batch] = []
        self._rows = 0

    def take(self, k: int) -> Batch | None:
        while self._rows < k:
            piece = next(self._batches, None)
            if piece is None:
                break
            self._pieces.append(piece)
            self._rows += piece.x.shape[0]
        if self._rows == 0:
            return None
        joined = Batch(*(torch.cat(parts) for parts in zip(*self._pieces)))
        k = min(k, self._rows)
        head = Batch(*(t[:k] for t in joined))
        rest = Batch(*(t[k:] for t in joined))
        self._pieces = [rest] if rest.x.shape[0] else []
        self._rows -= k
        return head


class Kath18(Strategy):
    """Katharopoulos & Fleuret 2018 with variable starting, as the paper ran it.

    While τ ≤ τ_th: uniform minibatches of b. While τ > τ_th: presample B = b/s uniformly (with
    replacement), score them in inference mode, update τ from those scores and train on b drawn
    with replacement, p ∝ score. Not sticky. An epoch = N examples considered.

    `gate_every: epoch` (default, the SelectiveBackprop authors' port): the gate is read once, at
    the start of each epoch, and holds for the whole epoch; `step`: before every step (idiap's
    importance-sampling ConditionalStartSampler). `score_while_closed: true` (default, the authors'
    port): each closed-gate minibatch of b is scored by the inference-mode forward too (timed and
    counted as select_forward) and τ learns from those scores; `false`: no scoring forward, τ learns
    from the training forward's scores (idiap's reference, the project's behaviour before issue 11).
    """

    name = "kath18"

    def __init__(self, batch_size: int, seed: int = 0, *, selectivity: float = 1 / 3, score: str = "loss",
                 reweight: bool = False, tau_momentum: float = 0.9, select_mode: str = "eval",
                 select_precision: str = "fp32", gate_every: str = "epoch", score_while_closed: bool = True):
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
                "gate_every": self.gate_every, "score_while_closed": self.score_while_closed}

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
        n = len(ctx.source)
        stream = _ExampleStream(ctx.source.batches(ctx.source.with_replacement(epoch, n), self.batch_size, epoch))
        epoch_gate = self.gate_open() if self.gate_every == "epoch" else None
        while True:
            is_open = epoch_gate if epoch_gate is not None else self.gate_open()
            chunk = stream.take(self.presample if is_open else self.batch_size)
            if chunk is None:
                return
            yield self._importance_batch(chunk, ctx) if is_open else self._uniform_batch(chunk, ctx)

    def _uniform_batch(self, chunk: Batch, ctx: Context) -> TrainBatch:
        """Closed gate: train on the uniform minibatch; score it first if score_while_closed."""
        if self.score_while_closed:
            losses, logits = ctx.select_forward(chunk.x, chunk.y, self.select_mode, self.select_precision)
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
        if batch.tag == "uniform":
            self._update_tau(self._scores(losses, logits, batch.y))

    def state_dict(self) -> dict:
        tau = None if self.tau is None else float(self.tau)
        return {"tau": tau, "generator": self.generator.state_dict(),
                "importance_steps": self.importance_steps, "uniform_steps": self.uniform_steps}

    def load_state_dict(self, state: dict, device: torch.device = torch.device("cpu")) -> None:
        self.generator.load_state_dict(state["generator"])
        self.importance_steps = int(state["importance_steps"])
        self.uniform_steps = int(state["uniform_steps"])
        if state["tau"] is not None:
            self.tau = torch.tensor(state["tau"], device=device)
            self._tau_reader = LaggedReader(self.tau.device, lag=0)
            self._tau_reader.submit(self.tau.to(torch.float64))


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Traditional, SBStrategy, StaleSB, Kath18, Uniform)}

# The peer methods (engine/peers.py: InfoBatch, ComposerSB) subclass Strategy and add themselves to
# STRATEGIES on import; importing them here registers them wherever strategies are built.
from selective_backprop.engine import peers as _peers  # noqa: E402,F401  (after STRATEGIES: circular)


def options(cls: type[Strategy]) -> dict[str, inspect.Parameter]:
    """The config keys `cls` takes: its keyword-only constructor arguments (a subclass passing `**options`
    on to its base takes the base's too), in signature order, with their defaults."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        found.update({p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in found})
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return found


def strategy_class(name: Any, target: Any = None) -> type[Strategy]:
    """The class a strategy config names: its `_target_` (an import path), else `STRATEGIES[name]`
    (configs written before `_target_`, hand-built ones); the two must agree when both are given."""
    if target is None:
        if name not in STRATEGIES:
            arg.fail("name", name, " | ".join(STRATEGIES))
        return STRATEGIES[name]
    from hydra.utils import get_class

    try:
        cls = get_class(str(target))
    except Exception as err:              # hydra wraps the import error; keep one line
        raise ConfigError(f"strategy._target_={target!r}: cannot be imported ({type(err).__name__}); accepted: "
                          f"a Strategy class path such as {SBStrategy.__module__}.{SBStrategy.__qualname__}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        arg.fail("_target_", target, "a subclass of selective_backprop.engine.strategies.Strategy")
    if name is not None and name != cls.name:
        raise ConfigError(f"strategy.name={name!r} and strategy._target_={target!r} disagree ({cls.__name__} is "
                          f"strategy {cls.name!r}); accepted: name {cls.name!r}, or the _target_ of {name!r}")
    return cls


def build_strategy(cfg: Any, batch_size: int, seed: int) -> Strategy:
    """The strategy a `strategy` config describes, built once through its constructor (which validates
    every keyword): `_target_` (or `name`) picks the class, every other key is a keyword."""
    config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    if not isinstance(config, Mapping):
        raise ConfigError(f"strategy={config!r}: not accepted; accepted: a strategy config (a mapping with a name)")
    keywords = dict(config)
    name, target = keywords.pop("name", None), keywords.pop("_target_", None)
    cls = strategy_class(name, target)
    accepted = options(cls)
    for key in keywords:
        if key not in accepted:
            raise ConfigError(f"strategy.{key}: unknown key for strategy {cls.name}; accepted: "
                              f"{', '.join(accepted) or 'no keys besides name'}")
    return cls(batch_size, seed, **keywords)

"""The contract every strategy implements, and what several of them share.

A strategy turns one epoch of the data source into training batches; the trainer decides how to
train on them. Strategies count what they consider, forward and keep in `ctx.counters`.

Data parallel: every rank runs its own strategy on its shard of each epoch, and the strategies stay
in lockstep through `ctx.dist`'s collectives (selective_backprop/distributed.py): SB's loss history is
global (the selection losses are all-gathered, rank order), every rank emits the same number of
packed batches (the minimum ready on any rank; the rest is carried), Stale-SB's loss table is filled
from the gathered selection and training losses, and Kath18's τ is averaged over ranks with one
agreed gate decision (per epoch or per step). Strategies have one code path and never ask for the
world size: in a single process every collective of `Dist` is the identity (all_gather_cat returns
the tensor itself at offset 0).

Construction: each strategy has a typed keyword constructor, `Cls(batch_size, seed, *, key=default,
...)`, that validates its keywords with strategies/args.py (one-line ConfigError naming
`strategy.<key>`); the defaults live in those signatures only (tests/test_strategy_config.py holds
conf/strategy/*.yaml to them). The registry and `build_strategy` are in strategies/__init__.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from selective_backprop.distributed import SINGLE, Dist
from selective_backprop.errors import ConfigError
from selective_backprop.selection import rules
from selective_backprop.selection.packer import BatchPacker
from selective_backprop.selection.selector import per_example_cross_entropy, selection_forward
from selective_backprop.sources.source import Batch
from selective_backprop.timing import PhaseTimer


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
    extras: dict = field(default_factory=dict)   # from the trainer: max_epochs, precision (train.*)
    dist: Dist = SINGLE                # data parallelism (distributed.py); SINGLE: one process

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
    full_batches_only = False      # True: trains only on full batches of batch_size (the rest waits)

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


class _Packing(Strategy):
    """Shared by SB, Stale-SB and Uniform: kept examples queue up and leave in full batches.

    `beta` OR `selectivity` (β = 1/s − 1; both given must agree; neither: β = 2, s = 1/3)."""

    full_batches_only = True

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


def run_epochs(ctx: Context, strategy: str) -> float:
    """train.max_epochs as passed by the trainer in `ctx.extras`; both peers schedule on it (unless they
    are fitted to the budget: `ctx.extras["budget_clock"]`, engine/budget.py BudgetClock)."""
    value = ctx.extras.get("max_epochs")
    if value is None:
        raise ConfigError(f"train.max_epochs=None: not accepted with strategy={strategy} (it schedules on the "
                          f"run's length); accepted: a number > 0")
    return float(value)

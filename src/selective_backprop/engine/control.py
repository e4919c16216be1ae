"""Run control: whether a run stops now, and why.

A run ends when its budget is spent (train.max_epochs / max_time_s / max_cost, engine/budget.py), when
SIGTERM/SIGINT asks it to (preemption: the CLI's handler sets `PREEMPTION`, the trainer polls it), or
when its loss diverges (`DivergenceGuard` raises DivergedError). `RunControl.stop_reason` is the one
function that decides whether to stop; the trainer asks it after every training step and at every epoch
boundary. Data parallel, every rank gets the same answer (one agreed decision per call: a rank never
stops on its own, the others would wait for it in the next collective).
"""

from __future__ import annotations

import enum
import math
from typing import Callable

import torch

from selective_backprop.distributed import Dist
from selective_backprop.engine.budget import Budget
from selective_backprop.record import Status
from selective_backprop.strategies import Context


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite, or the test loss exploded (train.diverge_factor)."""


class NoTrainingStep(RuntimeError):
    """The run ended without a single optimizer step (its strategy never filled a training batch)."""


class Preempted(RuntimeError):
    """SIGTERM/SIGINT stopped the run; its checkpoint is on disk and re-running the command resumes it."""


class PreemptionFlag:
    """Set by the CLI's SIGTERM/SIGINT handler (train.py); the trainer polls it.

    The handler only sets the flag, so a checkpoint is never written from inside a signal handler.
    The trainer checks it after every training step and before every selection forward (the strategy
    loop), stops there and keeps the state of the last epoch boundary (see `Trainer.fit`).
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum = signum

    def clear(self) -> None:
        self.signum = None


PREEMPTION = PreemptionFlag()


class StopRequested(Exception):
    """Raised inside the strategy loop when preemption was requested (the partial epoch is dropped)."""


class PreemptibleContext(Context):
    """The strategies' context, polling the preemption flag before each selection forward.

    A single process stops there at once; data parallel, ranks agree on preemption after every
    step instead (RunControl.stop_reason), since a rank stopping alone would leave the others waiting.
    """

    def select_forward(self, *args, **kwargs):
        if PREEMPTION.requested and self.dist.world_size == 1:
            raise StopRequested
        return super().select_forward(*args, **kwargs)


class StopReason(enum.Enum):
    """Why a run stopped; `status` is what the run record says."""

    MAX_EPOCHS = "max_epochs"
    MAX_COST = "max_cost"
    MAX_TIME = "max_time_s"
    PREEMPTED = "preempted"

    @property
    def status(self) -> Status:
        if self is StopReason.PREEMPTED:
            return Status.PREEMPTED
        return Status.COMPLETED if self is StopReason.MAX_EPOCHS else Status.BUDGET


class RunControl:
    """Decides whether the run stops: budget first (a run that is done is done), then preemption."""

    def __init__(self, budget: Budget, dist: Dist, flag: PreemptionFlag = PREEMPTION):
        self.budget = budget
        self.dist = dist
        self.flag = flag

    def epochs_done(self, epochs: float) -> bool:
        return self.budget.max_epochs is not None and epochs >= self.budget.max_epochs - 1e-9

    def stop_reason(self, *, epochs: float | None, cost: Callable[[], float], train_s: float) -> StopReason | None:
        """`epochs`: epochs completed, or None where max_epochs is not checked (inside an epoch counted in
        examples considered: that epoch finishes first); `cost`: the run's cost so far (a collective under
        data parallelism, called only when max_cost is set); `train_s`: training seconds (rank 0's counts)."""
        b = self.budget
        preempted, out_of_time = self.dist.any_flags(
            [self.flag.requested, self.dist.is_main and b.max_time_s is not None and train_s >= b.max_time_s])
        if epochs is not None and self.epochs_done(epochs):
            return StopReason.MAX_EPOCHS
        if b.max_cost is not None and cost() >= b.max_cost:
            return StopReason.MAX_COST
        if out_of_time:
            return StopReason.MAX_TIME
        return StopReason.PREEMPTED if preempted else None


class DivergenceGuard:
    """Divergence checks: a non-finite training loss (accumulated on the device without a sync, checked at
    each evaluation), a non-finite or exploded test loss, and a run stuck at chance: test error at chance
    after a first LR stage's worth of training and at least MIN_STEPS_AT_CHANCE optimizer steps, with a
    test loss no lower than at any earlier evaluation that had fewer steps (not improving: a small run
    learning slowly is still improving, and a few dozen steps cannot tell). train.diverge_factor=None
    turns off the last two. Data parallel, every rank sees the same evaluation and agrees on the training
    flag: all raise, or none."""

    MIN_STEPS_AT_CHANCE = 100

    def __init__(self, factor: float | None, num_classes: int, milestones: list, n_train: int,
                 device: torch.device, dist: Dist):
        self.factor = None if factor is None else float(factor)
        self.num_classes = num_classes
        self.first_milestone = milestones[0] if milestones else None
        self.n_train = n_train
        self.dist = dist
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def note(self, loss: torch.Tensor) -> None:
        self.nonfinite |= ~torch.isfinite(loss.detach())

    def check_training(self, steps: int, epochs: float) -> None:
        if self.dist.any_flags([bool(self.nonfinite)])[0]:
            raise DivergedError(f"training loss became non-finite by step {steps} (epoch {epochs:.2f}); "
                                f"lower optimizer.lr or check the data")

    def past_first_stage(self, epochs: float, backpropped: int) -> bool:
        """The first LR stage is over *and* the run has backpropped (globally) as many examples as
        Traditional does in it: a selective run reaches the first milestone with a fraction of the
        updates, and must not be called diverged for learning slowly."""
        m = self.first_milestone
        return m is not None and epochs >= m and backpropped >= m * self.n_train

    def stuck_at_chance(self, error: float, test_loss: float, steps: int, earlier: list[dict]) -> bool:
        """At chance and not improving: enough steps, and no lower test loss than every earlier evaluation
        made with fewer steps (`earlier`: the run's metrics rows so far)."""
        if steps < self.MIN_STEPS_AT_CHANCE or error < 0.98 * (1.0 - 1.0 / self.num_classes):
            return False
        before = [r["test_loss"] for r in earlier if r.get("step", steps) < steps and math.isfinite(r["test_loss"])]
        return bool(before) and test_loss >= min(before)

    def check_eval(self, error: float, test_loss: float, *, steps: int, epochs: float, backpropped: int,
                   earlier: list[dict] = ()) -> None:
        where = f"by step {steps} (epoch {epochs:.2f})"
        if not math.isfinite(test_loss):      # weights blew up after the last (finite) training loss
            raise DivergedError(f"test loss became non-finite {where}; lower optimizer.lr or check the data")
        if self.factor is None:
            return
        classes = self.num_classes
        limit = self.factor * math.log(classes)
        chance = 1.0 - 1.0 / classes
        if test_loss > limit:
            why = f"test loss {test_loss:.4g} > train.diverge_factor x ln({classes}) = {limit:.4g}"
        elif self.past_first_stage(epochs, backpropped) and self.stuck_at_chance(error, test_loss, steps, list(earlier)):
            why = (f"test error {error:.4f} is at chance ({chance:.2f}) and its test loss {test_loss:.4g} no lower "
                   f"than at earlier evaluations, after a first LR stage's worth of training (epoch "
                   f"{self.first_milestone}, and as many examples backpropped) and {steps} steps")
        else:
            return
        raise DivergedError(f"{why} {where}; lower optimizer.lr, or set train.diverge_factor=null to keep "
                            f"training")

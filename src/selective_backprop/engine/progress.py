"""How far a run is: epochs done, its counters, times and cost (global sums under data parallelism).

The counters themselves (strategies/base.py `Counters`) are this process's; `RunProgress` turns them
into the run's numbers. Every Dist collective is the identity in a single process, so there is one path.
"""

from __future__ import annotations

import sys
from typing import Any

from selective_backprop.distributed import Dist
from selective_backprop.record import CostWeights
from selective_backprop.strategies import Counters
from selective_backprop.timing import PhaseTimer

GLOBAL_COUNTS = ("considered", "select_forwarded", "train_forwarded", "backpropped", "kept")


def progress_mode(setting: Any) -> str:
    """train.progress -> "bar" (tqdm), "line" (one log line per epoch) or "off"; `auto` shows bars
    only when stderr is a terminal, so logs of batch jobs are not flooded with bar redraws."""
    if setting == "auto":
        return "bar" if sys.stderr.isatty() else "line"
    return "bar" if setting else "off"


class RunProgress:
    """Epochs completed (in train.epoch_unit), run counters, times and cost."""

    def __init__(self, counters: Counters, timer: PhaseTimer, dist: Dist, unit: str, n_train: int,
                 weights: CostWeights):
        self.counters = counters
        self.timer = timer
        self.dist = dist
        self.unit = unit
        self.n_train = n_train
        self.weights = weights
        # examples one epoch considers: the permutation truncated to a multiple of K (all of them for K = 1)
        self.epoch_examples = n_train - n_train % dist.world_size

    def epochs(self) -> float:
        """Epochs completed in the configured unit. No collective is needed: every rank considers the same
        number of examples per epoch (equal shards) and backprops the same number per step (agreed batches
        of b/K), so the global count is K times this rank's."""
        if self.unit == "considered":
            return self.counters.considered * self.dist.world_size / self.epoch_examples
        return self.counters.backpropped * self.dist.world_size / self.n_train

    def backpropped(self) -> int:
        """Examples backpropped by the whole run (every rank backprops the same number)."""
        return self.counters.backpropped * self.dist.world_size

    def counts(self) -> dict[str, int]:
        """The run's counters: example counts summed over ranks (steps are equal on every rank)."""
        counts = self.counters.snapshot()
        counts.update(zip(GLOBAL_COUNTS, self.dist.sum_ints([counts[k] for k in GLOBAL_COUNTS])))
        return counts

    def cost(self) -> float:
        """Cost so far in forward-equivalent units (engine/budget.py), from host counters only (no device
        sync); data parallel a collective every rank must call."""
        select_forwarded, backpropped = self.dist.sum_ints([self.counters.select_forwarded,
                                                            self.counters.backpropped])
        return self.weights.cost(select_forwarded, backpropped)

    def times(self) -> tuple[float, dict[str, float], float]:
        """(train_s, phase_s, eval_s): the slowest rank's, each."""
        train_s, phases, eval_s = self.timer.train_s, self.timer.phase_s(), self.timer.eval_s
        values = self.dist.max_floats([train_s, eval_s, *phases.values()])
        return values[0], dict(zip(phases, values[2:])), values[1]

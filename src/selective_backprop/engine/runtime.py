"""The process-wide settings a run starts with: device, determinism, mixed precision, the LR schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from selective_backprop.errors import ConfigError

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # train.precision


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: no CUDA device is available here; use device=cpu or device=auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"device={name!r}: must be auto, cpu or cuda")
    return torch.device(name)


def set_determinism(enabled: bool) -> None:
    """config `deterministic`: deterministic kernels (warn where none exists), no cuDNN autotuning."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def lr_factor(epoch: float, milestones: list, gamma: float) -> float:
    """MultiStep schedule: gamma^(number of milestones reached by `epoch`)."""
    return gamma ** sum(1 for m in milestones if epoch >= m)


#: lr_schedule.index: what a schedule's position counts (absent: epoch, the schedules' historical meaning)
SCHEDULE_INDEXES = ("epoch", "budget")
#: lr_schedule.kind: steps (gamma at each milestone) | linear (to zero over the budget; index budget only)
SCHEDULE_KINDS = ("steps", "linear")


@dataclass(frozen=True)
class LRSchedule:
    """The learning-rate factor as a pure function of the run's position.

    `index: epoch` (the default): the position is the epoch (in train.epoch_unit) and the milestones are
    epochs. `index: budget`: the position is the share of the run's budget spent (cost / train.max_cost,
    else training seconds / train.max_time_s: engine/budget.py `Budget.schedule_axis`), the milestones
    are shares in [0, 1], and the trainer sets the LR before every step. `kind: linear` decays the
    factor linearly from 1 to 0 over the budget (milestones and gamma unused).
    """

    milestones: tuple[float, ...] = ()
    gamma: float = 1.0
    index: str = "epoch"
    kind: str = "steps"

    @classmethod
    def from_config(cls, node: Any) -> LRSchedule:
        """From a (validated) `lr_schedule` config node; absent index/kind keep today's epoch steps."""
        return cls(tuple(node.get("milestones") or ()), float(node.get("gamma", 1.0)),
                   str(node.get("index", "epoch")), str(node.get("kind", "steps")))

    @property
    def budget_indexed(self) -> bool:
        return self.index == "budget"

    def epoch_milestones(self) -> list[float]:
        """Milestones in epochs (the divergence rule's first LR stage); none for a budget-indexed schedule."""
        return [] if self.budget_indexed else list(self.milestones)

    def factor(self, position: float) -> float:
        """The LR factor at `position` (an epoch, or a budget share)."""
        if self.kind == "linear":
            return min(1.0, max(0.0, 1.0 - position))
        return lr_factor(position, list(self.milestones), self.gamma)

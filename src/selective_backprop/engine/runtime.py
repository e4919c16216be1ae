"""The process-wide settings a run starts with: device, determinism, mixed precision, the LR schedule."""

from __future__ import annotations

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

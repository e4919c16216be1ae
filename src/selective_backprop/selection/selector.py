"""Stateful wrappers around the pure rules: loss history, generators, the selection forward."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from selective_backprop.errors import ConfigError
from selective_backprop.selection import rules

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SELECT_MODES = ("eval", "train", "train_dropout")   # the model's mode in the selection forward (selection_forward)
# SB's defaults, written once for LossSelector, the drop-in (dropin.py) and the SB strategy (strategies/sb.py)
HISTORY = 1024                        # R: losses in the rolling CDF (the authors' code)
PERCENTILE = "strict"                 # the authors' percentile rule (rules.batch_percentiles)


def per_example_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy without reduction (the default selection loss)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def canonical_device(device: torch.device | str) -> torch.device:
    """`cuda` -> `cuda:<current>`, `cpu:0` -> `cpu`, so equal devices compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu":
        return torch.device("cpu")
    return device


class SeededGenerator:
    """A torch.Generator created lazily on the device it is first used on; state is resumable."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._gen: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    def get(self, device: torch.device) -> torch.Generator:
        device = canonical_device(device)
        if self._gen is not None and canonical_device(self._gen.device) != device:
            raise RuntimeError(f"generator lives on {self._gen.device}, asked for {device}: "
                               "a strategy's draws must stay on one device")
        if self._gen is None:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(self.seed)
            if self._pending_state is not None:
                self._gen.set_state(self._pending_state)
                self._pending_state = None
        return self._gen

    def state_dict(self) -> dict:
        state = self._gen.get_state() if self._gen is not None else self._pending_state
        return {"seed": self.seed, "state": state}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._gen = None
        self._pending_state = state["state"]


def autocast_context(device: torch.device, precision: str):
    """Autocast for the selection forward only ('fp32' means none)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"strategy.select_precision={precision!r}: must be one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def selection_forward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      loss_fn: LossFn = per_example_cross_entropy, mode: str = "eval",
                      precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Forward without grad; returns (per-example losses, logits).

    `mode='eval'` (the authors' code) uses BatchNorm running statistics; `mode='train'` uses batch
    statistics (and updates the running ones) with dropout still off; `mode='train_dropout'` is the
    model's full training mode, dropout on (as Composer's selection forward).

    The model's train/eval mode is restored afterwards.
    """
    if mode not in SELECT_MODES:
        raise ConfigError(f"strategy.select_mode={mode!r}: must be one of {', '.join(SELECT_MODES)}")
    was_training = model.training
    model.train(mode != "eval")
    if mode == "train":                        # BatchNorm in train mode; dropout stays off
        for module in model.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.eval()
    try:
        with torch.no_grad(), autocast_context(x.device, precision):
            logits = model(x)
        losses = loss_fn(logits.float(), y).detach().float()
    finally:
        model.train(was_training)
    return losses, logits


class LossSelector:
    """The SB rule with its state: rolling history of the last R losses and a seeded generator.

    `select(losses)` pushes the losses into the history, computes P = max(CDF(loss)^β, prob_min)
    and draws the keep mask. `percentile='strict'` (default, the authors' rule): the whole batch is
    pushed first, CDF = share of the window strictly below the loss (rules.batch_percentiles).
    `percentile='inclusive'`: pushed one by one, CDF counts <= the loss, itself included
    (rules.sequential_percentiles; the project's rule before issue 11).
    """

    def __init__(self, beta: float, history: int = HISTORY, prob_min: float = 0.0, seed: int = 0,
                 percentile: str = PERCENTILE):
        if history < 1:
            raise ConfigError(f"strategy.history={history!r}: must be an integer >= 1")
        if not 0.0 <= prob_min <= 1.0:
            raise ConfigError(f"strategy.prob_min={prob_min!r}: must be in [0, 1]")
        if percentile not in rules.PERCENTILE_RULES:
            raise ConfigError(f"strategy.percentile={percentile!r}: must be one of "
                              f"{', '.join(rules.PERCENTILE_RULES)}")
        self.percentile = percentile
        self.beta = float(beta)
        self.capacity = int(history)
        self.prob_min = float(prob_min)
        self.generator = SeededGenerator(seed)
        self._history: torch.Tensor | None = None
        self.filled = 0

    def _history_on(self, device: torch.device) -> torch.Tensor:
        if self._history is None:
            self._history = torch.zeros(self.capacity, dtype=torch.float32, device=device)
        elif self._history.device != device:
            self._history = self._history.to(device)
        return self._history

    def probabilities(self, losses: torch.Tensor, all_losses: torch.Tensor | None = None,
                      offset: int = 0) -> torch.Tensor:
        """Keep probabilities of `losses`; updates the history.

        With data parallelism, `all_losses` is the all-gathered stream (every rank's losses in rank
        order) and this rank's losses start at `offset` in it: the history stays global.
        """
        stream = losses if all_losses is None else all_losses
        history = self._history_on(stream.device)
        pct = rules.percentiles(self.percentile, history, self.filled, stream)
        self._history, self.filled = rules.push_history(history, self.filled, stream)
        if all_losses is not None:
            pct = pct[offset:offset + losses.shape[0]]
        return rules.keep_probabilities(pct, self.beta, self.prob_min)

    def select(self, losses: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep mask, probabilities) for a batch of per-example losses."""
        probs = self.probabilities(losses, **kwargs)
        return rules.draw(probs, self.generator.get(probs.device)), probs

    def state_dict(self) -> dict:
        history = None if self._history is None else self._history.detach().cpu()
        return {"history": history, "filled": self.filled, "generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._history = state["history"]
        self.filled = int(state["filled"])
        self.generator.load_state_dict(state["generator"])

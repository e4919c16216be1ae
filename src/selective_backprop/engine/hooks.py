"""Seams for tests: the trainer calls these at fixed points; the library's own `Hooks` does nothing.

Tests that must stop a real run at an exact point (kill it mid-epoch, during the checkpoint write) or
read every rank's final state install their own hooks before the CLI runs (tests/hooked_train.py
wraps `sb-train` that way); the library reads no test switches of its own.
"""

from __future__ import annotations

from typing import Any


class Hooks:
    """Points: `pause(point, epoch)` with point `mid_epoch` (after the first training step of the epoch
    after `epoch` completed ones), `eval` (the evaluation row of epoch `epoch` is in metrics.jsonl, the
    checkpoint not yet written), `checkpoint_write` (checkpoint after epoch `epoch`: temp file written,
    not yet renamed); `run_finished(trainer)` once a run completed or spent its budget (every rank)."""

    def pause(self, point: str, epoch: int) -> None:
        pass

    def run_finished(self, trainer: Any) -> None:
        pass


_installed: Hooks = Hooks()


def install(hooks: Hooks) -> Hooks:
    """Make `hooks` the ones every Trainer built from now on uses; returns the previous ones."""
    global _installed
    previous, _installed = _installed, hooks
    return previous


def installed() -> Hooks:
    return _installed

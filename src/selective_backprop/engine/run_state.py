"""Run state: what an exact resume needs, captured into checkpoint.pt and restored from it.

Checkpoints are taken at epoch boundaries only (decision): mid-epoch state (the strategy's position
inside its generator, a Stale-SB epoch's drawn mask, Kath18's example stream) is not saved. A preempted
or killed run resumes from the last boundary and redoes the partial epoch, which reproduces it exactly,
since data order, augmentation and dropout derive from (seed, epoch). Between due checkpoints a CPU copy
of the boundary is kept, so a preemption can still write it.

Data parallel (decision): one checkpoint.pt, written by rank 0 alone, so it can never mix ranks' epochs.
Model and optimizer are rank 0's (DDP keeps them equal; BatchNorm buffers are broadcast from rank 0
first); what differs per rank (strategy state, counters, timer, RNG, the evaluation interval) is
gathered to rank 0 into `ranks` (in rank order) and `counters` holds the global sums. `world_size` says
how many processes wrote it: a resume must use as many.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig, OmegaConf

from selective_backprop.distributed import Dist
from selective_backprop.engine import checkpoint as ckpt
from selective_backprop.engine.budget import Budget
from selective_backprop.engine.control import DivergenceGuard, RunControl
from selective_backprop.engine.evaluation import CostGrid, Evaluator
from selective_backprop.engine.hooks import Hooks
from selective_backprop.engine.progress import RunProgress
from selective_backprop.errors import ConfigError
from selective_backprop.record import Status, config_key
from selective_backprop.strategies import Counters, Strategy
from selective_backprop.timing import PhaseTimer

log = logging.getLogger(__name__)


class TrainerState(Protocol):
    """What RunState reads and restores of a trainer: engine/trainer.py's Trainer, named by this narrower
    interface so that this module does not import the trainer (which imports it)."""

    cfg: DictConfig
    dist: Dist
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any                  # torch.amp.GradScaler
    strategy: Strategy
    counters: Counters
    timer: PhaseTimer
    progress: RunProgress
    evaluator: Evaluator
    eval_grid: CostGrid | None   # train.eval_every_cost (None: the epoch grid)
    guard: DivergenceGuard
    control: RunControl
    hooks: Hooks
    budget: Budget
    next_epoch: int
    wall_start: float


class RunState:
    """Captures and restores a trainer's state and decides when checkpoint.pt is written."""

    def __init__(self, output_dir: str, every: int):
        self.output_dir = output_dir
        self.every = every
        self.boundary: dict | None = None       # last epoch boundary not yet on disk (CPU copy)
        self.saved_epoch: int | None = None     # epochs completed in the checkpoint.pt on disk
        self.finished: Status | None = None     # status of a final checkpoint resumed from (run had ended)
        self.wall_offset = 0.0                  # wall seconds of the runs this one resumes

    # -- capture --------------------------------------------------------------------------------------
    def capture(self, t: TrainerState, finished: Status | None = None) -> dict:
        """Everything an exact resume needs, as tensors and plain types (weights_only-loadable); `finished`
        marks the final checkpoint of a run that ended (its final weights; never trained on from).
        A collective under data parallelism; ranks r > 0 get {} back."""
        config = OmegaConf.to_container(t.cfg, resolve=True)
        t.dist.broadcast_buffers(t.model)
        counts = t.progress.counts()
        ranks = t.dist.gather_objects(ckpt.to_plain(self.rank_state(t)))
        if not t.dist.is_main:
            return {}
        per_rank = {"counters": counts, "ranks": ranks} if t.dist.enabled else ranks[0]
        return {
            "format": ckpt.FORMAT_VERSION,
            "config_key": config_key(config), "seed": int(t.cfg.seed), "config": config,
            "finished": None if finished is None else str(finished), "world_size": t.dist.world_size,
            # Data order, augmentation and dropout are re-seeded from (seed, epoch) at each epoch start
            # (TorchSource.permutation, derive_seed), so the epoch index is their whole state; torch's
            # global RNG state is saved as well, for safety. The learning rate is a pure function of the
            # epoch (lr_factor): there is no scheduler object to save.
            "next_epoch": int(t.next_epoch),
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scaler": t.scaler.state_dict(),
            **per_rank,
            "history": [dict(row) for row in t.evaluator.rows],
            # train.eval_every_cost: the grid point the next evaluation waits for (None: the epoch grid)
            "eval_grid": None if t.eval_grid is None else t.eval_grid.state_dict(),
            "budget": t.budget.record(),
            "wall_s": time.time() - t.wall_start,
        }

    @staticmethod
    def rank_state(t: TrainerState) -> dict:
        """The part of the checkpoint that is this process's own."""
        return {
            "strategy": t.strategy.state_dict(),   # loss window, stale table, tau, pending batch, generators
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": list(torch.cuda.get_rng_state_all()) if t.device.type == "cuda" else []},
            "counters": t.counters.snapshot(),
            "timer": t.timer.state_dict(),
            "interval": t.evaluator.state_dict(),
            "nonfinite": bool(t.guard.nonfinite),
        }

    # -- writing --------------------------------------------------------------------------------------
    def after_epoch(self, t: TrainerState, epoch: int) -> None:
        """`epoch` epochs completed: checkpoint.pt every train.checkpoint_every epochs, else a CPU copy."""
        state = self.capture(t)
        if epoch % self.every == 0:
            self.boundary = None
            self.write(t, state, epoch)
        else:
            self.boundary = ckpt.to_plain(state, clone=True)

    def write(self, t: TrainerState, state: dict, epoch: int) -> None:
        if state:
            ckpt.save_checkpoint(state, ckpt.checkpoint_path(self.output_dir),
                                 before_rename=lambda: t.hooks.pause("checkpoint_write", epoch))
        self.saved_epoch = epoch

    def write_boundary(self, t: TrainerState) -> None:
        """On preemption: the last completed epoch, if it is not on disk yet."""
        if self.boundary is not None:
            self.write(t, self.boundary, int(self.boundary.get("next_epoch", t.next_epoch)))
            self.boundary = None

    # -- restore --------------------------------------------------------------------------------------
    def restore(self, t: TrainerState, path: str | Path | None = None) -> int:
        """Restore a checkpoint (default: checkpoint.pt in the output directory) into `t`; returns its
        epoch. It must come from the same config (config_key) and seed, and from as many data-parallel
        processes as this run has (each rank restores its own part)."""
        path = Path(path) if path is not None else ckpt.checkpoint_path(self.output_dir)
        state = ckpt.load_checkpoint(path)
        key = config_key(OmegaConf.to_container(t.cfg, resolve=True))
        if (state.get("config_key"), state.get("seed")) != (key, int(t.cfg.seed)):
            raise ConfigError(f"checkpoint '{path}' belongs to a different run (config_key {state.get('config_key')}, "
                              f"seed {state.get('seed')}; this run: config_key {key}, seed {int(t.cfg.seed)}); "
                              f"accepted: a checkpoint of this same run")
        ckpt.check_world_size(path, int(state.get("world_size", 1)), t.dist.world_size)
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            t.scaler.load_state_dict(state["scaler"])
        own = state["ranks"][t.dist.rank] if "ranks" in state else state
        t.strategy.load_state_dict(own["strategy"], t.device)
        t.counters.load(own["counters"])
        t.timer.load_state_dict(own["timer"])
        t.evaluator.load_state_dict(own["interval"], state["history"])
        if t.eval_grid is not None:
            t.eval_grid.load_state_dict(state["eval_grid"])
        t.next_epoch = int(state["next_epoch"])
        t.guard.nonfinite = torch.tensor(bool(own["nonfinite"]), device=t.device)
        torch.set_rng_state(own["rng"]["torch"])
        if t.device.type == "cuda" and len(own["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(own["rng"]["cuda"])
        self.wall_offset = float(state["wall_s"])
        self.finished = Status(state["finished"]) if state.get("finished") else None
        t.budget = _restored_budget(t.budget, state.get("budget"))
        t.control.budget = t.budget
        self.saved_epoch = t.next_epoch
        return t.next_epoch


def _restored_budget(budget, saved: dict | None):
    """A resumed run keeps the budget it borrowed with train.budget_from when it started, even if that
    folder changed since (the configured budgets are part of config_key already)."""
    if not saved or not saved.get("source") or saved == budget.record():
        return budget
    log.warning("resuming with the budget borrowed at the start (%s from %s), not the one found now",
                saved["source"].get("axis"), saved["source"].get("run_dir"))
    return dataclasses.replace(budget, max_cost=saved["max_cost"], max_time_s=saved["max_time_s"],
                               source=saved["source"])

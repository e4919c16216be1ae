"""The training loop: the strategy decides which examples, the trainer trains on them.

`Trainer` builds a run from a composed config and owns the epoch loop and the training step. What it
delegates, each with its own state:
    engine/control.py     when to stop (RunControl, StopReason, preemption, DivergenceGuard)
    engine/progress.py    epochs done, global counters, times and cost (RunProgress)
    engine/evaluation.py  the test set, evaluation rows and the summary (Evaluator), the cost grid
    engine/run_state.py   checkpoint capture, restore and schedule (RunState)
    engine/writer.py      the run record's files (RunRecorder)
Data parallelism goes through `Dist` (distributed.py), whose collectives are the identity in a
single process, so there is one code path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from selective_backprop import distributed
from selective_backprop.engine import checkpoint as ckpt
from selective_backprop.engine import hooks as test_hooks
from selective_backprop.engine.budget import BudgetClock, check_schedule_budget, resolve_budget
from selective_backprop.engine.control import (PREEMPTION, DivergedError, DivergenceGuard, NoTrainingStep,  # noqa: F401
                                               Preempted, PreemptibleContext, RunControl, StopReason,
                                               StopRequested)
from selective_backprop.engine.evaluation import CostGrid, Evaluator, eval_batch_size
from selective_backprop.engine.progress import RunProgress, progress_mode
from selective_backprop.engine.run_state import RunState
from selective_backprop.engine.runtime import (AMP_DTYPES, LRSchedule, lr_factor, resolve_device,  # noqa: F401
                                               set_determinism)
from selective_backprop.engine.writer import NullRecorder, RunRecorder
from selective_backprop.errors import ConfigError
from selective_backprop.record import FINISHED, Status, eval_cost_step
from selective_backprop.sources.device_source import build_source
from selective_backprop.sources.source import derive_seed
from selective_backprop.strategies import Counters, TrainBatch, build_strategy
from selective_backprop.timing import PhaseTimer, TimingConditions

log = logging.getLogger(__name__)


class Trainer:
    """Builds the run from a composed (and validated: train.py) config and trains it into `output_dir`."""

    def __init__(self, cfg: DictConfig, output_dir: str, data_bundle: Any = None,
                 hooks: test_hooks.Hooks | None = None):
        tcfg = cfg.train
        self.cfg, self.output_dir = cfg, output_dir
        self.hooks = hooks or test_hooks.installed()
        self.budget = resolve_budget(cfg)          # max_epochs / max_time_s / max_cost (engine/budget.py)
        self.schedule = LRSchedule.from_config(cfg.lr_schedule)     # by epoch, or by budget share spent
        check_schedule_budget(self.budget, self.schedule.index)
        self.dist = distributed.current()          # K > 1 under torchrun / submitit tasks
        self.device = self.dist.local_device(resolve_device(str(cfg.device)))
        set_determinism(bool(cfg.deterministic))
        torch.manual_seed(cfg.seed)
        self.global_batch_size = int(tcfg.batch_size)
        self.batch_size = self.dist.split_batch(self.global_batch_size)     # this rank's share b/K
        self.unit = str(tcfg.get("epoch_unit", "considered"))
        self.strategy = build_strategy(self._rank_strategy_cfg(), self.batch_size, self.dist.rank_seed(int(cfg.seed)))
        # the run's strategy parameters are those of the global batch (what the config describes)
        self._params_strategy = (build_strategy(cfg.strategy, self.global_batch_size, int(cfg.seed))
                                 if self.dist.enabled else self.strategy)
        self.data = data_bundle if data_bundle is not None else self._build_data()
        self.memory_format = torch.channels_last if tcfg.get("channels_last", False) else torch.contiguous_format
        self.model = self._build_model()
        self.net = self.dist.wrap(self.model, self.device)   # the training forward's module
        from hydra.utils import instantiate
        self.optimizer = instantiate(cfg.optimizer)(params=self.model.parameters())
        self.base_lr = float(cfg.optimizer.lr)
        self.amp_dtype = AMP_DTYPES[str(tcfg.get("precision", "fp32"))]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.timer, self.counters = PhaseTimer(self.device), Counters()
        source = build_source(str(cfg.dataset.get("loader", "torch")), self.data, self.device, int(cfg.seed),
                              self.timer, int(tcfg.get("num_workers", 0)), bool(tcfg.get("channels_last", False)))
        self.source = self.dist.shard(source)
        self.n_train = len(self.source)
        self._check_one_batch_per_epoch()
        self.progress = RunProgress(self.counters, self.timer, self.dist, self.unit, self.n_train,
                                    self.budget.weights)
        self.clock = self._budget_clock() if self.schedule.budget_indexed else None
        self.ctx = PreemptibleContext(self.model, self.source, self.timer, self.counters, self.batch_size,
                                      self.device, dist=self.dist,    # the run's length: strategies/base.py
                                      extras={"max_epochs": tcfg.get("max_epochs"), "budget_clock": self.clock,
                                              "precision": str(tcfg.get("precision", "fp32"))})
        self.control = RunControl(self.budget, self.dist)
        self.guard = DivergenceGuard(tcfg.get("diverge_factor", 100), self.data.num_classes,
                                     self.schedule.epoch_milestones(),
                                     self.n_train, self.device, self.dist)
        self.recorder = (RunRecorder(output_dir, bool(tcfg.get("tensorboard", True))) if self.dist.is_main
                         else NullRecorder())
        self.evaluator = Evaluator(self.data, self.device, self.memory_format, self.dist, self.progress,
                                   self.guard, self.recorder, self.hooks,
                                   eval_batch_size(tcfg.get("eval_batch_size", "auto"), self.device))
        grid_step = eval_cost_step(tcfg.get("eval_every_cost"), self.n_train, self.budget.weights)
        self.eval_grid = None if grid_step is None else CostGrid(grid_step)   # None: every eval_every epochs
        self.conditions = TimingConditions()       # summary.json `timing`
        self.state = RunState(output_dir, int(tcfg.get("checkpoint_every", 1)))
        self.next_epoch = 0
        self.status = Status.RUNNING
        self.wall_start = time.time()

    # -- building ------------------------------------------------------------------------------------
    def _rank_strategy_cfg(self) -> Any:
        """The strategy config a rank runs with: an explicit selection batch is split over the ranks too."""
        scfg = self.cfg.strategy
        if scfg.get("select_batch_size") is None:
            return scfg
        scfg = OmegaConf.create(OmegaConf.to_container(scfg, resolve=True))
        scfg.select_batch_size = self.dist.share(int(scfg.select_batch_size))
        return scfg

    def _budget_clock(self) -> BudgetClock:
        """The budget share spent, for a budget-indexed schedule (agreed by every rank under data parallelism)."""
        return BudgetClock(lambda: self.budget, self.progress.cost,
                           lambda: self.dist.max_floats([self.timer.elapsed_train_s()])[0],
                           self.progress.backpropped, self.progress.epoch_examples)

    def _build_data(self) -> Any:
        """The data bundle; one process per node prepares the files (decompression, download) while the
        node's other processes wait, then they read them."""
        from selective_backprop.data import build_data

        first = self.dist.local_rank == 0
        if not first:
            self.dist.barrier(timeout_s=4 * 3600)
        try:
            return build_data(self.cfg.dataset, int(self.cfg.seed))
        finally:
            if first:
                self.dist.barrier(timeout_s=4 * 3600)

    def _check_one_batch_per_epoch(self) -> None:
        """Refuse (ConfigError, before any record is written) a strategy that trains only full batches when
        one epoch holds fewer examples than a batch: it would never take an optimizer step."""
        if self.strategy.full_batches_only and self.batch_size > self.n_train:
            total = self.n_train * self.dist.world_size
            subset = self.cfg.dataset.get("subset")
            where = f"dataset.subset={subset}" if subset is not None else f"the {total} examples of the training set"
            raise ConfigError(f"train.batch_size={self.global_batch_size}: larger than the {total} training examples "
                              f"an epoch considers ({where}); strategy {self.strategy.name} trains on full batches "
                              f"only, so it would never take an optimizer step; accepted: train.batch_size <= "
                              f"{total}, or more training examples (dataset.subset)")

    def _build_model(self) -> torch.nn.Module:
        from selective_backprop.models import build_model

        kwargs = {k: v for k, v in OmegaConf.to_container(self.cfg.model).items() if k != "name"}
        model = build_model(self.cfg.model.name, num_classes=self.data.num_classes,
                            in_channels=self.data.in_channels, **kwargs)
        return model.to(self.device).to(memory_format=self.memory_format)

    # -- public views --------------------------------------------------------------------------------
    @property
    def eval_rows(self) -> list[dict]:
        """The evaluations so far (metrics.jsonl rows; a resumed run's checkpointed ones first)."""
        return self.evaluator.rows

    @property
    def saved_epoch(self) -> int | None:
        """Epochs completed in the checkpoint.pt on disk (None: none written)."""
        return self.state.saved_epoch

    def strategy_params(self) -> dict:
        """The strategy's parameters for the whole run (global batch; per-rank values differ under DP)."""
        return self._params_strategy.params()

    def resume(self, path: Any = None) -> int:
        """Restore checkpoint.pt (or `path`) before fit(); returns its epoch (engine/run_state.py)."""
        return self.state.restore(self, path)

    def summary(self, collective: bool = True) -> dict:
        """The summary.json payload (engine/evaluation.py; collective under data parallelism)."""
        run = {"config": OmegaConf.to_container(self.cfg, resolve=True), "dataset": self.cfg.dataset.name,
               "model": self.cfg.model.name, "strategy": self.strategy.name,
               "lr_schedule": self.cfg.lr_schedule.name, "seed": int(self.cfg.seed),
               "strategy_params": self.strategy_params(),
               "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
               "timing": self.conditions.record()}
        return self.evaluator.summary(run, self.status, self.budget.record(), collective)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until the first budget set (max_epochs, max_time_s, max_cost) is reached; returns the
        summary (also written to summary.json).

        metrics.jsonl restarts from the rows a resumed run checkpointed, so a resume never duplicates or
        drops rows. Status: completed / budget (a final checkpoint.pt with the final weights is written);
        preempted (PREEMPTION was set: stops at a step boundary, the last completed epoch boundary is in
        checkpoint.pt); diverged (DivergedError) or failed (any other exception): summary.json gets the
        error, the records so far stay, the error is re-raised.
        """
        self.wall_start = time.time() - self.state.wall_offset
        self.conditions.start()
        if self.dist.is_main:
            ckpt.remove_stale_temps(self.output_dir)
        self.recorder.start(self.eval_rows)
        try:
            self.status = self.state.finished or self._train()
            self.conditions.stop()
        except DivergedError as err:          # every rank agreed (DivergenceGuard)
            self._record_failure(Status.DIVERGED, str(err))
            self.dist.barrier()
            raise
        except NoTrainingStep as err:         # steps are equal on every rank: all raise
            self._record_failure(Status.FAILED, str(err))
            raise
        except KeyboardInterrupt as err:      # a second signal (train.install_preemption_handlers)
            self._record_failure(Status.ABORTED, str(err) or "interrupted", collective=False)
            raise
        except Exception as err:
            self._record_failure(Status.FAILED, f"{type(err).__name__}: {err}", collective=False)
            raise
        summary = self.summary()
        self.recorder.write_summary(summary)
        self.recorder.close()
        if self.status in FINISHED:
            self.hooks.run_finished(self)
        self.dist.barrier()      # no rank leaves before rank 0 wrote the record (torchrun would stop the others)
        return summary

    def _train(self) -> Status:
        """The epochs, then the final evaluation and checkpoint (or, preempted, the last boundary's)."""
        self.recorder.write_summary(self.summary())
        reason = self._loop()
        if reason is StopReason.PREEMPTED:
            self.state.write_boundary(self)
            return reason.status
        if self.counters.steps == 0:
            self._no_step(reason)
        if self.evaluator.last_step() != self.counters.steps:
            self._evaluate()
        self.state.write(self, self.state.capture(self, finished=reason.status), self.next_epoch)
        return reason.status

    def _no_step(self, reason: StopReason) -> None:
        """A run that ended (budget or epochs) without one optimizer step trained nothing: raise NoTrainingStep."""
        kept = self.progress.counts()["kept"]
        raise NoTrainingStep(
            f"no optimizer step in {self.progress.epochs():.2f} epochs (stopped by {reason.value}): strategy "
            f"{self.strategy.name} kept {kept} examples, fewer than one training batch (train.batch_size="
            f"{self.global_batch_size}); accepted: a smaller train.batch_size, more training examples "
            f"(dataset.subset), a larger budget, or a larger strategy.selectivity")

    def _record_failure(self, status: Status, message: str, collective: bool = True) -> None:
        self.status = status
        try:
            self.recorder.write_summary({**self.summary(collective=collective), "error": message})
        finally:
            self.recorder.close()

    def _loop(self) -> StopReason:
        epoch = self.next_epoch
        every = int(self.cfg.train.get("eval_every", 1))
        next_eval = (math.floor(self.progress.epochs() / every) + 1) * every
        while True:
            reason = self.control.stop_reason(epochs=self.progress.epochs(), cost=self.progress.cost,
                                              train_s=self.timer.elapsed_train_s())
            if reason is not None:
                return reason
            torch.manual_seed(self._epoch_seed(epoch))   # augmentation + dropout
            if self.clock is None:                       # budget-indexed: set before every step (_steps)
                self._set_lr(epoch if self.unit == "considered" else math.floor(self.progress.epochs()))
            reason = self._run_epoch(epoch)
            if reason is not None:
                return reason
            epoch += 1
            self.next_epoch = epoch
            if self.eval_grid is None and self.unit == "considered" and self.progress.epochs() >= next_eval - 1e-9:
                self._evaluate()
                next_eval += every
            self.state.after_epoch(self, epoch)

    def _run_epoch(self, epoch: int) -> StopReason | None:
        """One pass of the strategy over the data, with its progress bar or line; a stop reason or None."""
        mode = progress_mode(self.cfg.train.get("progress", "auto")) if self.dist.is_main else "off"
        bar = tqdm(total=self.n_train, desc=f"epoch {epoch}", leave=False, disable=mode != "bar", unit="ex")
        self.timer.resume()
        reason = self._steps(epoch, bar)
        self.timer.pause()
        bar.close()
        if mode == "line" and reason is None:      # train.progress=auto off a terminal: one line per epoch
            log.info("epoch %d done | %d examples considered, %d backpropped | train %.1fs", epoch,
                     self.counters.considered, self.counters.backpropped, self.timer.train_s)
        return reason

    def _steps(self, epoch: int, bar: tqdm) -> StopReason | None:
        batches = self.strategy.epoch(epoch, self.ctx)
        seen = self.counters.considered
        try:
            for step, batch in enumerate(self._timed(batches), 1):
                if self.clock is not None:      # a budget-indexed LR follows the budget share spent, step by step
                    self._set_lr(self.clock.fraction())
                self.train_step(batch)
                if step == 1:
                    self.hooks.pause("mid_epoch", epoch)
                bar.update(self.counters.considered - seen)
                seen = self.counters.considered
                reason = self._after_step()
                if reason is not None:
                    return reason
            return None
        except StopRequested:                  # preemption noticed inside the strategy loop
            return StopReason.PREEMPTED
        except Exception as err:
            if not PREEMPTION.requested:
                raise
            # The same signal can take down DataLoader workers mid-fetch; the partial epoch is dropped
            # anyway, so this is a preemption, not a failure.
            log.warning("error while stopping for preemption (partial epoch dropped): %s: %s",
                        type(err).__name__, err)
            return StopReason.PREEMPTED
        finally:
            batches.close()

    def _timed(self, batches: Iterator[TrainBatch]) -> Iterator[TrainBatch]:
        """The strategy's batches, the time spent producing them counted as the `select` phase."""
        while True:
            with self.timer.phase("select"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def _after_step(self) -> StopReason | None:
        """Stop checks after a step, then the cost grid's evaluation if one is due (a run that stops here
        is evaluated at its stop point instead); with epoch_unit=backpropped, LR, evaluation and
        max_epochs follow the examples backpropped inside the epoch too."""
        reason = self.control.stop_reason(epochs=None, cost=self.progress.cost, train_s=self.timer.elapsed_train_s())
        if reason is not None:
            return reason
        if self.unit != "backpropped":
            self._evaluate_on_grid()
            return None
        epochs = self.progress.epochs()
        if self.clock is None:
            self._set_lr(math.floor(epochs))
        if self.eval_grid is not None:
            self._evaluate_on_grid()
        else:
            every = int(self.cfg.train.get("eval_every", 1))
            last = self.eval_rows[-1]["epoch"] if self.eval_rows else 0.0
            if epochs >= (math.floor(last / every) + 1) * every - 1e-9:
                self._evaluate()
        return StopReason.MAX_EPOCHS if self.control.epochs_done(epochs) else None

    def _evaluate_on_grid(self) -> None:
        """After a training step: evaluate if the run's cost reached the next point of the cost grid
        (train.eval_every_cost). A multiple passed by selection forwards alone (at an epoch's end) waits for
        the next step, so every evaluation follows a step of its own. Data parallel a collective (the
        cost), called by every rank at the same step."""
        if self.eval_grid is None:
            return
        cost = self.progress.cost()
        if self.eval_grid.due(cost):
            self._evaluate()
            self.eval_grid.passed(cost)

    # -- one step ------------------------------------------------------------------------------------
    def train_step(self, batch: TrainBatch) -> None:
        """Training forward + backward + optimizer step on one batch (data parallel: DDP averages gradients)."""
        self.net.train()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with self.timer.phase("train_forward"):
            with autocast:
                logits = self.net(batch.x)
            losses = F.cross_entropy(logits.float(), batch.y, reduction="none")
            loss = losses.mean() if batch.weight is None else (losses * batch.weight).mean()
        with self.timer.phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with self.timer.phase("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        n = batch.x.shape[0]
        detached = losses.detach()
        self.counters.steps += 1
        self.counters.train_forwarded += n
        self.counters.backpropped += n
        self.guard.note(loss)
        self.evaluator.note_step(detached, batch.idx)
        self.strategy.after_train_step(batch, detached, logits.detach())

    def _evaluate(self) -> dict:
        return self.evaluator.record(self.model, self.optimizer.param_groups[0]["lr"], time.time() - self.wall_start,
                                     budget=self.budget)

    def _set_lr(self, position: float) -> float:
        """The LR at `position`: an epoch, or (budget-indexed schedule) the budget share spent."""
        lr = self.base_lr * self.schedule.factor(position)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _epoch_seed(self, epoch: int) -> int:
        """Seed of torch's global RNG for `epoch` (augmentation, dropout); ranks r > 0 get their own."""
        if self.dist.rank == 0:
            return derive_seed(int(self.cfg.seed), epoch, 3)
        return derive_seed(int(self.cfg.seed), epoch, 3, self.dist.rank)

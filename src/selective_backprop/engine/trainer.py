"""The training loop: the strategy decides which examples, the trainer trains on them and records."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from selective_backprop.engine import checkpoint as ckpt
from selective_backprop.engine import distributed
from selective_backprop.engine.budget import resolve_budget
from selective_backprop.engine.distributed import ShardedSource
from selective_backprop.engine.records import RunRecorder
from selective_backprop.engine.device_source import build_source
from selective_backprop.engine.source import derive_seed
from selective_backprop.engine.strategies import Context, Counters, TrainBatch, build_strategy
from selective_backprop.engine.timing import PhaseTimer
from selective_backprop.errors import ConfigError
from selective_backprop.record import FINISHED, Status, build_summary, config_key
from selective_backprop.validate import validate_config

log = logging.getLogger(__name__)
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


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


class _StopRequested(Exception):
    """Raised inside the strategy loop when preemption was requested (the partial epoch is dropped)."""


class _PreemptibleContext(Context):
    """The strategies' context, polling the preemption flag before each selection forward.

    Data parallel, a rank never stops on its own inside the strategy (the others would wait for it in
    the next collective): ranks agree on preemption after every step instead (Trainer._run_epoch).
    """

    def select_forward(self, *args, **kwargs):
        if PREEMPTION.requested and self.dist.world_size == 1:
            raise _StopRequested
        return super().select_forward(*args, **kwargs)


class _NullRecorder:
    """The run record of a data-parallel rank r > 0: rank 0 writes it, the others write nothing."""

    def start(self, rows: list[dict]) -> None:
        pass

    def log_eval(self, row: dict) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _test_pause(point: str, epoch: int) -> None:
    """Test hook, inert unless SB_TEST_PAUSE_AT is set (tests/test_reliability.py kills runs with it).

    SB_TEST_PAUSE_AT=<point>:<epoch> makes the process write the file SB_TEST_PAUSE_MARKER and sleep
    (until killed, or until a SIGTERM/SIGINT sets the preemption flag) when it reaches <point> with
    <epoch> epochs completed. Points: `mid_epoch` (after the first training step of the epoch after
    <epoch> completed ones), `eval` (after the evaluation row of epoch <epoch> is in metrics.jsonl, before
    the checkpoint), `checkpoint_write` (checkpoint after epoch <epoch>: temp file written, not yet renamed).
    """
    spec = os.environ.get("SB_TEST_PAUSE_AT")
    if not spec or spec != f"{point}:{epoch}":
        return
    marker = os.environ.get("SB_TEST_PAUSE_MARKER")
    if marker:
        Path(marker).write_text(f"{point}:{epoch} pid {os.getpid()}\n")
    deadline = time.monotonic() + float(os.environ.get("SB_TEST_PAUSE_S", "600"))
    while time.monotonic() < deadline and not PREEMPTION.requested:
        time.sleep(0.05)


def _test_dump_rank_state(trainer: "Trainer") -> None:
    """Test hook, inert unless SB_TEST_RANK_STATE_DIR is set (tests/test_distributed.py): at the end of
    a run every rank saves its model state and own counters to <dir>/rank<r>.pt (outside the run dir)."""
    folder = os.environ.get("SB_TEST_RANK_STATE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save({"model": trainer.model.state_dict(), "counters": trainer.counters.snapshot()},
                   Path(folder) / f"rank{trainer.dist.rank}.pt")


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
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def progress_mode(setting: Any) -> str:
    """train.progress -> "bar" (tqdm), "line" (one log line per epoch) or "off"; `auto` shows bars
    only when stderr is a terminal, so logs of batch jobs are not flooded with bar redraws."""
    if setting == "auto":
        return "bar" if sys.stderr.isatty() else "line"
    return "bar" if setting else "off"


def lr_factor(epoch: float, milestones: list, gamma: float) -> float:
    """MultiStep schedule: gamma^(number of milestones reached by `epoch`)."""
    return gamma ** sum(1 for m in milestones if epoch >= m)


class Trainer:
    """Builds the run from a composed config and trains it, writing the run record to `output_dir`."""

    def __init__(self, cfg: DictConfig, output_dir: str, data_bundle: Any = None):
        from selective_backprop.models import build_model

        validate_config(cfg)           # refuse bad input before building anything heavy
        self.cfg = cfg
        self.budget = resolve_budget(cfg)          # max_epochs / max_time_s / max_cost (engine/budget.py)
        self.output_dir = output_dir
        self.dist = distributed.current()          # K > 1 under torchrun / submitit tasks (engine/distributed.py)
        self.device = resolve_device(str(cfg.device))
        if self.dist.enabled and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())    # cuda:LOCAL_RANK
        set_determinism(bool(cfg.deterministic))
        torch.manual_seed(cfg.seed)
        tcfg = cfg.train
        self.global_batch_size = int(tcfg.batch_size)
        if self.global_batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size={self.global_batch_size}: not divisible by the {self.dist.world_size} "
                              f"data-parallel processes; accepted: a multiple of {self.dist.world_size} (the global "
                              f"batch, split evenly over the ranks)")
        self.batch_size = self.global_batch_size // self.dist.world_size     # this rank's share of b
        self.unit = str(tcfg.get("epoch_unit", "considered"))
        self.strategy = build_strategy(self._rank_strategy_cfg(), self.batch_size, self.dist.rank_seed(int(cfg.seed)))
        # the run's strategy parameters are those of the global batch (what the config describes)
        self._params_strategy = (build_strategy(cfg.strategy, self.global_batch_size, int(cfg.seed))
                                 if self.dist.enabled else self.strategy)
        self.data = data_bundle if data_bundle is not None else self._build_data()
        model_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
        self.model = build_model(cfg.model.name, num_classes=self.data.num_classes,
                                 in_channels=self.data.in_channels, **model_kwargs).to(self.device)
        self.memory_format = torch.channels_last if tcfg.get("channels_last", False) else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.ddp = None                  # the training forward's wrapper; selection and evaluation use self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        from hydra.utils import instantiate
        self.optimizer = instantiate(cfg.optimizer)(params=self.model.parameters())
        self.base_lr = float(cfg.optimizer.lr)
        self.milestones = list(cfg.lr_schedule.milestones)
        self.gamma = float(cfg.lr_schedule.gamma)
        self.amp_dtype = AMP_DTYPES[str(tcfg.get("precision", "fp32"))]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.timer = PhaseTimer(self.device)
        self.counters = Counters()
        self.source = build_source(str(cfg.dataset.get("loader", "torch")), self.data, self.device, int(cfg.seed),
                                   self.timer, int(tcfg.get("num_workers", 0)), bool(tcfg.get("channels_last", False)))
        if self.dist.enabled:
            self.source = ShardedSource(self.source, self.dist.rank, self.dist.world_size)
        self.n_train = len(self.source)
        # examples one epoch considers: the permutation truncated to a multiple of K (all of them for K = 1)
        self.epoch_examples = self.n_train - self.n_train % self.dist.world_size
        self.ctx = _PreemptibleContext(self.model, self.source, self.timer, self.counters, self.batch_size,
                                       self.device, dist=self.dist,
                                       extras={"max_epochs": tcfg.get("max_epochs")})   # engine/peers.py
        x_test, y_test = self.data.test_arrays()
        self.test_x, self.test_y = self._normalise(x_test), y_test.to(self.device)
        self.noisy = None if self.data.noisy is None else self.data.noisy.to(self.device)
        self.recorder = (RunRecorder(output_dir, bool(tcfg.get("tensorboard", True))) if self.dist.is_main
                         else _NullRecorder())
        self.history: list[dict] = []
        self.next_epoch = 0
        self.status = Status.RUNNING
        self._interval = self._fresh_interval()
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._wall_offset = 0.0                 # wall seconds of the runs this one resumes
        self._finished: Status | None = None        # status of a final checkpoint resumed from (run had ended)
        self._boundary: dict | None = None       # last epoch boundary not yet on disk (CPU copy)
        self._epoch_steps = 0
        self.saved_epoch: int | None = None      # epochs completed in the checkpoint.pt on disk

    # -- pieces --------------------------------------------------------------------------------
    def _rank_strategy_cfg(self) -> Any:
        """The strategy config a rank runs with: an explicit selection batch is split over the ranks too."""
        scfg = self.cfg.strategy
        if not self.dist.enabled or scfg.get("select_batch_size") is None:
            return scfg
        scfg = OmegaConf.create(OmegaConf.to_container(scfg, resolve=True))
        scfg.select_batch_size = -(-int(scfg.select_batch_size) // self.dist.world_size)
        return scfg

    def _build_data(self) -> Any:
        """The data bundle; data parallel, one process per node prepares the files (decompression,
        download) while the node's other processes wait, then they read them."""
        from selective_backprop.data import build_data

        if not self.dist.enabled:
            return build_data(self.cfg.dataset, int(self.cfg.seed))
        first = self.dist.local_rank == 0
        if not first:
            self.dist.barrier(timeout_s=4 * 3600)
        try:
            return build_data(self.cfg.dataset, int(self.cfg.seed))
        finally:
            if first:
                self.dist.barrier(timeout_s=4 * 3600)

    def _epoch_seed(self, epoch: int) -> int:
        """Seed of torch's global RNG for `epoch` (augmentation, dropout); ranks r > 0 get their own."""
        if self.dist.rank == 0:
            return derive_seed(int(self.cfg.seed), epoch, 3)
        return derive_seed(int(self.cfg.seed), epoch, 3, self.dist.rank)

    def _counts(self) -> dict[str, int]:
        """Run counters; data parallel: example counts summed over ranks (steps are equal on every rank)."""
        counts = self.counters.snapshot()
        if self.dist.enabled:
            keys = ("considered", "select_forwarded", "train_forwarded", "backpropped", "kept")
            counts.update(zip(keys, self.dist.sum_ints([counts[k] for k in keys])))
        return counts

    def spent_cost(self) -> float:
        """Cost so far in forward-equivalent units (engine/budget.py), from host counters only (no device
        sync); data parallel: global sums, a collective every rank must call."""
        select_forwarded, backpropped = self.counters.select_forwarded, self.counters.backpropped
        if self.dist.enabled:
            select_forwarded, backpropped = self.dist.sum_ints([select_forwarded, backpropped])
        return self.budget.weights.cost(select_forwarded, backpropped)

    def _over_cost(self) -> bool:
        """train.max_cost reached (a collective under data parallelism when max_cost is set)."""
        return self.budget.max_cost is not None and self.spent_cost() >= self.budget.max_cost

    def _times(self) -> tuple[float, dict[str, float], float]:
        """(train_s, phase_s, eval_s); data parallel: the slowest rank's, each."""
        train_s, phases, eval_s = self.timer.train_s, self.timer.phase_s(), self.timer.eval_s
        if self.dist.enabled:
            values = self.dist.max_floats([train_s, eval_s, *phases.values()])
            train_s, eval_s, phases = values[0], values[1], dict(zip(phases, values[2:]))
        return train_s, phases, eval_s

    def _normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.data.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.data.std).view(1, -1, 1, 1)
        x = (x_uint8.float() / 255.0 - mean) / std
        return x.to(self.device).contiguous(memory_format=self.memory_format)

    def _fresh_interval(self, counts: dict | None = None) -> dict:
        """A new evaluation interval; `counts` (global, data parallel) are its baselines, else this process's."""
        zero = torch.zeros((), device=self.device)
        considered, kept = ((self.counters.considered, self.counters.kept) if counts is None
                            else (counts["considered"], counts["kept"]))
        return {"loss_sum": zero.clone(), "trained": 0, "noisy": zero.clone(),
                "considered": considered, "kept": kept}

    def _set_lr(self, epoch: float) -> float:
        lr = self.base_lr * lr_factor(epoch, self.milestones, self.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def progress(self) -> float:
        """Epochs completed in the configured unit.

        Data parallel, no collective is needed: every rank considers the same number of examples per
        epoch (equal shards) and backprops the same number per step (agreed batches of b/K), so the
        global count is K times this rank's.
        """
        done = self.counters.considered if self.unit == "considered" else self.counters.backpropped
        if self.dist.world_size == 1:
            return done / self.n_train
        total = done * self.dist.world_size
        return total / (self.epoch_examples if self.unit == "considered" else self.n_train)

    def train_step(self, batch: TrainBatch) -> None:
        """Training forward + backward + optimizer step on one batch (data parallel: DDP averages gradients)."""
        net = self.model if self.ddp is None else self.ddp
        net.train()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with self.timer.phase("train_forward"):
            with autocast:
                logits = net(batch.x)
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
        self._nonfinite |= ~torch.isfinite(loss.detach())
        self._interval["loss_sum"] += detached.sum()
        self._interval["trained"] += n
        if self.noisy is not None:
            self._interval["noisy"] += self.noisy[batch.idx].sum()
        self.strategy.after_train_step(batch, detached, logits.detach())

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(test error, test loss) over the whole test set; data parallel: each rank takes every K-th
        chunk and the sums are all-reduced, so every rank gets the same numbers."""
        self.model.eval()
        errors = torch.zeros((), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        step = int(self.cfg.train.get("eval_batch_size", 1024))
        for chunk, i in enumerate(range(0, self.test_x.shape[0], step)):
            if self.dist.enabled and chunk % self.dist.world_size != self.dist.rank:
                continue
            logits = self.model(self.test_x[i:i + step]).float()
            y = self.test_y[i:i + step]
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            errors += (logits.argmax(1) != y).sum()
        if self.dist.enabled:
            errors, loss_sum = self.dist.sum_(torch.stack([errors, loss_sum]))
        n = self.test_x.shape[0]
        return float(errors) / n, float(loss_sum) / n

    def _check_finite(self) -> None:
        bad = bool(self._nonfinite)
        if self.dist.enabled:             # every rank raises, or none
            bad = self.dist.any_flags([bad])[0]
        if bad:
            raise DivergedError(f"training loss became non-finite by step {self.counters.steps} "
                                f"(epoch {self.progress():.2f}); lower optimizer.lr or check the data")

    def _past_first_stage(self) -> bool:
        """The first LR stage is over *and* the run has backpropped as many examples as Traditional does in
        it: a selective run reaches the first milestone with a fraction of the updates, and must not be
        called diverged for learning slowly (data parallel, every rank backprops the same count)."""
        if not self.milestones or self.progress() < self.milestones[0]:
            return False
        return self.counters.backpropped * self.dist.world_size >= self.milestones[0] * self.n_train

    def _check_explosion(self, error: float, test_loss: float) -> None:
        """Divergence short of NaN: a test loss above train.diverge_factor x ln(num_classes) (the loss of
        an untrained model), or test error at chance (within 2 %) once the first LR stage is over and
        as many examples were backpropped as in Traditional's first stage (_past_first_stage).
        train.diverge_factor=null turns both off. Every rank sees the same evaluation: all raise, or none."""
        factor = self.cfg.train.get("diverge_factor", 100)
        if factor is None:
            return
        classes = self.data.num_classes
        limit = float(factor) * math.log(classes)
        chance = 1.0 - 1.0 / classes
        if test_loss > limit:
            why = f"test loss {test_loss:.4g} > train.diverge_factor x ln({classes}) = {limit:.4g}"
        elif self._past_first_stage() and error >= 0.98 * chance:
            why = (f"test error {error:.4f} is at chance ({chance:.2f}) after a first LR stage's worth of "
                   f"training (epoch {self.milestones[0]}, and as many examples backpropped)")
        else:
            return
        raise DivergedError(f"{why} by step {self.counters.steps} (epoch {self.progress():.2f}); lower "
                            f"optimizer.lr, or set train.diverge_factor=null to keep training")

    def _record_eval(self) -> dict:
        self._check_finite()
        if self.dist.enabled:                 # BatchNorm statistics: rank 0's, as DDP's forward uses
            self.dist.broadcast_buffers(self.model)
        with self.timer.evaluating():
            error, test_loss = self.evaluate()
        if not math.isfinite(test_loss):      # weights blew up after the last (finite) training loss
            raise DivergedError(f"test loss became non-finite by step {self.counters.steps} "
                                f"(epoch {self.progress():.2f}); lower optimizer.lr or check the data")
        self._check_explosion(error, test_loss)
        counts = self._counts()
        iv = self._interval
        n_trained, loss_total, noisy_total = iv["trained"], float(iv["loss_sum"]), float(iv["noisy"])
        if self.dist.enabled:
            n_trained = self.dist.sum_ints([n_trained])[0]
            loss_total, noisy_total = self.dist.sum_floats([loss_total, noisy_total])
        trained = max(n_trained, 1)
        considered = counts["considered"] - iv["considered"]
        train_s, phase_s, eval_s = self._times()
        row = {
            "epoch": round(self.progress(), 6), "step": counts["steps"],
            "examples_forwarded": counts["select_forwarded"] + counts["train_forwarded"],
            "examples_backpropped": counts["backpropped"], "examples_considered": counts["considered"],
            "cost": self.budget.weights.cost(counts["select_forwarded"], counts["backpropped"]),
            "train_s": train_s, "phase_s": phase_s, "eval_s": eval_s,
            "test_error": error, "test_loss": test_loss,
            "train_loss": loss_total / trained if n_trained else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "selected_fraction": (counts["kept"] - int(iv["kept"])) / considered if considered else 0.0,
            "wall_s": time.time() - self._wall_start,
        }
        if self.noisy is not None:
            row["selected_noisy_fraction"] = noisy_total / trained
        self.history.append(row)
        self.recorder.log_eval(row)
        self._interval = self._fresh_interval(counts if self.dist.enabled else None)
        _test_pause("eval", int(round(row["epoch"])))
        log.info("epoch %.2f | test error %.4f | test loss %.4f | train %.1fs | backpropped %d | %s",
                 row["epoch"], error, test_loss, row["train_s"], row["examples_backpropped"],
                 " ".join(f"{k}={v:.1f}s" for k, v in row["phase_s"].items()))
        return row

    def strategy_params(self) -> dict:
        """The strategy's parameters for the whole run (global batch; per-rank values differ under DP)."""
        return self._params_strategy.params()

    def summary(self, collective: bool = True) -> dict:
        """The summary.json payload. Data parallel, it sums counters and takes the slowest rank's times
        (collectives: every rank calls it); `collective=False` gives this rank's own view instead, for a
        failure that only this rank may have seen."""
        last = self.history[-1] if self.history else {}
        if collective:
            counts = self._counts()
            train_s, phase_s, _ = self._times()
        else:
            counts, train_s, phase_s = self.counters.snapshot(), self.timer.train_s, self.timer.phase_s()
        return build_summary(
            OmegaConf.to_container(self.cfg, resolve=True), self.status,
            dataset=self.cfg.dataset.name, model=self.cfg.model.name,
            strategy=self.strategy.name, lr_schedule=self.cfg.lr_schedule.name,
            seed=int(self.cfg.seed), strategy_params=self.strategy_params(),
            final_test_error=last.get("test_error"),
            best_test_error=min((r["test_error"] for r in self.history), default=None),
            train_s=train_s, epochs=round(self.progress(), 6),
            steps=counts["steps"], examples_backpropped=counts["backpropped"],
            examples_forwarded=counts["select_forwarded"] + counts["train_forwarded"],
            cost=self.budget.weights.cost(counts["select_forwarded"], counts["backpropped"]),
            budget=self.budget.record(), phase_s=phase_s,
            torch_version=torch.__version__,
            device_name=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            n_train=self.n_train, world_size=self.dist.world_size)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until the first budget set (max_epochs, max_time_s, max_cost; engine/budget.py) is reached;
        returns the summary (also written to summary.json).

        metrics.jsonl restarts from `self.history` (a resumed run's checkpointed evaluations), so a
        resume never duplicates or drops rows. Status: completed / budget (a final checkpoint.pt with
        the final weights is written); preempted (PREEMPTION was set: stops at a step boundary, the
        last completed epoch boundary is in checkpoint.pt); diverged (DivergedError) or failed (any
        other exception): summary.json gets the error, the records so far stay, the error is re-raised.
        """
        tcfg = self.cfg.train
        max_epochs, max_time = self.budget.max_epochs, self.budget.max_time_s
        eval_every = int(tcfg.get("eval_every", 1))
        self._wall_start = time.time() - self._wall_offset
        if self.dist.is_main:
            ckpt.remove_stale_temps(self.output_dir)
        self.recorder.start(self.history)
        try:
            if self._finished is not None:      # resumed from a final checkpoint: nothing left to train
                self.status = self._finished
            else:
                self.recorder.write_summary(self.summary())
                stop = self._loop(max_epochs, max_time, eval_every)
                self.status = stop
                if stop == Status.PREEMPTED:
                    if self._boundary is not None:   # the last completed epoch, not yet on disk
                        self._save_checkpoint(self._boundary)
                        self._boundary = None
                else:
                    if not self.history or self.history[-1]["step"] != self.counters.steps:
                        self._record_eval()
                    self._save_checkpoint(self._checkpoint_state(finished=stop))   # the final weights
        except DivergedError as err:          # data parallel: every rank agreed (_check_finite, evaluate)
            self._record_failure(Status.DIVERGED, str(err))
            self.dist.barrier()
            raise
        except Exception as err:
            self._record_failure(Status.FAILED, f"{type(err).__name__}: {err}", collective=False)
            raise
        summary = self.summary()
        self.recorder.write_summary(summary)
        self.recorder.close()
        if self.status in FINISHED:
            _test_dump_rank_state(self)
        # data parallel: no rank leaves before rank 0 has written the record (a rank exiting with 75
        # would make torchrun stop the others)
        self.dist.barrier()
        return summary

    def _record_failure(self, status: Status, message: str, collective: bool = True) -> None:
        self.status = status
        try:
            self.recorder.write_summary({**self.summary(collective=collective or not self.dist.enabled),
                                         "error": message})
        finally:
            self.recorder.close()

    def _loop(self, max_epochs: float | None, max_time: float | None, eval_every: int) -> str:
        epoch = self.next_epoch
        next_eval = (math.floor(self.progress() / eval_every) + 1) * eval_every
        while True:
            if max_epochs is not None and self.progress() >= max_epochs - 1e-9:
                return Status.COMPLETED
            if self._over_cost():              # spent by selection forwards at the end of the last epoch
                return Status.BUDGET
            preempted = PREEMPTION.requested
            if self.dist.enabled:              # all ranks stop, or none
                preempted = self.dist.any_flags([preempted])[0]
            if preempted:                      # at an epoch boundary (checkpointed by _after_epoch)
                return Status.PREEMPTED
            torch.manual_seed(self._epoch_seed(epoch))   # augmentation + dropout
            lr_epoch = epoch if self.unit == "considered" else math.floor(self.progress())
            self._set_lr(lr_epoch)
            mode = progress_mode(self.cfg.train.get("progress", "auto")) if self.dist.is_main else "off"
            bar = tqdm(total=self.n_train, desc=f"epoch {epoch}", leave=False, disable=mode != "bar", unit="ex")
            self.timer.resume()
            stop = self._run_epoch(epoch, bar, max_epochs, max_time)
            self.timer.pause()
            bar.close()
            if mode == "line" and not stop:      # train.progress=auto off a terminal: one line per epoch
                log.info("epoch %d done | %d examples considered, %d backpropped | train %.1fs", epoch,
                         self.counters.considered, self.counters.backpropped, self.timer.train_s)
            if stop:
                return stop
            epoch += 1
            self.next_epoch = epoch
            if self.unit == "considered" and self.progress() >= next_eval - 1e-9:
                self._record_eval()
                next_eval += eval_every
            self._after_epoch(epoch)

    def _run_epoch(self, epoch: int, bar: tqdm, max_epochs: float | None, max_time: float | None) -> str | None:
        """One pass of the strategy over the data; returns a stop status or None."""
        batches = self.strategy.epoch(epoch, self.ctx)
        seen = self.counters.considered
        self._epoch_steps = 0
        try:
            while True:
                with self.timer.phase("select"):
                    batch = next(batches, None)
                if batch is None:
                    return None
                self.train_step(batch)
                self._epoch_steps += 1
                if self._epoch_steps == 1:
                    _test_pause("mid_epoch", epoch)
                if self.dist.enabled:          # one agreed decision: any rank preempted; rank 0's budget
                    preempted, over_budget = self.dist.any_flags(
                        [PREEMPTION.requested,
                         self.dist.is_main and max_time is not None and self.timer.elapsed_train_s() >= max_time])
                    if preempted:
                        return Status.PREEMPTED
                    if over_budget:
                        return Status.BUDGET
                if PREEMPTION.requested and not self.dist.enabled:   # a step boundary: the partial epoch
                    return Status.PREEMPTED                                 # is redone on resume
                bar.update(self.counters.considered - seen)
                seen = self.counters.considered
                if max_time is not None and self.timer.elapsed_train_s() >= max_time and not self.dist.enabled:
                    return Status.BUDGET
                if self._over_cost():          # within one step of max_cost (data parallel: global sums)
                    return Status.BUDGET
                if self.unit == "backpropped":
                    stop = self._backpropped_checks(max_epochs)
                    if stop:
                        return stop
        except _StopRequested:                 # preemption noticed inside the strategy loop
            return Status.PREEMPTED
        except Exception as err:
            if not PREEMPTION.requested:
                raise
            # The same signal can take down DataLoader workers mid-fetch; the partial epoch is
            # dropped anyway, so this is a preemption, not a failure.
            log.warning("error while stopping for preemption (partial epoch dropped): %s: %s",
                        type(err).__name__, err)
            return Status.PREEMPTED
        finally:
            batches.close()

    def _backpropped_checks(self, max_epochs: float | None) -> str | None:
        """Epoch unit 'backpropped': LR, evaluation and stopping follow backpropped examples."""
        progress = self.progress()
        self._set_lr(math.floor(progress))
        eval_every = int(self.cfg.train.get("eval_every", 1))
        last = self.history[-1]["epoch"] if self.history else 0.0
        if progress >= (math.floor(last / eval_every) + 1) * eval_every - 1e-9:
            self.timer.pause()
            self._record_eval()
            self.timer.resume()
        if max_epochs is not None and progress >= max_epochs - 1e-9:
            return Status.COMPLETED
        return None

    def _after_epoch(self, epoch: int) -> None:
        """End-of-epoch work, `epoch` epochs completed: checkpoint.pt every train.checkpoint_every epochs.

        Checkpoints are taken at epoch boundaries only (decision): mid-epoch state (the strategy's
        position inside its generator, a Stale-SB epoch's drawn mask, Kath18's example stream) is not
        saved. A preempted or killed run resumes from the last boundary and redoes the partial epoch,
        which reproduces it exactly, since data order, augmentation and dropout derive from (seed, epoch).
        Between due checkpoints a CPU copy of the boundary is kept, so a preemption can still write it.
        """
        every = int(self.cfg.train.get("checkpoint_every", 1))
        state = self._checkpoint_state()         # (data parallel: a collective; {} on ranks r > 0)
        if epoch % every == 0:
            self._boundary = None
            self._save_checkpoint(state)
        else:
            self._boundary = ckpt.to_plain(state, clone=True)

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint_state(self, finished: Status | None = None) -> dict:
        """Everything an exact resume needs, as tensors and plain types (weights_only-loadable).

        `finished` marks the final checkpoint of a run that ended (completed / budget): it holds the
        final weights and is never trained on from.

        Data parallel (decision): one checkpoint.pt, written by rank 0 alone, so it can never mix ranks'
        epochs. Model and optimizer are rank 0's (DDP keeps them equal; BatchNorm buffers are broadcast
        from rank 0 first); what differs per rank (strategy state, counters, timer, RNG, the evaluation
        interval) is gathered to rank 0 into `ranks` (in rank order) and `counters` holds the global sums.
        `world_size` says how many processes wrote it: a resume must use as many. Ranks r > 0 take part
        in the collectives and get {} back.
        """
        config = OmegaConf.to_container(self.cfg, resolve=True)
        if self.dist.enabled:
            self.dist.broadcast_buffers(self.model)
            counts = self._counts()
            ranks = self.dist.gather_objects(ckpt.to_plain(self._rank_state()))
            if not self.dist.is_main:
                return {}
            per_rank = {"counters": counts, "ranks": ranks}
        else:
            per_rank = self._rank_state()
        return {
            "format": ckpt.FORMAT_VERSION,
            "config_key": config_key(config), "seed": int(self.cfg.seed), "config": config,
            "finished": None if finished is None else str(finished), "world_size": self.dist.world_size,
            # Data order, augmentation and dropout are re-seeded from (seed, epoch) at each epoch start
            # (TorchSource.permutation, derive_seed), so the epoch index is their whole state; torch's
            # global RNG state is saved as well, for safety. The learning rate is a pure function of the
            # epoch (lr_factor): there is no scheduler object to save.
            "next_epoch": int(self.next_epoch),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **per_rank,
            "history": [dict(row) for row in self.history],
            "budget": self.budget.record(),
            "wall_s": time.time() - self._wall_start,
        }

    def _rank_state(self) -> dict:
        """The part of the checkpoint that is this process's own."""
        iv = self._interval
        return {
            "strategy": self.strategy.state_dict(),   # history, stale table, tau, pending batch, generators
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": list(torch.cuda.get_rng_state_all()) if self.device.type == "cuda" else []},
            "counters": self.counters.snapshot(),
            "timer": self.timer.state_dict(),
            "interval": {"loss_sum": iv["loss_sum"], "noisy": iv["noisy"], "trained": int(iv["trained"]),
                         "considered": int(iv["considered"]), "kept": int(iv["kept"])},
            "nonfinite": bool(self._nonfinite),
        }

    def _restore_budget(self, saved: dict | None) -> None:
        """A resumed run keeps the budget it borrowed with train.budget_from when it started, even if
        that folder changed since (the configured budgets are part of config_key already)."""
        if not saved or not saved.get("source") or saved == self.budget.record():
            return
        log.warning("resuming with the budget borrowed at the start (%s from %s), not the one found now",
                    saved["source"].get("axis"), saved["source"].get("run_dir"))
        self.budget = dataclasses.replace(self.budget, max_cost=saved["max_cost"], max_time_s=saved["max_time_s"],
                                          source=saved["source"])

    def _save_checkpoint(self, state: dict) -> None:
        """Write `state` ({} on a data-parallel rank r > 0: rank 0 writes the one checkpoint)."""
        epoch = int(state.get("next_epoch", self.next_epoch))
        if state:
            ckpt.save_checkpoint(state, ckpt.checkpoint_path(self.output_dir),
                                 before_rename=lambda: _test_pause("checkpoint_write", epoch))
        self.saved_epoch = epoch

    def resume(self, path: str | Path | None = None) -> int:
        """Restore a checkpoint (default: checkpoint.pt in the output directory); returns its epoch.

        Call before fit(). The checkpoint must come from the same config (config_key) and seed, and from
        as many data-parallel processes as this run has (each rank restores its own part).
        """
        path = Path(path) if path is not None else ckpt.checkpoint_path(self.output_dir)
        state = ckpt.load_checkpoint(path)
        key = config_key(OmegaConf.to_container(self.cfg, resolve=True))
        if (state.get("config_key"), state.get("seed")) != (key, int(self.cfg.seed)):
            raise ConfigError(f"checkpoint '{path}' belongs to a different run (config_key {state.get('config_key')}, "
                              f"seed {state.get('seed')}; this run: config_key {key}, seed {int(self.cfg.seed)}); "
                              f"accepted: a checkpoint of this same run")
        ckpt.check_world_size(path, int(state.get("world_size", 1)), self.dist.world_size)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        own = state["ranks"][self.dist.rank] if self.dist.enabled else state
        self.strategy.load_state_dict(own["strategy"], self.device)
        self.counters.load(own["counters"])
        self.timer.load_state_dict(own["timer"])
        self.history = [dict(row) for row in state["history"]]
        self.next_epoch = int(state["next_epoch"])
        iv = own["interval"]
        self._interval = {"loss_sum": iv["loss_sum"].to(self.device), "noisy": iv["noisy"].to(self.device),
                          "trained": int(iv["trained"]), "considered": int(iv["considered"]),
                          "kept": int(iv["kept"])}
        self._nonfinite = torch.tensor(bool(own["nonfinite"]), device=self.device)
        torch.set_rng_state(own["rng"]["torch"])
        if self.device.type == "cuda" and len(own["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(own["rng"]["cuda"])
        self._wall_offset = float(state["wall_s"])
        self._finished = Status(state["finished"]) if state.get("finished") else None
        self._restore_budget(state.get("budget"))
        self.saved_epoch = self.next_epoch
        return self.next_epoch

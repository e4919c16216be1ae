"""The training loop: the strategy decides which examples, the trainer trains on them and records."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from selective_backprop.engine import checkpoint as ckpt
from selective_backprop.engine.records import RunRecorder, config_key
from selective_backprop.engine.device_source import build_source
from selective_backprop.engine.source import derive_seed
from selective_backprop.engine.strategies import Context, Counters, TrainBatch, build_strategy
from selective_backprop.engine.timing import PhaseTimer
from selective_backprop.errors import ConfigError
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
    """The strategies' context, polling the preemption flag before each selection forward."""

    def select_forward(self, *args, **kwargs):
        if PREEMPTION.requested:
            raise _StopRequested
        return super().select_forward(*args, **kwargs)


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


def lr_factor(epoch: float, milestones: list, gamma: float) -> float:
    """MultiStep schedule: gamma^(number of milestones reached by `epoch`)."""
    return gamma ** sum(1 for m in milestones if epoch >= m)


class Trainer:
    """Builds the run from a composed config and trains it, writing the run record to `output_dir`."""

    def __init__(self, cfg: DictConfig, output_dir: str, data_bundle: Any = None):
        from selective_backprop.data import build_data
        from selective_backprop.models import build_model

        validate_config(cfg)           # refuse bad input before building anything heavy
        self.cfg = cfg
        self.output_dir = output_dir
        self.device = resolve_device(str(cfg.device))
        set_determinism(bool(cfg.deterministic))
        torch.manual_seed(cfg.seed)
        tcfg = cfg.train
        self.batch_size = int(tcfg.batch_size)
        self.unit = str(tcfg.get("epoch_unit", "considered"))
        self.strategy = build_strategy(cfg.strategy, self.batch_size, int(cfg.seed))
        self.data = data_bundle if data_bundle is not None else build_data(cfg.dataset, int(cfg.seed))
        model_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
        self.model = build_model(cfg.model.name, num_classes=self.data.num_classes,
                                 in_channels=self.data.in_channels, **model_kwargs).to(self.device)
        self.memory_format = torch.channels_last if tcfg.get("channels_last", False) else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
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
        self.n_train = len(self.source)
        self.ctx = _PreemptibleContext(self.model, self.source, self.timer, self.counters, self.batch_size,
                                       self.device)
        x_test, y_test = self.data.test_arrays()
        self.test_x, self.test_y = self._normalise(x_test), y_test.to(self.device)
        self.noisy = None if self.data.noisy is None else self.data.noisy.to(self.device)
        self.recorder = RunRecorder(output_dir, bool(tcfg.get("tensorboard", True)))
        self.history: list[dict] = []
        self.next_epoch = 0
        self.status = "running"
        self._interval = self._fresh_interval()
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._wall_offset = 0.0                 # wall seconds of the runs this one resumes
        self._finished: str | None = None        # status of a final checkpoint resumed from (run had ended)
        self._boundary: dict | None = None       # last epoch boundary not yet on disk (CPU copy)
        self._epoch_steps = 0
        self.saved_epoch: int | None = None      # epochs completed in the checkpoint.pt on disk

    # -- pieces --------------------------------------------------------------------------------
    def _normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.data.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.data.std).view(1, -1, 1, 1)
        x = (x_uint8.float() / 255.0 - mean) / std
        return x.to(self.device).contiguous(memory_format=self.memory_format)

    def _fresh_interval(self) -> dict:
        zero = torch.zeros((), device=self.device)
        return {"loss_sum": zero.clone(), "trained": 0, "noisy": zero.clone(),
                "considered": self.counters.considered, "kept": self.counters.kept}

    def _set_lr(self, epoch: float) -> float:
        lr = self.base_lr * lr_factor(epoch, self.milestones, self.gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def progress(self) -> float:
        """Epochs completed in the configured unit."""
        done = self.counters.considered if self.unit == "considered" else self.counters.backpropped
        return done / self.n_train

    def train_step(self, batch: TrainBatch) -> None:
        """Training forward + backward + optimizer step on one batch."""
        self.model.train()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with self.timer.phase("train_forward"):
            with autocast:
                logits = self.model(batch.x)
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
        """(test error, test loss) over the whole test set."""
        self.model.eval()
        errors = torch.zeros((), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        step = int(self.cfg.train.get("eval_batch_size", 1024))
        for i in range(0, self.test_x.shape[0], step):
            logits = self.model(self.test_x[i:i + step]).float()
            y = self.test_y[i:i + step]
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            errors += (logits.argmax(1) != y).sum()
        n = self.test_x.shape[0]
        return float(errors) / n, float(loss_sum) / n

    def _check_finite(self) -> None:
        if bool(self._nonfinite):
            raise DivergedError(f"training loss became non-finite by step {self.counters.steps} "
                                f"(epoch {self.progress():.2f}); lower optimizer.lr or check the data")

    def _record_eval(self) -> dict:
        self._check_finite()
        with self.timer.evaluating():
            error, test_loss = self.evaluate()
        if not math.isfinite(test_loss):      # weights blew up after the last (finite) training loss
            raise DivergedError(f"test loss became non-finite by step {self.counters.steps} "
                                f"(epoch {self.progress():.2f}); lower optimizer.lr or check the data")
        counts = self.counters.snapshot()
        iv = self._interval
        trained = max(iv["trained"], 1)
        considered = counts["considered"] - iv["considered"]
        row = {
            "epoch": round(self.progress(), 6), "step": counts["steps"],
            "examples_forwarded": counts["select_forwarded"] + counts["train_forwarded"],
            "examples_backpropped": counts["backpropped"], "examples_considered": counts["considered"],
            "train_s": self.timer.train_s, "phase_s": self.timer.phase_s(), "eval_s": self.timer.eval_s,
            "test_error": error, "test_loss": test_loss,
            "train_loss": float(iv["loss_sum"]) / trained if iv["trained"] else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "selected_fraction": (counts["kept"] - int(iv["kept"])) / considered if considered else 0.0,
            "wall_s": time.time() - self._wall_start,
        }
        if self.noisy is not None:
            row["selected_noisy_fraction"] = float(iv["noisy"]) / trained
        self.history.append(row)
        self.recorder.log_eval(row)
        self._interval = self._fresh_interval()
        _test_pause("eval", int(round(row["epoch"])))
        log.info("epoch %.2f | test error %.4f | test loss %.4f | train %.1fs | backpropped %d | %s",
                 row["epoch"], error, test_loss, row["train_s"], row["examples_backpropped"],
                 " ".join(f"{k}={v:.1f}s" for k, v in row["phase_s"].items()))
        return row

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        counts = self.counters.snapshot()
        config = OmegaConf.to_container(self.cfg, resolve=True)
        return {
            "dataset": self.cfg.dataset.name, "model": self.cfg.model.name,
            "strategy": self.strategy.name, "lr_schedule": self.cfg.lr_schedule.name,
            "seed": int(self.cfg.seed), "strategy_params": self.strategy.params(),
            "final_test_error": last.get("test_error"),
            "best_test_error": min((r["test_error"] for r in self.history), default=None),
            "train_s": self.timer.train_s, "epochs": round(self.progress(), 6),
            "steps": counts["steps"], "examples_backpropped": counts["backpropped"],
            "examples_forwarded": counts["select_forwarded"] + counts["train_forwarded"],
            "phase_s": self.timer.phase_s(), "status": self.status,
            "torch_version": torch.__version__,
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "n_train": self.n_train, "config": config, "config_key": config_key(config),
        }

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until max_epochs or max_time_s; returns the summary (also written to summary.json).

        metrics.jsonl restarts from `self.history` (a resumed run's checkpointed evaluations), so a
        resume never duplicates or drops rows. Status: completed / budget (a final checkpoint.pt with
        the final weights is written); preempted (PREEMPTION was set: stops at a step boundary, the
        last completed epoch boundary is in checkpoint.pt); diverged (DivergedError) or failed (any
        other exception): summary.json gets the error, the records so far stay, the error is re-raised.
        """
        tcfg = self.cfg.train
        max_epochs = tcfg.get("max_epochs")
        max_time = tcfg.get("max_time_s")
        eval_every = int(tcfg.get("eval_every", 1))
        self._wall_start = time.time() - self._wall_offset
        ckpt.remove_stale_temps(self.output_dir)
        self.recorder.start(self.history)
        try:
            if self._finished is not None:      # resumed from a final checkpoint: nothing left to train
                self.status = self._finished
            else:
                self.recorder.write_summary(self.summary())
                stop = self._loop(max_epochs, max_time, eval_every)
                self.status = stop
                if stop == "preempted":
                    if self._boundary is not None:   # the last completed epoch, not yet on disk
                        self._save_checkpoint(self._boundary)
                        self._boundary = None
                else:
                    if not self.history or self.history[-1]["step"] != self.counters.steps:
                        self._record_eval()
                    self._save_checkpoint(self._checkpoint_state(finished=stop))   # the final weights
        except DivergedError as err:
            self._record_failure("diverged", str(err))
            raise
        except Exception as err:
            self._record_failure("failed", f"{type(err).__name__}: {err}")
            raise
        summary = self.summary()
        self.recorder.write_summary(summary)
        self.recorder.close()
        return summary

    def _record_failure(self, status: str, message: str) -> None:
        self.status = status
        try:
            self.recorder.write_summary({**self.summary(), "error": message})
        finally:
            self.recorder.close()

    def _loop(self, max_epochs: float | None, max_time: float | None, eval_every: int) -> str:
        epoch = self.next_epoch
        next_eval = (math.floor(self.progress() / eval_every) + 1) * eval_every
        while True:
            if max_epochs is not None and self.progress() >= max_epochs - 1e-9:
                return "completed"
            if PREEMPTION.requested:           # at an epoch boundary (checkpointed by _after_epoch)
                return "preempted"
            torch.manual_seed(derive_seed(int(self.cfg.seed), epoch, 3))   # augmentation + dropout
            lr_epoch = epoch if self.unit == "considered" else math.floor(self.progress())
            self._set_lr(lr_epoch)
            bar = tqdm(total=self.n_train, desc=f"epoch {epoch}", leave=False,
                       disable=not self.cfg.train.get("progress", True), unit="ex")
            self.timer.resume()
            stop = self._run_epoch(epoch, bar, max_epochs, max_time)
            self.timer.pause()
            bar.close()
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
                if PREEMPTION.requested:       # a step boundary: the partial epoch is redone on resume
                    return "preempted"
                bar.update(self.counters.considered - seen)
                seen = self.counters.considered
                if max_time is not None and self.timer.elapsed_train_s() >= max_time:
                    return "budget"
                if self.unit == "backpropped":
                    stop = self._backpropped_checks(max_epochs)
                    if stop:
                        return stop
        except _StopRequested:                 # preemption noticed inside the strategy loop
            return "preempted"
        except Exception as err:
            if not PREEMPTION.requested:
                raise
            # The same signal can take down DataLoader workers mid-fetch; the partial epoch is
            # dropped anyway, so this is a preemption, not a failure.
            log.warning("error while stopping for preemption (partial epoch dropped): %s: %s",
                        type(err).__name__, err)
            return "preempted"
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
            return "completed"
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
        if epoch % every == 0:
            self._boundary = None
            self._save_checkpoint(self._checkpoint_state())
        else:
            self._boundary = ckpt.to_plain(self._checkpoint_state(), clone=True)

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint_state(self, finished: str | None = None) -> dict:
        """Everything an exact resume needs, as tensors and plain types (weights_only-loadable).

        `finished` marks the final checkpoint of a run that ended (completed / budget): it holds the
        final weights and is never trained on from.
        """
        config = OmegaConf.to_container(self.cfg, resolve=True)
        iv = self._interval
        return {
            "format": ckpt.FORMAT_VERSION,
            "config_key": config_key(config), "seed": int(self.cfg.seed), "config": config,
            "finished": finished,
            # Data order, augmentation and dropout are re-seeded from (seed, epoch) at each epoch start
            # (TorchSource.permutation, derive_seed), so the epoch index is their whole state; torch's
            # global RNG state is saved as well, for safety. The learning rate is a pure function of the
            # epoch (lr_factor): there is no scheduler object to save.
            "next_epoch": int(self.next_epoch),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.state_dict(),   # history, stale table, tau, pending batch, generators
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": list(torch.cuda.get_rng_state_all()) if self.device.type == "cuda" else []},
            "counters": self.counters.snapshot(),
            "timer": self.timer.state_dict(),
            "history": [dict(row) for row in self.history],
            "interval": {"loss_sum": iv["loss_sum"], "noisy": iv["noisy"], "trained": int(iv["trained"]),
                         "considered": int(iv["considered"]), "kept": int(iv["kept"])},
            "nonfinite": bool(self._nonfinite),
            "wall_s": time.time() - self._wall_start,
        }

    def _save_checkpoint(self, state: dict) -> None:
        epoch = int(state["next_epoch"])
        ckpt.save_checkpoint(state, ckpt.checkpoint_path(self.output_dir),
                             before_rename=lambda: _test_pause("checkpoint_write", epoch))
        self.saved_epoch = epoch

    def resume(self, path: str | Path | None = None) -> int:
        """Restore a checkpoint (default: checkpoint.pt in the output directory); returns its epoch.

        Call before fit(). The checkpoint must come from the same config (config_key) and seed.
        """
        path = Path(path) if path is not None else ckpt.checkpoint_path(self.output_dir)
        state = ckpt.load_checkpoint(path)
        key = config_key(OmegaConf.to_container(self.cfg, resolve=True))
        if (state.get("config_key"), state.get("seed")) != (key, int(self.cfg.seed)):
            raise ConfigError(f"checkpoint '{path}' belongs to a different run (config_key {state.get('config_key')}, "
                              f"seed {state.get('seed')}; this run: config_key {key}, seed {int(self.cfg.seed)}); "
                              f"accepted: a checkpoint of this same run")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.strategy.load_state_dict(state["strategy"], self.device)
        self.counters.load(state["counters"])
        self.timer.load_state_dict(state["timer"])
        self.history = [dict(row) for row in state["history"]]
        self.next_epoch = int(state["next_epoch"])
        iv = state["interval"]
        self._interval = {"loss_sum": iv["loss_sum"].to(self.device), "noisy": iv["noisy"].to(self.device),
                          "trained": int(iv["trained"]), "considered": int(iv["considered"]),
                          "kept": int(iv["kept"])}
        self._nonfinite = torch.tensor(bool(state["nonfinite"]), device=self.device)
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and len(state["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self._wall_offset = float(state["wall_s"])
        self._finished = state.get("finished")
        self.saved_epoch = self.next_epoch
        return self.next_epoch

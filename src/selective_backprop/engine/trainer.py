"""The training loop: the strategy decides which examples, the trainer trains on them and records."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from selective_backprop.engine.records import RunRecorder, config_key
from selective_backprop.engine.source import TorchSource, derive_seed
from selective_backprop.engine.strategies import Context, Counters, TrainBatch, build_strategy
from selective_backprop.engine.timing import PhaseTimer
from selective_backprop.errors import ConfigError

log = logging.getLogger(__name__)
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


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
        self.source = TorchSource(self.data.train, self.device, int(cfg.seed), self.timer,
                                  int(tcfg.get("num_workers", 0)), bool(tcfg.get("channels_last", False)))
        self.n_train = len(self.source)
        self.ctx = Context(self.model, self.source, self.timer, self.counters, self.batch_size, self.device)
        x_test, y_test = self.data.test_arrays()
        self.test_x, self.test_y = self._normalise(x_test), y_test.to(self.device)
        self.noisy = None if self.data.noisy is None else self.data.noisy.to(self.device)
        self.recorder = RunRecorder(output_dir, bool(tcfg.get("tensorboard", True)))
        self.history: list[dict] = []
        self.next_epoch = 0
        self.status = "running"
        self._interval = self._fresh_interval()
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

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
        """Train until max_epochs or max_time_s; returns the summary (also written to summary.json)."""
        tcfg = self.cfg.train
        max_epochs = tcfg.get("max_epochs")
        max_time = tcfg.get("max_time_s")
        eval_every = int(tcfg.get("eval_every", 1))
        self._wall_start = time.time()
        self.recorder.start(self.history)
        self.recorder.write_summary(self.summary())
        try:
            stop = self._loop(max_epochs, max_time, eval_every)
            self.status = stop
            if not self.history or self.history[-1]["step"] != self.counters.steps:
                self._record_eval()
        except DivergedError as err:
            self.status = "diverged"
            self.recorder.write_summary({**self.summary(), "error": str(err)})
            self.recorder.close()
            raise
        summary = self.summary()
        self.recorder.write_summary(summary)
        self.recorder.close()
        return summary

    def _loop(self, max_epochs: float | None, max_time: float | None, eval_every: int) -> str:
        epoch = self.next_epoch
        next_eval = (math.floor(self.progress() / eval_every) + 1) * eval_every
        while True:
            if max_epochs is not None and self.progress() >= max_epochs - 1e-9:
                return "completed"
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
        try:
            while True:
                with self.timer.phase("select"):
                    batch = next(batches, None)
                if batch is None:
                    return None
                self.train_step(batch)
                bar.update(self.counters.considered - seen)
                seen = self.counters.considered
                if max_time is not None and self.timer.elapsed_train_s() >= max_time:
                    return "budget"
                if self.unit == "backpropped":
                    stop = self._backpropped_checks(max_epochs)
                    if stop:
                        return stop
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
        """Hook for end-of-epoch work (checkpointing)."""

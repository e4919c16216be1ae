"""Evaluation: the test set, the evaluation rows (metrics.jsonl) and the run's summary (summary.json).

`Evaluator` owns the test tensors, the training-loss interval since the last evaluation, the rows
evaluated so far (`rows`; a resumed run restores them) and builds the summary from them. Row fields:
docs/run_record.md. When the trainer evaluates: every train.eval_every epochs, or with
train.eval_every_cost on a fixed cost grid (`CostGrid`), so that every strategy is measured at the same
cost points.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

from selective_backprop.engine.control import DivergenceGuard
from selective_backprop.distributed import Dist
from selective_backprop.engine.hooks import Hooks
from selective_backprop.engine.progress import RunProgress
from selective_backprop.timing import load_average
from selective_backprop.record import Status, build_summary

log = logging.getLogger(__name__)


def normalise(x_uint8: torch.Tensor, mean: Any, std: Any, device: torch.device,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 NCHW images -> normalised float tensors on `device`."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x_uint8.float() / 255.0 - m) / s).to(device).contiguous(memory_format=memory_format)


class Evaluator:
    """Test error and loss after every eval_every epochs, the rows they make, and the summary."""

    def __init__(self, data: Any, device: torch.device, memory_format: torch.memory_format, dist: Dist,
                 progress: RunProgress, guard: DivergenceGuard, recorder: Any, hooks: Hooks,
                 batch_size: int = 1024):
        x_test, y_test = data.test_arrays()
        self.test_x = normalise(x_test, data.mean, data.std, device, memory_format)
        self.test_y = y_test.to(device)
        self.noisy = None if data.noisy is None else data.noisy.to(device)   # label-noise mask of the train set
        self.device, self.dist, self.progress, self.guard = device, dist, progress, guard
        self.recorder, self.hooks, self.batch_size = recorder, hooks, batch_size
        self.rows: list[dict] = []
        self.interval = self._fresh_interval(progress.counts())

    # -- the training interval since the last evaluation ----------------------------------------------
    def _fresh_interval(self, counts: dict) -> dict:
        zero = torch.zeros((), device=self.device)
        return {"loss_sum": zero.clone(), "trained": 0, "noisy": zero.clone(),
                "considered": counts["considered"], "kept": counts["kept"]}

    def note_step(self, losses: torch.Tensor, idx: torch.Tensor) -> None:
        """The detached per-example training losses of one step (and their dataset indices)."""
        self.interval["loss_sum"] += losses.sum()
        self.interval["trained"] += losses.shape[0]
        if self.noisy is not None:
            self.interval["noisy"] += self.noisy[idx].sum()

    def state_dict(self) -> dict:
        iv = self.interval
        return {"loss_sum": iv["loss_sum"], "noisy": iv["noisy"], "trained": int(iv["trained"]),
                "considered": int(iv["considered"]), "kept": int(iv["kept"])}

    def load_state_dict(self, iv: dict, rows: list[dict]) -> None:
        self.interval = {"loss_sum": iv["loss_sum"].to(self.device), "noisy": iv["noisy"].to(self.device),
                         "trained": int(iv["trained"]), "considered": int(iv["considered"]),
                         "kept": int(iv["kept"])}
        self.rows = [dict(row) for row in rows]

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        """(test error, test loss) over the whole test set: each rank takes every K-th chunk and the sums
        are all-reduced, so every rank gets the same numbers."""
        model.eval()
        sums = torch.zeros(2, device=self.device)           # errors, loss sum
        for chunk, i in enumerate(range(0, self.test_x.shape[0], self.batch_size)):
            if chunk % self.dist.world_size != self.dist.rank:
                continue
            logits = model(self.test_x[i:i + self.batch_size]).float()
            y = self.test_y[i:i + self.batch_size]
            sums[0] += (logits.argmax(1) != y).sum()
            sums[1] += F.cross_entropy(logits, y, reduction="sum")
        errors, loss_sum = self.dist.sum_(sums)
        n = self.test_x.shape[0]
        return float(errors) / n, float(loss_sum) / n

    def record(self, model: torch.nn.Module, lr: float, wall_s: float, budget: Any = None) -> dict:
        """Evaluate now and append the row (metrics.jsonl, TensorBoard); raises DivergedError first if
        the training or test loss diverged. `budget` (engine/budget.py Budget): with a cost or time
        budget, the row's `budget_fraction` is the share of it spent."""
        counters = self.progress.counters
        self.guard.check_training(counters.steps, self.progress.epochs())
        self.dist.broadcast_buffers(model)         # BatchNorm statistics: rank 0's, as DDP's forward uses
        with self.progress.timer.evaluating():
            error, test_loss = self.evaluate(model)
        counts = self.progress.counts()
        epochs = self.progress.epochs()
        self.guard.check_eval(error, test_loss, steps=counts["steps"], epochs=epochs,
                              backpropped=counts["backpropped"], earlier=self.rows)
        iv = self.interval
        n_trained = self.dist.sum_ints([iv["trained"]])[0]
        loss_total, noisy_total = self.dist.sum_floats([float(iv["loss_sum"]), float(iv["noisy"])])
        considered = counts["considered"] - iv["considered"]
        train_s, phase_s, eval_s = self.progress.times()
        row = {
            "epoch": round(epochs, 6), "step": counts["steps"],
            "examples_forwarded": counts["select_forwarded"] + counts["train_forwarded"],
            "examples_backpropped": counts["backpropped"], "examples_considered": counts["considered"],
            "cost": self.progress.weights.cost(counts["select_forwarded"], counts["backpropped"]),
            "train_s": train_s, "phase_s": phase_s, "eval_s": eval_s,
            "test_error": error, "test_loss": test_loss,
            "train_loss": loss_total / n_trained if n_trained else float("nan"),
            "lr": lr,
            "selected_fraction": (counts["kept"] - int(iv["kept"])) / considered if considered else 0.0,
            "wall_s": wall_s,
            "loadavg": _one_minute_load(),
        }
        fraction = None if budget is None else budget.fraction(row["cost"], train_s)
        if fraction is not None:
            row["budget_fraction"] = round(fraction, 6)
        if self.noisy is not None:
            row["selected_noisy_fraction"] = noisy_total / max(n_trained, 1)
        self.rows.append(row)
        self.recorder.log_eval(row)
        self.interval = self._fresh_interval(counts)
        self.hooks.pause("eval", int(round(row["epoch"])))
        log.info("epoch %.2f | test error %.4f | test loss %.4f | train %.1fs | backpropped %d | %s",
                 row["epoch"], error, test_loss, row["train_s"], row["examples_backpropped"],
                 " ".join(f"{k}={v:.1f}s" for k, v in row["phase_s"].items()))
        return row

    def last_step(self) -> int | None:
        return self.rows[-1]["step"] if self.rows else None

    # -- the summary ---------------------------------------------------------------------------------
    def summary(self, run: dict, status: Status, budget: dict, collective: bool = True) -> dict:
        """The summary.json payload; `run` holds the fixed fields (config, names, seed, strategy_params,
        devices). Data parallel it sums counters and takes the slowest rank's times (collectives: every
        rank calls it); `collective=False` gives this rank's own view, for a failure only it may have seen."""
        last = self.rows[-1] if self.rows else {}
        p = self.progress
        if collective:
            counts = p.counts()
            train_s, phase_s, _ = p.times()
        else:
            counts, train_s, phase_s = p.counters.snapshot(), p.timer.train_s, p.timer.phase_s()
        return build_summary(
            run["config"], status, dataset=run["dataset"], model=run["model"], strategy=run["strategy"],
            lr_schedule=run["lr_schedule"], seed=run["seed"], strategy_params=run["strategy_params"],
            final_test_error=last.get("test_error"),
            best_test_error=min((r["test_error"] for r in self.rows), default=None),
            train_s=train_s, epochs=round(p.epochs(), 6),
            steps=counts["steps"], examples_backpropped=counts["backpropped"],
            examples_forwarded=counts["select_forwarded"] + counts["train_forwarded"],
            cost=p.weights.cost(counts["select_forwarded"], counts["backpropped"]),
            budget=budget, phase_s=phase_s, torch_version=torch.__version__,
            device_name=run["device_name"], n_train=p.n_train, world_size=self.dist.world_size,
            timing=run["timing"])


# -- the test-set chunk (train.eval_batch_size) -----------------------------------------------------------
#: train.eval_batch_size=auto: a GPU is fastest on big chunks; a CPU on ones that stay in its caches (resnet8 on
#: 10 000 Fashion-MNIST images, one thread: 8.0 s at 1024, 3.0 s at 128, the same logits bit for bit)
AUTO_EVAL_BATCH = {"cpu": 128, "cuda": 1024}


def eval_batch_size(setting: Any, device: torch.device) -> int:
    """train.eval_batch_size: a number as given, or auto = AUTO_EVAL_BATCH for the device's type (1024
    for any other accelerator)."""
    if setting == "auto":
        return AUTO_EVAL_BATCH.get(torch.device(device).type, 1024)
    return int(setting)


def _one_minute_load() -> float | None:
    load = load_average()
    return None if load is None else load[0]


# -- the cost grid (train.eval_every_cost) ------------------------------------------------------------
class CostGrid:
    """Evaluation points at every multiple of `every` cost units: the run evaluates after the first
    training step whose cost reaches the next multiple (one evaluation if a step passes several)."""

    def __init__(self, every: float):
        self.every = float(every)
        self.next = 1          # the multiple of `every` the next evaluation waits for

    def due(self, cost: float) -> bool:
        return cost >= self.next * self.every

    def passed(self, cost: float) -> None:
        """An evaluation was made at `cost`: wait for the next multiple above it."""
        self.next = max(self.next + 1, math.floor(cost / self.every) + 1)

    def state_dict(self) -> dict:
        return {"every": self.every, "next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.next = int(state["next"])

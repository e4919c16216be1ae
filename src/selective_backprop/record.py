"""The run-record contract (docs/run_record.md), on the ground floor and free of torch.

A run directory holds ``metrics.jsonl`` (one JSON line per evaluation), ``summary.json`` (written
atomically), ``checkpoint.pt`` and ``tb/`` (TensorBoard). This module owns those names, the run
statuses, the phase names, the configuration key, the atomic writer, the one metrics reader and the
summary builder, and the cost model (forward-equivalent units from the record's counters), so the
writer (engine/writer.py), the reader (analysis/records.py), validation, the budgets, the entry point
and the scripts agree by construction.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = "run.lock"           # present while a process trains into the directory (engine/run_lock.py)
TB_DIR = "tb"

#: the timed phases of a training step, in display order (``phase_s`` in rows and summaries)
PHASES = ("data", "select_forward", "select", "train_forward", "backward", "optimizer")

#: ``metrics.jsonl`` fields that measure the machine rather than the run: a resumed or repeated run
#: reproduces every other field exactly (deterministic=true), these it does not
TIMING_FIELDS = ("train_s", "phase_s", "eval_s", "wall_s", "loadavg")

#: the keys of ``summary.json``'s ``timing`` object: the conditions the run's times were measured under
TIMING_CONDITIONS = ("loadavg_start", "loadavg_end", "cpu_s", "wall_s", "threads", "interop_threads",
                     "cpu_count", "host", "omp_num_threads")

# Config keys that do not change what a run computes: excluded from the configuration key
# (strategy._target_ follows from strategy.name; records written before it existed keep their key).
MACHINE_KEYS = ("seed", "device", "train.progress", "train.tensorboard", "train.num_workers",
                "train.checkpoint_every", "dataset.root", "dataset.download", "strategy._target_")

# Config keys added after run records existed, with the value that means "as before": at that value they
# are left out of the configuration key, so earlier records keep their config_key (and stay resumable).
ADDED_DEFAULTS: dict[str, Any] = {"train.eval_every_cost": None}

# Keys that do not change what a run computes but were hashed into earlier records' config_key: hashed at
# this fixed value whatever they are set to, so runs differing only there share a key and earlier records
# keep theirs. (train.eval_batch_size: how the test set is chunked for evaluation; its default was 1024.)
HASHED_AS: dict[str, Any] = {"train.eval_batch_size": 1024}
_ABSENT = object()


class Status(enum.StrEnum):
    """A run's ``summary.json`` status (str-valued: the JSON holds the plain word)."""

    RUNNING = "running"
    COMPLETED = "completed"      # trained to its configured end
    BUDGET = "budget"            # stopped by a time/cost budget (a normal end)
    PREEMPTED = "preempted"      # stopped by a signal at an epoch boundary; resumable
    DIVERGED = "diverged"        # NaN/inf loss or the divergence rule
    FAILED = "failed"            # any other error, or a run that ended without one optimizer step
    ABORTED = "aborted"          # stopped at once by a second SIGTERM/SIGINT; resumable from its checkpoint


#: statuses of a run that has ended normally (usable by the analysis, a finished resume target)
FINISHED = (Status.COMPLETED, Status.BUDGET)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` via a temp file + rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:          # a full disk, a signal: the old file stays, no temp file is left
        tmp.unlink(missing_ok=True)
        raise


def _parent(tree: dict, dotted: str) -> tuple[Any, str]:
    """The node holding a dotted key's leaf ({} where a parent is missing or not a mapping), and the leaf."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node, leaf


def config_key(config: dict) -> str:
    """Stable hash of the config without seed and machine-only keys: runs sharing it form a configuration.
    A key of ADDED_DEFAULTS at its default is left out too, so records made before it existed keep theirs;
    a key of HASHED_AS is hashed at its fixed value."""
    cleaned = json.loads(json.dumps(config))
    for dotted in (*MACHINE_KEYS, *ADDED_DEFAULTS):
        node, leaf = _parent(cleaned, dotted)
        if isinstance(node, dict) and (dotted in MACHINE_KEYS or node.get(leaf, _ABSENT) == ADDED_DEFAULTS[dotted]):
            node.pop(leaf, None)
    for dotted, value in HASHED_AS.items():
        node, leaf = _parent(cleaned, dotted)
        if isinstance(node, dict) and leaf in node:
            node[leaf] = value
    blob = json.dumps(cleaned, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` ([] when the file is absent). A partial (non-JSON) LAST line — a run
    killed mid-write — is dropped (logged at INFO); a non-JSON line before the last raises ValueError."""
    path = Path(path)
    if not path.exists():
        return []
    numbered = [(i, ln) for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ln.strip()]
    records: list[dict[str, Any]] = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if k == len(numbered) - 1:
                logger.info("%s: ignoring partial last line %d (%s)", path, lineno, exc)
                break
            raise ValueError(f"{path}: line {lineno} is not a JSON object: {exc}") from exc
        records.append(rec)
    return records


def build_summary(config: dict, status: Status | str, **fields: Any) -> dict[str, Any]:
    """The ``summary.json`` payload: `fields` plus the status, the resolved config and its config_key."""
    return {**fields, "status": str(Status(status)), "config": config, "config_key": config_key(config)}


def write_summary(run_dir: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` into `run_dir` atomically (sorted keys, indented); returns its path."""
    path = Path(run_dir) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path


# -- the cost axis (docs/run_record.md) ----------------------------------------------------------
DEFAULT_SELECT_FORWARD = 1.0     # train.cost.select_forward: units per selection-forwarded example
DEFAULT_TRAIN_EXAMPLE = 3.0      # train.cost.train_example: units per trained example (fwd + bwd)


@dataclass(frozen=True)
class CostWeights:
    """Forward-equivalent units per selection-forwarded example and per trained (fwd + bwd) example."""

    select_forward: float = DEFAULT_SELECT_FORWARD
    train_example: float = DEFAULT_TRAIN_EXAMPLE

    def cost(self, select_forwarded: int, backpropped: int) -> float:
        return self.select_forward * select_forwarded + self.train_example * backpropped


def cost_from_record(record: dict, weights: CostWeights = CostWeights()) -> float | None:
    """Cost of a metrics row or summary: select-forwarded = forwarded − backpropped (every trained
    example gets exactly one training forward). None when the counters are missing."""
    forwarded, backpropped = record.get("examples_forwarded"), record.get("examples_backpropped")
    if forwarded is None or backpropped is None:
        return None
    return weights.cost(int(forwarded) - int(backpropped), int(backpropped))


# -- the cost grid (train.eval_every_cost) ------------------------------------------------------------
EPOCH_COST = "epoch"      # train.eval_every_cost=epoch: one Traditional epoch's cost


def eval_cost_step(setting: Any, n_train: int, weights: CostWeights) -> float | None:
    """train.eval_every_cost in forward-equivalent units: None (evaluate on the epoch grid instead), a
    number as given, or `epoch` = n_train x train.cost.train_example (what a Traditional epoch costs)."""
    if setting is None:
        return None
    if setting == EPOCH_COST:
        return n_train * weights.train_example
    return float(setting)

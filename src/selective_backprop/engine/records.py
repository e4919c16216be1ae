"""The run record: metrics.jsonl (one line per evaluation), summary.json (atomic), tb/ event files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# Config keys that do not change what a run computes: excluded from the configuration key.
MACHINE_KEYS = ("seed", "device", "train.progress", "train.tensorboard", "train.num_workers",
                "train.checkpoint_every", "dataset.root", "dataset.download")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_key(config: dict) -> str:
    """Stable hash of the config without seed and machine-only keys: runs sharing it form a configuration."""
    cleaned = json.loads(json.dumps(config))
    for dotted in MACHINE_KEYS:
        node = cleaned
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    blob = json.dumps(cleaned, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a partial last line (from a killed run) is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class RunRecorder:
    """Writes the run record into `output_dir` (see docs/run_record.md)."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.summary_path = self.dir / "summary.json"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(self.dir / "tb"))

    def start(self, rows: list[dict]) -> None:
        """Begin metrics.jsonl with `rows` (the evaluations a resumed run already made)."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def log_eval(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._tb is not None:
            step = row["step"]
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, step)
            for phase, seconds in row["phase_s"].items():
                self._tb.add_scalar(f"phase_s/{phase}", seconds, step)
            self._tb.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

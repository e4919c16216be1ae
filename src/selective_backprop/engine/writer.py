"""Writes the run record (metrics.jsonl, summary.json, tb/); names and formats: selective_backprop.record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selective_backprop.record import METRICS_FILE, SUMMARY_FILE, TB_DIR, atomic_write_text, write_summary


class RunRecorder:
    """Writes the run record into `output_dir` (see docs/run_record.md)."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / METRICS_FILE
        self.summary_path = self.dir / SUMMARY_FILE
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(self.dir / TB_DIR))

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
        write_summary(self.dir, summary)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class NullRecorder:
    """The run record of a data-parallel rank r > 0: rank 0 writes it, the others write nothing."""

    def start(self, rows: list[dict]) -> None:
        pass

    def log_eval(self, row: dict) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

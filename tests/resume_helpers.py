"""What the resume tests share: a crash injected right after an epoch's checkpoint, and metrics rows
compared without the fields that differ run to run (record.TIMING_FIELDS)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from selective_backprop.engine.run_state import RunState
from selective_backprop.record import TIMING_FIELDS


def without_timing(rows: list[dict]) -> list[str]:
    """Rows as canonical JSON without the timing fields (NaN-safe comparison)."""
    return [json.dumps({k: v for k, v in r.items() if k not in TIMING_FIELDS}, sort_keys=True) for r in rows]


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def crash_after(epoch_to_crash: int):
    """A RunState.after_epoch that checkpoints epoch ``epoch_to_crash`` as usual, then raises."""
    original = RunState.after_epoch

    def after_epoch(self, trainer, epoch):
        original(self, trainer, epoch)
        if epoch == epoch_to_crash:
            raise RuntimeError("simulated crash")
    return after_epoch


def run_crashing(monkeypatch, start: Callable[[], object], epoch: int = 1) -> None:
    """Call ``start()`` (a training run) with a crash injected after ``epoch``; the crash must happen."""
    with monkeypatch.context() as m:
        m.setattr(RunState, "after_epoch", crash_after(epoch))
        with pytest.raises(RuntimeError, match="simulated crash"):
            start()


def wait_for_marker(proc: subprocess.Popen, marker: Path, point: str, log_path: Path, timeout_s: float) -> None:
    """Wait until a hooked CLI run (tests/hooked_train.py) writes ``marker`` at ``point``; fail the test,
    with the log's tail, if the process exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {point}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"never reached {point}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def signal_when_logged(cmd: list[str], cwd: Path, env: dict, log_path: Path, text: str,
                       sig: int = signal.SIGTERM, timeout_s: float = 300) -> tuple[int, str]:
    """Start ``cmd`` with its output in ``log_path``; once ``text`` appears there, send ``sig`` and wait.
    Returns the exit code and the log (the process is killed if still alive at the end)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while text not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(sig)
        rc = proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, log_path.read_text()

"""Cumulative per-phase timing (CUDA events on GPU, no per-batch host sync; perf_counter on CPU), and the
conditions a run's times were measured under (load average, CPU time against wall time, threads)."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import torch

from selective_backprop.record import PHASES, TIMING_CONDITIONS


def load_average() -> list[float] | None:
    """The system's 1-, 5- and 15-minute load averages (None where the platform has none)."""
    try:
        return [float(x) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class TimingConditions:
    """summary.json's `timing`: what the machine was doing while this process trained.

    `start()` and `stop()` bracket the training of this session (a resumed run: the last session only);
    `record()` before `stop()` spans up to now. `cpu_s` is this process's CPU time, user + system, all its
    threads (DataLoader worker processes not included; data parallel: rank 0's, the rank that writes the
    record); a one-thread run that had a core to itself shows cpu_s close to wall_s.
    """

    def __init__(self) -> None:
        self._start: tuple | None = None
        self._end: tuple | None = None

    @staticmethod
    def _now() -> tuple:
        return load_average(), time.process_time(), time.perf_counter()

    def start(self) -> None:
        self._start, self._end = self._now(), None

    def stop(self) -> None:
        self._end = self._now()

    def record(self) -> dict:
        start = self._start or self._now()
        end = self._end or self._now()
        values = (start[0], end[0], end[1] - start[1], end[2] - start[2], torch.get_num_threads(),
                  torch.get_num_interop_threads(), os.cpu_count(), socket.gethostname(),
                  os.environ.get("OMP_NUM_THREADS"))
        return dict(zip(TIMING_CONDITIONS, values, strict=True))


class PhaseTimer:
    """Attributes elapsed time to the innermost active phase.

    Every phase switch records a mark (a CUDA event or a perf_counter reading); `collect()` turns
    the marks into seconds, syncing once. Time outside any phase counts as 'other'. `train_s`
    covers the intervals between `resume()` and `pause()` (evaluation and checkpointing excluded).
    """

    MAX_PENDING_EVENTS = 4096
    KEEP_EVENTS = 1024

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals = {p: 0.0 for p in PHASES}
        self.totals["other"] = 0.0
        self.train_s = 0.0
        self.eval_s = 0.0
        self._stack: list[str] = []
        self._marks: list[tuple[object, str]] = []
        self._running_since: float | None = None

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _mark(self) -> None:
        self._marks.append((self._now(), self._stack[-1] if self._stack else "other"))
        if len(self._marks) >= (self.MAX_PENDING_EVENTS if self.cuda else 2):
            self._flush_marks(keep=self.KEEP_EVENTS if self.cuda else 1)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Attribute the time inside the block to `name` (nested phases take over their span)."""
        self._stack.append(name)
        self._mark()
        try:
            yield
        finally:
            self._stack.pop()
            self._mark()

    def resume(self) -> None:
        """Start counting training time."""
        self._running_since = time.perf_counter()
        self._marks = []
        self._mark()

    def pause(self) -> None:
        """Stop counting training time (before evaluation/checkpointing); syncs once on CUDA."""
        if self._running_since is None:
            return
        self._mark()
        self._flush_marks()
        self.train_s += time.perf_counter() - self._running_since
        self._running_since = None

    def _flush_marks(self, keep: int = 1) -> None:
        """Add up the intervals between marks, keeping the newest `keep` marks pending.

        On CUDA this waits only for the last mark it reads: with `keep` > 1 that event was recorded
        thousands of phase switches ago, so the device has long passed it.
        """
        done = self._marks[:len(self._marks) - keep + 1]
        if self.cuda and done:
            done[-1][0].synchronize()
        for (start, phase), (end, _) in zip(done, done[1:]):
            seconds = start.elapsed_time(end) / 1000.0 if self.cuda else end - start
            self.totals[phase] += seconds
        self._marks = self._marks[len(done) - 1:]

    def elapsed_train_s(self) -> float:
        """Training seconds so far, including the running interval (host clock, no sync)."""
        running = 0.0 if self._running_since is None else time.perf_counter() - self._running_since
        return self.train_s + running

    @contextlib.contextmanager
    def evaluating(self):
        """Pause training time and add the block's duration to eval_s."""
        was_running = self._running_since is not None
        self.pause()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.eval_s += time.perf_counter() - start
            if was_running:
                self.resume()

    def phase_s(self) -> dict[str, float]:
        return {p: self.totals[p] for p in PHASES}

    def state_dict(self) -> dict:
        return {"totals": dict(self.totals), "train_s": self.train_s, "eval_s": self.eval_s}

    def load_state_dict(self, state: dict) -> None:
        self.totals.update(state["totals"])
        self.train_s = float(state["train_s"])
        self.eval_s = float(state["eval_s"])

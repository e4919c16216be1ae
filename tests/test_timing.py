"""PhaseTimer attributes time to the innermost phase and excludes evaluation."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch

from selective_backprop.timing import PHASES, PhaseTimer, TimingConditions, load_average
from selective_backprop.record import TIMING_CONDITIONS


def test_nested_phases_and_eval_exclusion():
    t = PhaseTimer(torch.device("cpu"))
    t.resume()
    with t.phase("select"):
        time.sleep(0.04)
        with t.phase("select_forward"):
            time.sleep(0.08)
        with t.phase("data"):
            time.sleep(0.02)
    with t.evaluating():
        time.sleep(0.1)
    with t.phase("backward"):
        time.sleep(0.03)
    t.pause()
    assert t.totals["select"] == pytest.approx(0.04, abs=0.02)
    assert t.totals["select_forward"] == pytest.approx(0.08, abs=0.02)
    assert t.totals["data"] == pytest.approx(0.02, abs=0.02)
    assert t.totals["backward"] == pytest.approx(0.03, abs=0.02)
    assert t.eval_s == pytest.approx(0.1, abs=0.03)
    assert t.train_s == pytest.approx(0.17, abs=0.04)          # evaluation excluded
    assert sum(t.phase_s().values()) <= t.train_s
    assert set(t.phase_s()) == set(PHASES)


def test_state_round_trip():
    t = PhaseTimer(torch.device("cpu"))
    t.resume()
    with t.phase("optimizer"):
        time.sleep(0.01)
    t.pause()
    u = PhaseTimer(torch.device("cpu"))
    u.load_state_dict(t.state_dict())
    assert u.totals == t.totals and u.train_s == t.train_s


def test_timing_conditions_span_start_to_stop():
    """CPU time against wall time over the span: a sleep costs wall time and (almost) no CPU time; after
    stop() the record is frozen; the load averages are the system's (three floats each)."""
    c = TimingConditions()
    c.start()
    time.sleep(0.2)
    running = c.record()                     # before stop(): up to now
    assert running["wall_s"] >= 0.2 and running["cpu_s"] < 0.1
    deadline = time.perf_counter() + 0.1
    while time.perf_counter() < deadline:    # busy: CPU time accrues
        pass
    c.stop()
    first = c.record()
    time.sleep(0.05)
    assert c.record() == first               # frozen at stop()
    assert tuple(first) == TIMING_CONDITIONS
    assert first["wall_s"] >= 0.3 and running["cpu_s"] < first["cpu_s"] <= first["wall_s"]
    for key in ("loadavg_start", "loadavg_end"):
        assert len(first[key]) == 3 and all(isinstance(x, float) and x >= 0 for x in first[key])
    assert first["threads"] == torch.get_num_threads() and first["interop_threads"] == torch.get_num_interop_threads()
    assert first["cpu_count"] == os.cpu_count() and first["host"] == socket.gethostname()
    assert first["omp_num_threads"] == os.environ.get("OMP_NUM_THREADS")
    assert load_average() is not None and len(load_average()) == 3


def test_timing_conditions_without_a_load_average(monkeypatch):
    """Platforms without os.getloadavg: null load averages, the rest recorded."""
    def missing():
        raise OSError("no load average here")
    monkeypatch.setattr(os, "getloadavg", missing)
    c = TimingConditions()
    c.start()
    c.stop()
    record = c.record()
    assert record["loadavg_start"] is None and record["loadavg_end"] is None and record["wall_s"] >= 0

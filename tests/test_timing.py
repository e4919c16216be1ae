"""PhaseTimer attributes time to the innermost phase and excludes evaluation."""

from __future__ import annotations

import time

import pytest
import torch

from selective_backprop.timing import PHASES, PhaseTimer


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

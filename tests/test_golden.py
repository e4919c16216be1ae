"""Golden runs: short fixed-seed CPU runs of every strategy, compared bit for bit with recorded ones.

Each case trains a few epochs on 256 Fashion-MNIST examples (deterministic=true) through the real
Trainer and compares its metrics.jsonl, without the timing fields, with
tests/fixtures/golden/<case>.json by exact equality (floats included). The cases run in one fresh
process (tests/golden_worker.py) with portable CPU kernels pinned (PORTABLE_ENV: ATen's default kernels,
MKL's COMPATIBLE path, oneDNN and NNPACK off, one thread), so the records hold on every x86-64 CPU, not
only on the one that wrote them. A refactoring must leave them identical; a deliberate change of
behaviour refreshes them with

    SB_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py

(see tests/fixtures/README.md for when that is legitimate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selective_backprop.record import TIMING_FIELDS

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
REGEN = os.environ.get("SB_REGEN_GOLDEN") == "1"
WORKER = Path(__file__).resolve().parent / "golden_worker.py"
# set before torch loads: ATen's kernel level and MKL's code path are chosen then
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1"}

# metrics.jsonl fields that measure the machine (train_s, eval_s, wall_s, phase_s, loadavg: they vary run
# to run); everything else must be identical
TIMING = frozenset(TIMING_FIELDS)

BASE = ["dataset.subset=256", "dataset.test_subset=256", "train.batch_size=32", "train.max_epochs=3",
        "deterministic=true", "train.tensorboard=false"]

CASES = {
    "traditional": ["strategy=traditional"],
    "sb": ["strategy=sb"],
    "stale_sb": ["strategy=stale_sb"],
    "kath18": ["strategy=kath18"],
    # the gate opens (importance-sampled, reweighted batches) in this tiny run: τ learns from the
    # eval-mode scoring losses, peakier here than the training ones; with-replacement sampling (idiap's)
    "kath18_open_gate": ["strategy=kath18", "strategy.selectivity=0.9", "strategy.gate_every=step",
                         "strategy.tau_momentum=0.0", "strategy.reweight=true", "strategy.closed_tau=score",
                         "strategy.sampling=replacement"],
    "uniform": ["strategy=uniform"],
    "infobatch": ["strategy=infobatch"],
    "composer_sb": ["strategy=composer_sb"],
}


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def golden_runs(fmnist_root, tmp_path_factory) -> dict:
    """Every case, run once in a fresh process with the portable kernels: {"kernels", "torch", "cases"}."""
    out = tmp_path_factory.mktemp("golden") / "runs.json"
    proc = subprocess.run([sys.executable, str(WORKER), str(fmnist_root), str(out)], capture_output=True,
                          text=True, env={**os.environ, **PORTABLE_ENV}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_matches_its_golden_record(case, golden_runs):
    rows = golden_runs["cases"][case]
    path = GOLDEN / f"{case}.json"
    if REGEN:
        record = {"overrides": BASE + CASES[case], "torch": golden_runs["torch"],
                  "kernels": golden_runs["kernels"], "rows": rows}
        path.write_text(json.dumps(record, indent=1) + "\n")
    golden = json.loads(path.read_text())
    assert golden["overrides"] == BASE + CASES[case], f"{path.name} was recorded for other overrides"
    assert golden["kernels"] == golden_runs["kernels"], f"{path.name} was recorded with other kernels"
    assert len(rows) == len(golden["rows"])
    for got, want in zip(rows, golden["rows"]):
        assert got == want, (f"{case} epoch {want.get('epoch')} differs from {path.name} (recorded with torch "
                             f"{golden['torch']}, running {golden_runs['torch']})")


def test_the_worker_refuses_unpinned_kernels(fmnist_root, tmp_path):
    """Started without PORTABLE_ENV it says so and writes nothing (no record from machine-specific kernels)."""
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    out = tmp_path / "runs.json"
    proc = subprocess.run([sys.executable, str(WORKER), str(fmnist_root), str(out), "traditional"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "kernels not pinned" in proc.stderr and not out.exists()


def test_timing_fields_are_the_only_ones_dropped():
    """The filter drops exactly the timing fields of a metrics row (so a new field is compared)."""
    row = {"epoch": 1.0, "train_s": 0.5, "eval_s": 0.1, "wall_s": 2.0, "phase_s": {"data": 0.1},
           "test_error": 0.25, "cost": 96.0}
    assert untimed([row]) == [{"epoch": 1.0, "test_error": 0.25, "cost": 96.0}]


def test_every_strategy_has_a_golden_case():
    from selective_backprop.strategies import STRATEGIES
    covered = {ov.split("=", 1)[1] for case in CASES.values() for ov in case if ov.startswith("strategy=")}
    assert covered == set(STRATEGIES)
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)

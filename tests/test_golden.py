"""Golden runs: short fixed-seed CPU runs of every strategy, compared bit for bit with recorded ones.

Each case trains a few epochs on 256 Fashion-MNIST examples (deterministic=true) through the real
Trainer and compares its metrics.jsonl, without the timing fields, with
tests/fixtures/golden/<case>.json by exact equality (floats included). A refactoring must leave them
identical; a deliberate change of behaviour refreshes them with

    SB_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py

(see tests/fixtures/README.md for when that is legitimate).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from selective_backprop.record import TIMING_FIELDS

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
REGEN = os.environ.get("SB_REGEN_GOLDEN") == "1"

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


def run_case(tmp_path: Path, fmnist_root: Path, overrides: list[str], bundle) -> list[dict]:
    from selective_backprop.engine.trainer import Trainer
    cfg = tiny_config(fmnist_root, BASE + overrides)
    run_dir = tmp_path / "run"
    Trainer(cfg, str(run_dir), data_bundle=bundle).fit()
    return untimed([json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()])


@pytest.fixture(scope="module")
def golden_bundle(fmnist_root):
    from selective_backprop.data import build_data
    cfg = tiny_config(fmnist_root, BASE)
    return build_data(cfg.dataset, int(cfg.seed))


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_matches_its_golden_record(case, tmp_path, fmnist_root, golden_bundle):
    rows = run_case(tmp_path, fmnist_root, CASES[case], golden_bundle)
    path = GOLDEN / f"{case}.json"
    if REGEN:
        record = {"overrides": BASE + CASES[case], "torch": torch.__version__, "rows": rows}
        path.write_text(json.dumps(record, indent=1) + "\n")
    golden = json.loads(path.read_text())
    assert golden["overrides"] == BASE + CASES[case], f"{path.name} was recorded for other overrides"
    assert len(rows) == len(golden["rows"])
    for got, want in zip(rows, golden["rows"]):
        assert got == want, (f"{case} epoch {want.get('epoch')} differs from {path.name} (recorded with torch "
                             f"{golden['torch']}, running {torch.__version__})")


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

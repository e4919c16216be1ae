"""`scripts/demo.py --budgets` through its door: the error-vs-budget frontier at demo size (real data).

Every strategy trains to train.max_cost = f x C with a budget-fitted LR schedule and is evaluated once, at
its end; C (Traditional's full-schedule cost) is computed, and Traditional's f = 1 run checks it: it
stops after exactly the schedule's epochs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from resume_helpers import signal_when_logged

DEMO = [sys.executable, str(REPO / "scripts" / "demo.py")]
SUBSET, BATCH, EPOCHS = 256, 128, 10          # resnet8 width 8 on 256 examples, fashion_mnist_e10
FULL_COST = 3 * SUBSET * EPOCHS               # C: 3 units per trained example, every example every epoch
SHARES = {"1/4": 0.25, "1": 1.0}
STRATEGIES = ("traditional", "sb", "uniform")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _demo(out: Path, root: Path, options=(), overrides=()) -> subprocess.CompletedProcess:
    cmd = DEMO + ["--out", str(out), "--subset", str(SUBSET), "--test-subset", "256", "--width", "8", *options,
                  f"dataset.root={root}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _pts(a: float, b: float) -> str:
    return f"{100 * (a - b):+.2f} pts"


@pytest.fixture(scope="module")
def frontier(tmp_path_factory, fmnist_root):
    """One toy frontier (budgets 1/4 and 1, given unsorted) and a second run of the same command."""
    out = tmp_path_factory.mktemp("demo") / "frontier"
    first = _demo(out, fmnist_root, ["--budgets", "1,0.25"], ["train.diverge_factor=null"])
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    again = _demo(out, fmnist_root, ["--budgets", "1,0.25"], ["train.diverge_factor=null"])
    return out, first, again, stamps


def test_every_run_trains_to_its_budget_with_a_fitted_schedule(frontier):
    out, first, _, _ = frontier
    for label, share in SHARES.items():
        budget = share * FULL_COST
        for name in STRATEGIES:
            s = _summary(out / f"b{share:g}" / name)
            assert s["status"] == "budget", (label, name, s["status"])
            assert s["budget"]["max_cost"] == budget and s["budget"]["max_epochs"] is None
            assert s["config"]["lr_schedule"]["name"] == "budget_steps"
            assert s["config"]["lr_schedule"]["index"] == "budget"
            # the step that reached the budget trained a full batch (3 units per example, after any
            # selection forwards), so the cost before it was below the budget
            assert budget <= s["cost"] < budget + 3 * BATCH, (label, name, s["cost"])
            rows = [json.loads(line) for line in (out / f"b{share:g}" / name / "metrics.jsonl").read_text().splitlines()]
            assert len(rows) == 1 and rows[0]["step"] == s["steps"], rows      # one evaluation, at the end
            assert rows[0]["test_error"] == s["final_test_error"]
    trad = _summary(out / "b1" / "traditional")
    assert trad["cost"] == FULL_COST and trad["epochs"] == EPOCHS           # C is Traditional's schedule cost
    assert trad["steps"] == EPOCHS * SUBSET // BATCH
    assert _summary(out / "b0.25" / "traditional")["steps"] == FULL_COST // 4 // (3 * BATCH)


def test_the_verdict_table_csv_and_plot(frontier):
    out, first, _, _ = frontier
    lines = first.stdout.splitlines()
    verdict = lines[0]
    errors = {(label, name): _summary(out / f"b{share:g}" / name)["final_test_error"]
              for label, share in SHARES.items() for name in STRATEGIES}
    trad_part, uniform_part = verdict.split("; vs uniform: ")
    assert trad_part.startswith("SB vs Traditional: ") and "ONE seed" in uniform_part, verdict
    for label in SHARES:
        for part, other in ((trad_part, "traditional"), (uniform_part, "uniform")):
            diff = errors[label, "sb"] - errors[label, other]
            word = "behind" if diff > 0 else "ahead" if diff < 0 else "level"
            assert f"{word} at {label} ({_pts(errors[label, 'sb'], errors[label, other])})" in part, (label, verdict)
    assert (out / "frontier.md").read_text().splitlines()[0] == verdict
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and "strategy" not in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [(b, n) for b in SHARES for n in STRATEGIES]
    for r in rows:
        share = SHARES[r[0].strip()]
        s = _summary(out / f"b{share:g}" / r[1].strip())
        assert r[2].strip() == f"{100 * s['final_test_error']:.2f} %"
        assert r[5].strip() == f"{s['steps']:,}" and r[7].strip() == "budget"
    with open(out / "frontier.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(float(r["budget"]), r["strategy"]) for r in table] == [(s, n) for s in SHARES.values() for n in STRATEGIES]
    for r in table:
        s = _summary(out / f"b{float(r['budget']):g}" / r["strategy"])
        assert float(r["cost"]) == s["cost"] and int(r["steps"]) == s["steps"]
        assert float(r["final_test_error"]) == pytest.approx(s["final_test_error"])
        assert float(r["max_cost"]) == float(r["budget"]) * FULL_COST
    assert (out / "frontier.png").stat().st_size > 0
    assert f"Budget 1 = {FULL_COST:,} cost units: Traditional through fashion_mnist_e10" in first.stdout


def test_re_running_skips_the_finished_runs(frontier):
    out, first, again, stamps = frontier
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert again.stderr.count("nothing to do") == len(SHARES) * len(STRATEGIES), again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == stamps
    assert again.stdout.splitlines()[0] == first.stdout.splitlines()[0]


@pytest.mark.parametrize("value", ["0", "-1", "abc", "0.5,,1", "inf"])
def test_a_bad_budget_is_one_line_before_any_training(tmp_path, fmnist_root, value):
    out = tmp_path / "demo"
    proc = _demo(out, fmnist_root, [f"--budgets={value}"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("ERROR --budgets: "), proc.stderr
    assert not out.exists()


def test_shares_above_one_are_accepted_and_a_bad_config_stops_before_training(tmp_path, fmnist_root):
    """1.5 passes --budgets (more than Traditional's schedule); a bad strategy is refused before any run."""
    out = tmp_path / "demo"
    proc = _demo(out, fmnist_root, ["--budgets", "0.5,1.5", "--strategies", "traditional,sbb"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "strategy=sbb: no such option" in proc.stderr and "--budgets" not in proc.stderr, proc.stderr
    assert not list(out.rglob("summary.json"))


def test_diverged_runs_are_reported_in_the_line_and_the_table(tmp_path, fmnist_root):
    out = tmp_path / "demo"
    proc = _demo(out, fmnist_root, ["--budgets", "0.25"], ["optimizer.lr=1000"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    verdict = proc.stdout.splitlines()[0]
    assert verdict.startswith("SB vs Traditional: SB diverged at 1/4; vs uniform: SB diverged at 1/4"), verdict
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1/4 |")]
    assert len(rows) == 3 and all("| – |" in r and "diverged: " in r for r in rows), rows
    assert (out / "frontier.md").read_text().splitlines()[0] == verdict


def test_sigterm_preempts_the_run_in_progress(tmp_path, fmnist_root):
    out = tmp_path / "demo"
    log_path = tmp_path / "demo.log"
    cmd = DEMO + ["--out", str(out), "--subset", "2048", "--test-subset", "256", "--width", "8",
                  "--budgets", "0.5", f"dataset.root={fmnist_root}"]
    rc, text = signal_when_logged(cmd, REPO, _env(), log_path, "epoch 0 done")
    assert rc == 75, text[-3000:]
    assert "preempted by SIGTERM" in text and "Traceback" not in text
    assert _summary(out / "b0.5" / "traditional")["status"] == "preempted"
    assert not (out / "frontier.md").exists()


def test_make_demo_runs_the_frontier():
    proc = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "scripts/demo.py --budgets 0.25,0.5,1 --out outputs/demo" in proc.stdout, proc.stdout

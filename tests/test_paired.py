"""Paired speedups, error differences and the timing audit (analysis/paired.py, audit.py) on hand-made
records with hand-computed intervals, through the functions and through scripts/make_table1.py.

One point (fashion_mnist n1000 resnet8-w16, schedule e30), three seeds, evaluations at cost 100, 200,
300, 400. Each Traditional seed reaches its own final error × 1.1 at 300 and × 1.2 at 200:

    seed 0 [.40 .23 .21 .20] (targets .22 / .24)   seed 1 [.40 .25 .23 .22] (.242 / .264)
    seed 2 [.40 .20 .19 .18] (.198 / .216)

t(0.95, 2) = 2.919986 (90 % two-sided, three seeds).
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from selective_backprop.analysis.audit import timing_audit
from selective_backprop.analysis.paired import speedup_verdict, summarise
from selective_backprop.analysis.records import load_runs
from selective_backprop.analysis.stats import Interval
from selective_backprop.analysis.table1 import table1, table1_paired

from conftest import REPO
from runrecords import write_run

T2 = 2.919986
COSTS = [100, 200, 300, 400]
TRAD = {0: [.40, .23, .21, .20], 1: [.40, .25, .23, .22], 2: [.40, .20, .19, .18]}
# SB: seeds 0 and 1 reach x1.1 at 200 / 100 (1.5, 3.0); seed 2 never (min .21 > .198): at most 300/400
SB = {0: [.30, .22, .21, .21], 1: [.24, .23, .22, .22], 2: [.30, .25, .22, .21]}
# Stale-SB n=3: x1.1 at 100 / 100 / 200 (3, 3, 1.5): faster; x1.2 at 100 / 100 / 200 (2, 2, 1)
STALE = {0: [.22, .21, .21, .21], 1: [.24, .22, .22, .22], 2: [.25, .19, .19, .19]}
KATH = {s: [.50, .40, .30, .30] for s in range(3)}          # never: 300/400 and 200/400 on every seed
UNIFORM = {0: [.40, .30, .25, .23], 1: [.40, .30, .27, .25], 2: [.40, .30, .24, .23]}
CLEAN = {"loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.1, 1.0, 1.0], "cpu_s": 95.0, "wall_s": 100.0,
         "threads": 1, "interop_threads": 1, "cpu_count": 2, "host": "h", "omp_num_threads": "1"}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root, f"trad_s{seed}", "traditional", seed, COSTS, TRAD[seed], timing=CLEAN if seed == 0 else None)
        write_run(root, f"sb_s{seed}", "sb", seed, COSTS, SB[seed], params={"selectivity": 1 / 3})
        write_run(root, f"stale_s{seed}", "stale_sb", seed, COSTS, STALE[seed], params={"staleness": 3},
                  # seed 2 ran on an oversubscribed machine (load 3.5 on 2 cores): off the time axis
                  timing={**CLEAN, "loadavg_start": [3.4, 2, 2], "loadavg_end": [3.6, 2, 2]} if seed == 2 else None,
                  loadavg=3.5 if seed == 2 else None)
        # Kath18 seed 0 took twice the seconds per cost unit of every other run (an old record: no timing)
        write_run(root, f"kath_s{seed}", "kath18", seed, COSTS, KATH[seed], s_per_unit=0.02 if seed == 0 else 0.01)
        # uniform seed 1 got half a core with one thread (CPU starved)
        write_run(root, f"uniform_s{seed}", "uniform", seed, COSTS, UNIFORM[seed], params={"selectivity": 1 / 3},
                  timing={**CLEAN, "cpu_s": 50.0} if seed == 1 else None)
    return root


def _log_interval(ratios: list[float]) -> tuple[float, float, float]:
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    half = T2 * sd / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def test_hand_computed_speedups_with_unreached_seeds(runs: Path) -> None:
    df = table1_paired(load_runs(runs), axis="cost").set_index("config")
    sb, stale, kath, uniform = df.loc["SB"], df.loc["Stale-SB n=3"], df.loc["Kath18"], df.loc["Uniform"]
    # SB x1.1: 1.5, 3.0 and seed 2 at its optimistic bound 0.75: geometric mean 3.375^(1/3) = 1.5, logs
    # ln 1.5 ± ln 2: sd ln 2, half-width 2.919986 ln 2 / sqrt 3 = 1.1685453 -> [0.466, 4.826], an upper bound
    assert (sb["speedup_cost_1.1"], sb["speedup_cost_1.1_low"], sb["speedup_cost_1.1_high"]) == pytest.approx(
        (1.5, 1.5 * math.exp(-1.1685453), 1.5 * math.exp(1.1685453)), rel=1e-5)
    assert _log_interval([1.5, 3.0, 0.75]) == pytest.approx((1.5, 0.466228, 4.825963), rel=1e-5)
    assert (sb["reached_cost_1.1"], sb["verdict_cost_1.1"]) == ("2/3", "indistinguishable")
    # SB x1.2: 1.0, 2.0, 0.5 (seed 2 reaches .216 at 400): every seed reached, [0.311, 3.217]
    assert (sb["speedup_cost_1.2"], sb["speedup_cost_1.2_low"], sb["speedup_cost_1.2_high"]) == pytest.approx(
        (1.0, math.exp(-1.1685453), math.exp(1.1685453)), rel=1e-5)
    assert sb["reached_cost_1.2"] == "3/3" and sb["verdict_cost_1.2"] == "indistinguishable"
    # Stale-SB x1.1: 3, 3, 1.5: 13.5^(1/3) = 2.381102, logs sd 0.400189 -> [1.2128, 4.6750], faster
    assert (stale["speedup_cost_1.1"], stale["speedup_cost_1.1_low"], stale["speedup_cost_1.1_high"]) == \
        pytest.approx(_log_interval([3, 3, 1.5]), rel=1e-6)
    assert stale["speedup_cost_1.1"] == pytest.approx(2.381102, rel=1e-6)
    assert stale["speedup_cost_1.1_low"] == pytest.approx(1.212766, rel=1e-5) and stale["verdict_cost_1.1"] == "faster"
    # Kath18 never reaches either target: 0.75 and 0.5 on every seed (bounds with zero spread): slower
    assert (kath["speedup_cost_1.1"], kath["speedup_cost_1.1_high"], kath["reached_cost_1.1"]) == pytest.approx(
        (0.75, 0.75, "0/3"))
    assert kath["verdict_cost_1.1"] == "slower" and kath["verdict_cost_1.2"] == "slower"
    assert uniform["reached_cost_1.1"] == "0/3"          # its best .23 / .25 / .23 never reach .22 / .242 / .198


def test_hand_computed_error_differences_and_uniform_ratio(runs: Path) -> None:
    df = table1_paired(load_runs(runs), axis="cost").set_index("config")
    sb, uniform = df.loc["SB"], df.loc["Uniform"]
    # SB - Traditional: +1, 0, +3 points: mean 1.3333, sd 1.527525, half-width 2.919986 x 0.881917 = 2.575185
    assert (sb["error_vs_trad_pts"], sb["error_vs_trad_pts_low"], sb["error_vs_trad_pts_high"]) == pytest.approx(
        (4 / 3, 4 / 3 - 2.575185, 4 / 3 + 2.575185), rel=1e-6)
    assert sb["verdict_error_vs_trad"] == "indistinguishable" and sb["error_vs_trad_n"] == 3
    # uniform - Traditional: +3, +3, +5: mean 3.6667, sd 1.154701, half 1.946657 -> higher
    assert uniform["error_vs_trad_pts_low"] == pytest.approx(11 / 3 - 1.946657, rel=1e-6)
    assert uniform["verdict_error_vs_trad"] == "higher" and uniform["verdict_error_vs_uniform"] == ""
    # SB - uniform: -2, -3, -2: mean -2.3333, sd 0.57735, half 0.973329 -> lower
    assert (sb["error_vs_uniform_pts"], sb["error_vs_uniform_pts_high"]) == pytest.approx(
        (-7 / 3, -7 / 3 + 0.973329), rel=1e-6)
    assert sb["verdict_error_vs_uniform"] == "lower"
    # uniform's cost to each seed's x1.2 target over SB's: 400/200, 400/100; seed 2's uniform never gets
    # there: sqrt 8 over 2 of 3 seeds, half-width t(0.95, 1) ln 2 / 2 = 2.188180
    assert (sb["vs_uniform_cost_1.2"], sb["vs_uniform_cost_1.2_n"]) == (pytest.approx(math.sqrt(8)), "2/3")
    assert sb["vs_uniform_cost_1.2_low"] == pytest.approx(math.sqrt(8) * math.exp(-2.188180), rel=1e-5)
    # Traditional first reaches x1.1 at epoch 3 on every seed (300 of its 400 units), x1.2 at epoch 2
    assert (sb["trad_epoch_1.1"], sb["trad_cost_frac_1.1"], sb["trad_epoch_1.2_max"]) == (3.0, 0.75, 2.0)


def test_verdict_rule() -> None:
    above = Interval(1.5, 1.2, 1.9, 3)
    below = Interval(0.6, 0.4, 0.9, 3)
    assert speedup_verdict(above, 3, 3) == "faster"
    assert speedup_verdict(above, 2, 3) == "indistinguishable"       # an unreached seed: never "faster"
    assert speedup_verdict(below, 3, 3) == "slower" and speedup_verdict(below, 1, 3) == "slower"
    assert speedup_verdict(Interval(2.0, math.nan, math.nan, 1), 1, 1) == "indistinguishable"
    s = summarise([300, 300, 300], [200, 100, math.nan], [400, 400, 400])
    assert (s.reached, s.n) == (2, 3) and s.cell().startswith("≤1.50× [0.47, 4.83] 2/3")
    assert summarise([], [], []).cell() == "–"


@pytest.mark.parametrize("load, flagged", [(2.0, False), (2.1, False), (2.5, False), (2.6, True), (3.5, True)])
def test_all_cores_busy_with_the_runs_is_not_contention(tmp_path: Path, load: float, flagged: bool) -> None:
    """Two one-thread runs on 2 cores keep the load at ~2.05-2.1: not contended; above 1.25 x the
    cores (each task gets < 0.8 of a core) it is."""
    for seed in range(3):
        write_run(tmp_path / "runs", f"trad_s{seed}", "traditional", seed, COSTS, TRAD[seed],
                  timing={**CLEAN, "loadavg_start": [load] * 3, "loadavg_end": [load] * 3}, loadavg=load)
    audit = timing_audit(load_runs(tmp_path / "runs"))
    assert audit["load"].tolist() == pytest.approx([load] * 3)
    assert audit["flagged"].tolist() == [flagged] * 3
    assert all(("above 1.25 × its 2 cores" in r) == flagged for r in audit["reason"])


def test_timing_audit_flags_out_of_line_and_contended_runs(runs: Path) -> None:
    audit = timing_audit(load_runs(runs)).set_index("run_dir")
    flagged = {Path(d).name: r for d, r in audit[audit["flagged"]].iterrows()}
    assert sorted(flagged) == ["kath_s0", "stale_s2", "uniform_s1"]
    # Kath18 seed 0: 0.02 s per unit against the setup's median 0.01 (old record: judged by this alone)
    assert flagged["kath_s0"]["ratio"] == pytest.approx(2.0) and flagged["kath_s0"]["reason"].startswith("2.00×")
    assert flagged["stale_s2"]["load"] == pytest.approx(3.5) and "load 3.50 above 1.25 × its 2 cores" in flagged["stale_s2"]["reason"]
    assert "0.50 CPU s per wall s with 1 thread(s)" in flagged["uniform_s1"]["reason"]
    trad0 = audit.loc[str(runs / "trad_s0")]
    assert not trad0["flagged"] and trad0["cpu_use"] == pytest.approx(0.95) and trad0["load"] == pytest.approx(1.05)


def test_flagged_runs_leave_the_time_axis_only(runs: Path) -> None:
    rs = load_runs(runs)
    time = table1_paired(rs, axis="time").set_index("config")
    cost = table1_paired(rs, axis="cost").set_index("config")
    # Stale-SB without seed 2 (contended): 3.0 and 3.0 -> [3, 3], faster (2/2); cost keeps all three seeds
    assert time.loc["Stale-SB n=3", "reached_time_1.1"] == "2/2"
    assert time.loc["Stale-SB n=3", "speedup_time_1.1"] == pytest.approx(3.0)
    assert cost.loc["Stale-SB n=3", "reached_cost_1.1"] == "3/3"
    assert time.loc["Kath18", "reached_time_1.1"] == "0/2" and time.loc["Uniform", "reached_time_1.2"] == "1/2"
    assert [r["run_dir"].rsplit("/", 1)[-1] for r in time.attrs["flagged"]] == ["kath_s0", "stale_s2", "uniform_s1"]
    # the paper layout on the time axis takes Stale-SB's cleanly timed seeds
    t1 = table1(rs, axis="time").set_index("strategy")
    assert t1.loc["stale_sb", "speedup_1.1"] == pytest.approx(3.0) and t1.loc["stale_sb", "verdict_1.1"] == "faster"


def test_make_table1_writes_the_paired_views_and_the_audit(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table1.py"), str(runs), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paired = (out / "table1_paired.md").read_text()
    assert "| Stale-SB n=3 | 3 | 20.67 ± 1.53 % |" in paired and "3.00× [3.00, 3.00] 2/2 faster" in paired
    assert "3 of 15 runs flagged" in paired and "kath_s0` (kath18, fashion_mnist_e30, seed 0)" in paired
    assert ("first reaches its own ×1.1 at epoch 3.0 (3), 75 % of its cost (75 %); ×1.2 at epoch 2.0 (2), "
            "50 % of its cost (50 %)") in paired
    rows = {r["strategy"]: r for r in csv.DictReader((out / "table1.csv").open())}
    assert rows["stale_sb"]["reached_1.1"] == "2/2" and rows["sb"]["speedup_1.1"] == ""     # SB: seed 2 missed
    seeds = list(csv.DictReader((out / "table1_seeds.csv").open()))
    sb2 = [r for r in seeds if r["strategy"] == "sb" and r["seed"] == "2" and r["factor"] == "1.1"]
    assert len(sb2) == 1 and sb2[0]["reached"] == "False" and float(sb2[0]["speedup"]) == pytest.approx(0.75)
    audit = list(csv.DictReader((out / "timing_audit.csv").open()))
    assert len(audit) == 15 and sum(r["flagged"] == "True" for r in audit) == 3
    md = (out / "table1.md").read_text()
    assert "| fashion_mnist n1000 resnet8-w16 noaug | 20.00 % |" in md

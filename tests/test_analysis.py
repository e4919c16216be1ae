"""Reproduction-output layer: loader, Table 1, Pareto shares, figures, scripts, notebook.

Golden answers for the fixture run records are hand-computed in tests/fixtures/README.md.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from selective_backprop.analysis import figures, pareto, records, table1  # noqa: E402
from selective_backprop.analysis.records import load_runs, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
RUNS = FIXTURES / "runs"
EXPECTED = FIXTURES / "expected"
CIFAR = RUNS / "sweeps" / "2026-01-01" / "00-00-00"
FAILED_RUN = CIFAR / "11"
INCOMPLETE_RUN = CIFAR / "12"


@pytest.fixture(scope="module")
def runset() -> records.RunSet:
    return load_runs([RUNS])


def load_script(name: str):
    """Import scripts/<name> as a module (to call its ``main(argv)`` in-process)."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- loader

def test_loader_warns_once_about_failed_and_incomplete_runs(caplog):
    with caplog.at_level(logging.WARNING, logger="selective_backprop.analysis"):
        rs = load_runs([RUNS])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert f"{FAILED_RUN} (failed" in msg
    assert f"{INCOMPLETE_RUN} (incomplete" in msg
    assert "2 incomplete/failed" in msg
    usable = set(rs.runs["run_dir"])
    assert str(FAILED_RUN) not in usable and str(INCOMPLETE_RUN) not in usable
    assert not rs.evals["run_dir"].isin([str(FAILED_RUN), str(INCOMPLETE_RUN)]).any()
    assert len(rs.runs) == 18
    assert set(rs.skipped["status"]) == {"failed", "incomplete"}


def test_loader_frames(runset):
    runs, evals = runset.runs, runset.evals
    for col in ("run_dir", "status", "dataset", "strategy", "config_key", "seed",
                "lr_schedule", "label_noise", "final_test_error", "train_s",
                "selectivity", "staleness", "beta"):
        assert col in runs.columns, col
    assert set(runs["status"]) == {"completed", "budget"}
    stale = runs[runs["strategy"] == "stale_sb"].set_index("dataset")
    assert stale.loc["cifar10", "staleness"] == 3 and stale.loc["fashion_mnist", "staleness"] == 2
    assert sorted(runs["label_noise"].unique()) == [0.0, 0.1]
    assert {"run_dir", "config_key", "epoch", "step", "train_s", "test_error",
            "phase_select_forward", "phase_backward"} <= set(evals.columns)
    assert len(evals) == 11 * 5 + 7 * 4
    # two seeds of one configuration share its config_key
    assert runs.groupby("config_key")["seed"].nunique().max() == 2


def test_partial_last_metrics_line_is_tolerated(tmp_path):
    assert len(read_metrics(INCOMPLETE_RUN / "metrics.jsonl")) == 2
    run = tmp_path / "multirun" / "0"
    shutil.copytree(CIFAR / "0", run)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 6.0, "step": 23')  # killed mid-write
    rs = load_runs([tmp_path])
    assert len(rs.runs) == 1 and rs.skipped.empty
    assert len(rs.evals) == 5


def test_corrupt_metrics_line_before_the_last_skips_the_run(tmp_path, caplog):
    run = tmp_path / "0"
    shutil.copytree(CIFAR / "0", run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="selective_backprop.analysis"):
        rs = load_runs(tmp_path)
    assert len(rs.runs) == 0
    assert "corrupt" in caplog.text and str(run) in caplog.text


def test_seed_mean_curve(runset):
    curves = records.seed_mean_curves(runset)
    c = curves[curves["config_key"] == "cifar10-sb-step-s0.33"].sort_values("epoch")
    assert list(c["train_s"]) == [6.5, 13.0, 19.5, 26.0, 32.5]
    assert list(c["test_error"]) == [0.41, 0.265, 0.2325, 0.2125, 0.2025]


def test_grid_points_number_each_evaluation_on_its_cost_grid():
    """k for the evaluation made once the cost passed k x step; a last evaluation off the grid (it repeats
    the previous k) is the run's end, inf; NaN on the epoch grid."""
    assert records._grid_points([3060.0, 6030.0, 9010.0, 9500.0], 3000.0) == [1, 2, 3, math.inf]
    assert records._grid_points([3000.0, 6000.0, 9000.0], 3000.0) == [1, 2, 3]
    assert records._grid_points([0.0, 3010.0, 6030.0], 3000.0) == [0, 1, 2]
    assert all(math.isnan(p) for p in records._grid_points([3060.0, 6030.0], None))


def test_seed_mean_curve_on_a_cost_grid(tmp_path):
    """Runs evaluated on a cost grid (train.eval_every_cost=epoch: 1 000 examples x 3 = 3 000 units) reach
    each grid point at a different epoch per seed: the seeds align on the grid point, the curve's epoch is
    their mean, and a last evaluation off the grid (the budget ran out between points) is a point of its
    own. The Pareto script plots them (it failed on such records when seeds were aligned on epochs)."""
    from runrecords import write_run

    write_run(tmp_path, "sb0", "sb", 0, [3060, 6030, 9010, 9500], [0.5, 0.4, 0.3, 0.28],
              epochs=[1.2, 2.5, 3.7, 3.9], eval_every_cost="epoch")
    write_run(tmp_path, "sb1", "sb", 1, [3010, 6100, 9200, 9600], [0.6, 0.5, 0.2, 0.22],
              epochs=[1.1, 2.4, 3.9, 4.1], eval_every_cost="epoch")
    for seed in (0, 1):
        write_run(tmp_path, f"trad{seed}", "traditional", seed, [3000, 6000, 9000], [0.45, 0.35, 0.25],
                  eval_every_cost="epoch")
    rs = load_runs(tmp_path)
    sb = rs.evals[rs.evals["strategy"] == "sb"].sort_values(["seed", "eval_idx"])
    assert list(sb["grid_point"]) == [1, 2, 3, math.inf] * 2
    curves = records.seed_mean_curves(rs)
    c = curves[curves["strategy"] == "sb"]
    assert list(c["n_seeds"]) == [2] * 4
    assert list(c["epoch"]) == [1.15, 2.45, 3.8, 4.0]
    assert list(c["cost"]) == [3035, 6065, 9105, 9550]
    assert list(c["test_error"]) == pytest.approx([0.55, 0.45, 0.25, 0.25])
    assert list(curves[curves["strategy"] == "traditional"]["epoch"]) == [1.0, 2.0, 3.0]
    proc = run_script("plot_pareto.py", tmp_path, "--axis", "cost", "--out", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    share = {r["strategy"]: r["points"] for r in csv.DictReader((tmp_path / "p" / "pareto_share.csv").open())}
    assert set(share) == {"traditional", "sb"}


def test_time_to_target_is_first_evaluation_at_or_below():
    ev = pd.DataFrame({"eval_idx": [0, 1, 2, 3], "train_s": [1.0, 2.0, 3.0, 4.0],
                       "test_error": [0.5, 0.28, 0.2, 0.1]})
    assert table1.time_to_target(ev, 0.2 * 1.4) == 2.0  # 0.28 vs 0.27999999999999997
    assert table1.time_to_target(ev, 0.2) == 3.0
    assert pd.isna(table1.time_to_target(ev, 0.05))


# ---------------------------------------------------------------- Table 1

def test_table1_golden(runset, tmp_path):
    df = table1.table1(runset)
    expected = (EXPECTED / "table1.csv").read_text(encoding="utf-8")
    assert table1.table1_csv(df) == expected
    paths = table1.write_table1(df, tmp_path / "new" / "dir")
    assert paths["csv"].read_bytes() == (EXPECTED / "table1.csv").read_bytes()


def test_make_table1_script(tmp_path):
    out = tmp_path / "t1"
    proc = run_script("make_table1.py", RUNS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "table1.csv").read_bytes() == (EXPECTED / "table1.csv").read_bytes()
    md = (out / "table1.md").read_text(encoding="utf-8")
    tex = (out / "table1.tex").read_text(encoding="utf-8")
    # stale_sb on cifar10 never reaches x1.1 / x1.2 (seed 0 against its own Traditional): "–"; Kath18 is
    # flagged by the timing audit: no pair on the time axis ("n/a"); SB's cells name the configuration
    # (the setup has two schedules: each cell names its configuration's)
    assert ("| 1.76 (s=0.33, step) / 2.08 (s=0.5, step) / 1.88 (s=0.5, step)× | – / – / 2.50 (step)× | "
            "n/a / n/a / n/a× |") in md
    assert "– / – / 2.50 (step)$\\times$" in tex
    assert "\\begin{tabular}" in tex and "fashion\\_mnist" in tex
    assert "| cifar10 full wrn_28_10 noaug | 21.50 % (accelerated), 20.00 % (step) |" in md
    assert "| cifar10 full wrn_28_10 noaug |" in proc.stdout  # the markdown table is printed
    assert "90 % Student-t interval on the log ratios" in md
    # Traditional's first reach of each target beside the table, per schedule
    assert ("- cifar10 full wrn_28_10 step noaug (2 seeds, final error 20.00 %): ×1.1 at epoch 5.0 (5), "
            "100 % of its cost (100 %); ×1.2 at epoch 4.5 (4–5), 90 % of its cost (80–100 %)") in md
    assert "4 of 16 runs flagged" in md and "00-00-00/9` (kath18, step, seed 0): 1.73×" in md
    paired = (out / "table1_paired.md").read_text(encoding="utf-8")
    # tests/fixtures/README.md: differences +1.5 / -1.0 points; ratios 50/24, 42/21 and 30/18, 22/14
    assert "| SB s=0.33 | 2 | 20.25 ± 0.35 % | +0.25 [-7.64, +8.14] indistinguishable | " \
           "1.76× [1.25, 2.48] 2/2 faster | 2.04× [1.79, 2.32] 2/2 faster | 1.62× [1.34, 1.95] 2/2 faster |" in paired
    seeds = list(csv.DictReader((out / "table1_seeds.csv").open()))
    assert len(seeds) == 3 * (2 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1)      # factors x paired (config, seed)
    flagged = [Path(r["run_dir"]).relative_to(RUNS / "sweeps").as_posix()
               for r in csv.DictReader((out / "timing_audit.csv").open()) if r["flagged"] == "True"]
    assert flagged == ["2026-01-01/00-00-00/6", "2026-01-01/00-00-00/7", "2026-01-01/00-00-00/9",
                       "2026-01-02/00-00-00/4"]
    # the skipped runs are reported by the script too
    assert str(Path("sweeps") / "2026-01-01" / "00-00-00" / "11") in proc.stderr


# ---------------------------------------------------------------- Pareto

def test_pareto_share_golden(runset):
    share = pareto.pareto_share(pareto.pareto_points(runset))
    assert pareto.pareto_share_csv(share) == (EXPECTED / "pareto_share.csv").read_text(
        encoding="utf-8")


def test_plot_pareto_script(tmp_path):
    out = tmp_path / "pareto"
    proc = run_script("plot_pareto.py", RUNS, "--out", out, "--keep-flagged")
    assert proc.returncode == 0, proc.stderr
    assert (out / "pareto_share.csv").read_bytes() == (EXPECTED / "pareto_share.csv").read_bytes()
    for ds in ("cifar10", "fashion_mnist"):
        for ext in ("png", "pdf"):
            assert (out / f"pareto_{ds}.{ext}").stat().st_size > 1000
    # seed by seed (fashion_mnist: only seed 0 has a Traditional run): stale 8 .19, SB 10 .18, stale 16
    # .145, SB 20 .13, stale 24 .118, SB 30 .105, SB 40 .10 -> SB 4/7, Stale-SB 3/7, Traditional 0
    seeds = {(r["dataset"], r["strategy"]): r for r in csv.DictReader((out / "pareto_share_seeds.csv").open())}
    assert (seeds[("fashion_mnist", "sb")]["seeds"], seeds[("fashion_mnist", "sb")]["share"]) == ("1", "0.571429")
    assert seeds[("fashion_mnist", "traditional")]["share"] == "0.0" and seeds[("cifar10", "sb")]["seeds"] == "2"


def test_plot_pareto_leaves_flagged_runs_off_the_time_axis(tmp_path):
    """The timing audit flags SB accelerated and both Kath18 runs (tests/fixtures/README.md): without them
    cifar10's time frontier loses SB accelerated's seven points; the cost frontier keeps every run."""
    proc = run_script("plot_pareto.py", RUNS, "--out", tmp_path / "t")
    assert proc.returncode == 0, proc.stderr
    assert "left out of the time axis" in proc.stderr and "00-00-00/6 (0.79×" in proc.stderr
    share = list(csv.DictReader((tmp_path / "t" / "pareto_share.csv").open()))
    assert {r["strategy"] for r in share if r["dataset"] == "cifar10"} == {"traditional", "sb", "stale_sb", "uniform"}
    proc = run_script("plot_pareto.py", RUNS, "--out", tmp_path / "c", "--axis", "cost")
    assert proc.returncode == 0 and "left out" not in proc.stderr


def test_plot_pareto_says_when_the_audit_flags_every_run(tmp_path):
    """Every run contended (load 5 on 2 cores): the time axis has nothing left, one error line says so
    and how to go on; --keep-flagged and --axis cost both plot."""
    from runrecords import write_run

    timing = {"cpu_count": 2, "threads": 1, "cpu_s": 10.0, "wall_s": 10.0, "loadavg_start": 5.0,
              "loadavg_end": 5.0}
    for strategy in ("traditional", "sb"):
        write_run(tmp_path / "runs", f"{strategy}_s0", strategy, 0, [100.0, 200.0], [0.3, 0.2],
                  timing=timing, loadavg=5.0)
    proc = run_script("plot_pareto.py", tmp_path / "runs", "--out", tmp_path / "t")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "error: the timing audit flags every run on the time axis: nothing left to plot (--axis cost "
        "plots the cost axis; --keep-flagged plots the flagged runs anyway)")
    assert "load 5.00 above 1.25 × its 2 cores" in proc.stderr and not (tmp_path / "t").exists()
    for extra in (["--keep-flagged"], ["--axis", "cost"]):
        proc = run_script("plot_pareto.py", tmp_path / "runs", "--out", tmp_path / extra[-1], *extra)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / extra[-1] / "pareto_share.csv").exists()


# ---------------------------------------------------------------- figures

def test_phase_breakdown(runset):
    df = figures.phase_breakdown(runset, 1.2).set_index(["dataset", "strategy"])
    sb = df.loc[("cifar10", "sb")]
    assert sb["config_key"] == "cifar10-sb-step-s0.33" and sb["train_s"] == 19.5
    parts = sum(sb[k] for k in figures.PHASE_GROUPS)
    assert parts == pytest.approx(19.5)
    assert not df.loc[("fashion_mnist", "kath18"), "reached"]


def test_plot_figures_script(tmp_path):
    out = tmp_path / "figs"
    proc = run_script("plot_figures.py", RUNS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    for name in ("fig1", "fig6", "fig7", "fig11", "fig12", "fig13"):
        for ext in ("png", "pdf"):
            p = out / f"{name}.{ext}"
            assert p.exists() and p.stat().st_size > 1000, p


def test_absent_figure_is_skipped_with_a_note(tmp_path, caplog):
    only_cifar = load_runs([CIFAR])  # no label-noise runs
    with caplog.at_level(logging.INFO, logger="selective_backprop.analysis"):
        assert figures.make_figure("fig12", only_cifar) is None
        written = figures.write_figures(only_cifar, tmp_path, "fig12,fig10")
    assert "fig12 skipped" in caplog.text
    assert set(written) == {"fig1"}
    assert not (tmp_path / "fig12.png").exists()
    assert (tmp_path / "fig1.png").stat().st_size > 0


def test_unknown_figure_name_is_an_error(tmp_path, capsys):
    rc = load_script("plot_figures.py").main([str(RUNS), "--out", str(tmp_path), "--which", "fig99"])
    assert rc != 0
    assert capsys.readouterr().err.strip().startswith("error: unknown figure")


@pytest.mark.parametrize("script", ["make_table1.py", "plot_pareto.py", "plot_figures.py"])
def test_scripts_fail_cleanly_without_usable_runs(tmp_path, script, capsys):
    shutil.copytree(FAILED_RUN, tmp_path / "runs" / "11")
    rc = load_script(script).main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert rc != 0
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert err.strip().splitlines()[-1].startswith("error: no usable run records")


# ---------------------------------------------------------------- notebook

def test_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("SB_RESULTS_DIR", str(RUNS))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "explore_results.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stripped
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "18 usable runs" in text


def test_missing_config_key_groups_by_strategy_schedule_and_params(tmp_path):
    """Summaries without ``config_key`` and with a config that no longer tells the runs apart (only
    its dataset): the fallback must still separate strategies, lr schedules and strategy parameters
    (s = 0.33 vs 0.5), giving the same configurations as the real keys, and Table 1 still builds."""
    original = load_runs(CIFAR)
    shutil.copytree(CIFAR, tmp_path / "sweep")
    for path in (tmp_path / "sweep").glob("*/summary.json"):
        summary = json.loads(path.read_text())
        summary.pop("config_key", None)
        summary["config"] = {"dataset": summary["config"]["dataset"], "seed": summary["seed"]}
        path.write_text(json.dumps(summary))
    stripped = load_runs(tmp_path / "sweep")

    def partition(runs: pd.DataFrame) -> set[frozenset[str]]:
        names = runs["run_dir"].map(lambda d: Path(d).name)
        return {frozenset(group) for _, group in names.groupby(runs["config_key"])}

    assert len(stripped.runs) == len(original.runs) == 11
    assert partition(stripped.runs) == partition(original.runs)
    assert stripped.runs["config_key"].nunique() == original.runs["config_key"].nunique() == 8
    assert stripped.runs.groupby("config_key")["strategy"].nunique().max() == 1
    assert len(table1.table1(stripped)) == len(table1.table1(original))


# ---------------------------------------------------------------- axes: time / time_eval / cost

def _toy_run(folder: Path, strategy: str, schedule: str, rows: list[tuple], with_cost: bool = False) -> None:
    """A run record with metrics rows (forwarded, backpropped, train_s, eval_s, test_error); no
    ``cost`` field unless ``with_cost`` (records made before it existed)."""
    folder.mkdir(parents=True)
    lines = []
    for i, (fwd, bp, train_s, eval_s, err) in enumerate(rows, 1):
        row = {"epoch": float(i), "step": i, "examples_forwarded": fwd, "examples_backpropped": bp,
               "train_s": train_s, "eval_s": eval_s, "test_error": err, "phase_s": {}}
        if with_cost:
            row["cost"] = (fwd - bp) + 3 * bp
        lines.append(json.dumps(row))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    fwd, bp, train_s, _, err = rows[-1]
    summary = {"status": "completed", "dataset": "toy", "model": "m", "strategy": strategy,
               "lr_schedule": schedule, "seed": 0, "config_key": f"{strategy}-{schedule}",
               "final_test_error": err, "best_test_error": min(r[-1] for r in rows), "train_s": train_s,
               "examples_forwarded": fwd, "examples_backpropped": bp, "config": {"dataset": {"name": "toy"}}}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def toy_runs(tmp_path) -> Path:
    """Traditional (cost 300/epoch, with `cost`), SB sched1 (select 100 + 40 trained per epoch: cost
    220/epoch, computed from the counters; slow in seconds), SB sched2 (reaches 0.2 in one epoch)."""
    root = tmp_path / "toy"
    _toy_run(root / "trad", "traditional", "toy_sched1",
             [(100, 100, 10.0, 1.0, 0.5), (200, 200, 20.0, 2.0, 0.2)], with_cost=True)
    _toy_run(root / "sb1", "sb", "toy_sched1",
             [(140, 40, 12.0, 1.0, 0.3), (280, 80, 24.0, 2.0, 0.21), (420, 120, 36.0, 3.0, 0.19)])
    _toy_run(root / "sb2", "sb", "toy_sched2", [(140, 40, 5.0, 1.0, 0.2)])
    return root


def test_cost_is_computed_for_older_records(toy_runs):
    rs = load_runs([toy_runs])
    sb = rs.evals[rs.evals["run_dir"] == str(toy_runs / "sb1")]
    assert list(sb["cost"]) == [220.0, 440.0, 660.0]          # (fwd - bp) + 3 bp
    assert list(sb["train_eval_s"]) == [13.0, 26.0, 39.0]
    runs = rs.runs.set_index("strategy")
    assert runs.loc["traditional", "cost"] == 600.0 and runs.loc["traditional", "train_eval_s"] == 22.0


@pytest.mark.parametrize("axis, expected", [
    ("time", 20 / 24), ("time_eval", 22 / 26), ("cost", 600 / 440)])
def test_table1_axes_sched1(toy_runs, axis, expected):
    """Targets 0.22 / 0.24 / 0.28: Traditional reaches all at epoch 2, SB sched1 at epoch 2 too."""
    df = table1.table1(load_runs([toy_runs]), axis=axis, schedules=["sched1"])
    assert list(df["strategy"]) == ["sb"]
    assert [df[table1.speedup_column(f)].iloc[0] for f in table1.TARGET_FACTORS] == pytest.approx([expected] * 3)


def test_table1_compares_within_a_schedule(toy_runs, caplog):
    """SB sched2 reaches 0.2 in one epoch, but there is no Traditional run on sched2: it is never compared
    with Traditional on sched1 (it is left out, named in a warning); the SB row is SB sched1's."""
    rs = load_runs([toy_runs])
    with caplog.at_level(logging.WARNING):
        df = table1.table1(rs, axis="cost")
    assert df["speedup_1.1"].iloc[0] == pytest.approx(600 / 440)
    assert df["lr_schedule_1.1"].iloc[0] == "toy_sched1" and df["reached_1.1"].iloc[0] == "1/1"
    assert "no usable Traditional run at toy full m toy_sched2 noaug" in caplog.text
    configs = table1.config_times(rs).set_index("config_key")
    assert configs.loc["sb-toy_sched1", ["train_s_1.1", "train_eval_s_1.1", "cost_1.1"]].tolist() == [24, 26, 440]
    with pytest.raises(ValueError, match="axis 'steps'"):
        table1.table1(rs, axis="steps")


def test_pareto_on_the_cost_axis(toy_runs):
    """Time: Trad 10 (.5) on, SB 12 (.3) on, Trad 20 (.2) on, SB 24 (.21) off, SB 36 (.19) on.
    Cost: SB 220 (.3) on, Trad 300 off, SB 440 (.21) on, Trad 600 (.2) on, SB 660 (.19) on."""
    rs = load_runs([toy_runs])
    for axis, shares in (("time", {"traditional": 2, "sb": 2}), ("cost", {"traditional": 1, "sb": 3})):
        share = pareto.pareto_share(pareto.pareto_points(rs, axis=axis, schedules=["sched1"]))
        assert dict(zip(share["strategy"], share["points"])) == shares, axis
    assert "cost" in pareto.pareto_points(rs, axis="cost").columns


def test_scripts_take_axis_and_schedules(toy_runs, tmp_path):
    proc = run_script("make_table1.py", toy_runs, "--out", tmp_path / "t1", "--axis", "cost",
                      "--schedules", "sched1")
    assert proc.returncode == 0, proc.stderr
    assert "Speedup in cost (forward-equivalent units)" in (tmp_path / "t1" / "table1.md").read_text()
    rows = list(csv.DictReader((tmp_path / "t1" / "table1.csv").open()))
    assert float(rows[0]["speedup_1.1"]) == pytest.approx(600 / 440, abs=1e-6)
    configs = list(csv.DictReader((tmp_path / "t1" / "table1_configs.csv").open()))
    assert {r["config_key"] for r in configs} == {"traditional-toy_sched1", "sb-toy_sched1"}
    assert {r["config_key"]: float(r["train_eval_s_1.1"]) for r in configs} == {
        "traditional-toy_sched1": 22.0, "sb-toy_sched1": 26.0}
    proc = run_script("plot_pareto.py", toy_runs, "--out", tmp_path / "p", "--axis", "cost")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p" / "pareto_toy.png").stat().st_size > 1000

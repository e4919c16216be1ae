"""Reproduction-output layer: loader, Table 1, Pareto shares, figures, scripts, notebook.

Golden answers for the fixture run records are hand-computed in tests/fixtures/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import logging
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
    # stale_sb on cifar10 never reaches ×1.1: "–" in the first slot
    assert "| – / 1.80 / 1.50× |" in md
    assert "– / 1.80 / 1.50$\\times$" in tex
    assert "\\begin{tabular}" in tex and "fashion\\_mnist" in tex
    assert "| cifar10 | 20.00 % |" in md
    assert "| cifar10 |" in proc.stdout  # the markdown table is printed
    # the skipped runs are reported by the script too
    assert str(Path("sweeps") / "2026-01-01" / "00-00-00" / "11") in proc.stderr


# ---------------------------------------------------------------- Pareto

def test_pareto_share_golden(runset):
    share = pareto.pareto_share(pareto.pareto_points(runset))
    assert pareto.pareto_share_csv(share) == (EXPECTED / "pareto_share.csv").read_text(
        encoding="utf-8")


def test_plot_pareto_script(tmp_path):
    out = tmp_path / "pareto"
    proc = run_script("plot_pareto.py", RUNS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "pareto_share.csv").read_bytes() == (EXPECTED / "pareto_share.csv").read_bytes()
    for ds in ("cifar10", "fashion_mnist"):
        for ext in ("png", "pdf"):
            assert (out / f"pareto_{ds}.{ext}").stat().st_size > 1000


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

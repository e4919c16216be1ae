"""The analysis counts what is there (through the scripts' command lines): copies of a run are counted
once, a run without evaluations is left out with a warning, setups are never pooled, and collect_runs.py
refuses a destination that would put copies beside their originals."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from runrecords import write_run

COSTS = [100, 200, 300]
TRAD = {0: [.40, .22, .20], 1: [.40, .25, .22]}     # x1.1 targets .22 / .242, reached at 200
SB = {0: [.30, .21, .21], 1: [.40, .24, .23]}       # reach them at 200 / 200: speedup 1.0


def _script(name: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _sweep(root: Path, subset: int = 1000) -> Path:
    for seed in (0, 1):
        write_run(root, f"trad_s{seed}", "traditional", seed, COSTS, TRAD[seed], subset=subset)
        write_run(root, f"sb_s{seed}", "sb", seed, COSTS, SB[seed], params={"selectivity": 1 / 3}, subset=subset)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_collect_runs_refuses_the_source_itself_and_a_folder_inside_it(tmp_path: Path) -> None:
    src = _sweep(tmp_path / "a")
    for dest in (src, src / "sub", tmp_path):
        proc = _script("collect_runs.py", src, dest)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("ERROR DEST:"), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (src / "sub").exists()
    proc = _script("collect_runs.py", src, tmp_path / "b")
    assert proc.returncode == 0 and len(list((tmp_path / "b").rglob("summary.json"))) == 4


def test_copies_read_together_count_each_seed_once(tmp_path: Path) -> None:
    src = _sweep(tmp_path / "a")
    assert _script("collect_runs.py", src, tmp_path / "copy").returncode == 0
    out = tmp_path / "t1"
    proc = _script("make_table1.py", src, tmp_path / "copy", "--out", out, "--axis", "cost")
    assert proc.returncode == 0, proc.stderr
    sb = _rows(out / "table1_paired.csv")[0]
    assert sb["n_seeds"] == "2" and sb["trad_seeds"] == "2" and sb["reached_cost_1.1"] == "2/2"
    assert "left out 4 duplicate run record(s)" in proc.stderr
    assert f"{tmp_path / 'copy' / 'sb_s0'} (same configuration and seed as {src / 'sb_s0'}, kept)" in proc.stderr


def test_an_old_format_copy_is_counted_once(tmp_path: Path) -> None:
    """A copy without config_key (its fallback key differs) and without cost fields is still the same run."""
    root = _sweep(tmp_path / "runs")
    write_run(root / "old", "sb_s0", "sb", 0, COSTS, SB[0], params={"selectivity": 1 / 3}, old_format=True)
    write_run(root / "old", "trad_s1", "traditional", 1, COSTS, TRAD[1], old_format=True)
    out = tmp_path / "cmp"
    proc = _script("compare_strategies.py", root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    rows = {r["config"]: r for r in _rows(out / "comparison.csv")}
    assert list(rows) == ["Traditional", "SB"]
    assert rows["Traditional"]["n_seeds"] == "2" and rows["SB"]["n_seeds"] == "2"
    assert rows["SB"]["reached_cost_1.1"] == "2/2"
    assert "left out 2 duplicate run record(s)" in proc.stderr
    assert (f"{root / 'old' / 'sb_s0'} (same strategy, seed, steps and test-error curve as {root / 'sb_s0'}, "
            "kept)") in proc.stderr


def test_a_finished_run_without_metrics_is_left_out_with_a_warning(tmp_path: Path) -> None:
    root = _sweep(tmp_path / "runs")
    write_run(root, "sb_s2", "sb", 2, COSTS, [.3, .2, .1], params={"selectivity": 1 / 3})
    write_run(root, "trad_s2", "traditional", 2, COSTS, [.3, .2, .1])
    (root / "sb_s2" / "metrics.jsonl").unlink()
    out = tmp_path / "t1"
    proc = _script("make_table1.py", root, "--out", out, "--axis", "cost")
    assert proc.returncode == 0, proc.stderr
    assert f"{root / 'sb_s2'} (incomplete: status completed, but no metrics.jsonl)" in proc.stderr
    sb = _rows(out / "table1_paired.csv")[0]
    assert sb["n_seeds"] == "2" and sb["reached_cost_1.1"] == "2/2"      # not "2/3": the seed is not there


@pytest.mark.parametrize("script", ["make_table1.py", "compare_strategies.py"])
def test_setups_are_never_pooled(tmp_path: Path, script: str) -> None:
    """Subsets of 1000 and 512 images: two setups, each compared with its own Traditional runs."""
    root = tmp_path / "runs"
    _sweep(root / "n1000", 1000)
    write_run(root / "n512", "trad_s0", "traditional", 0, COSTS, [.5, .45, .40], subset=512)
    write_run(root / "n512", "sb_s0", "sb", 0, COSTS, [.5, .42, .41], params={"selectivity": 1 / 3}, subset=512)
    out = tmp_path / "out"
    proc = _script(script, root, "--out", out, *(["--axis", "cost"] if script == "make_table1.py" else []))
    assert proc.returncode == 0, proc.stderr
    if script == "make_table1.py":
        rows = {r["setup"]: r for r in _rows(out / "table1.csv")}
        assert set(rows) == {"fashion_mnist n1000 resnet8-w16 noaug", "fashion_mnist n512 resnet8-w16 noaug"}
        assert rows["fashion_mnist n512 resnet8-w16 noaug"]["reached_1.1"] == "1/1"      # .42 <= .44 at 200
        assert rows["fashion_mnist n1000 resnet8-w16 noaug"]["reached_1.1"] == "2/2"
        md = (out / "table1.md").read_text()
        assert "| fashion_mnist n512 resnet8-w16 noaug | 40.00 % |" in md
    else:
        rows = _rows(out / "comparison.csv")
        assert [(r["point"].split()[1], r["config"], r["n_seeds"]) for r in rows] == [
            ("n1000", "Traditional", "2"), ("n1000", "SB", "2"), ("n512", "Traditional", "1"), ("n512", "SB", "1")]


def test_a_folder_copied_into_itself_reads_as_one_sweep(tmp_path: Path) -> None:
    """The copy collect_runs.py now refuses, made by hand: the analysis still counts each seed once."""
    src = _sweep(tmp_path / "a")
    shutil.copytree(src, tmp_path / "a-copy")
    shutil.move(str(tmp_path / "a-copy"), str(src / "sub"))
    out = tmp_path / "t1"
    proc = _script("make_table1.py", src, "--out", out, "--axis", "cost")
    assert proc.returncode == 0, proc.stderr
    assert _rows(out / "table1_paired.csv")[0]["n_seeds"] == "2"

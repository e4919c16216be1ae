"""scripts/gpu_check.py (make gpu-check) through make: its dry run on the CPU writes the report with
every check passed or skipped, and runs the single-GPU Table 1 (make reproduce-table1-1gpu) at toy size
on generated CIFAR10 files with equal cost budgets; without CUDA the real check is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402

EXPECTED = {"cuda_tests": "skipped", "models": "pass", "ddp_nccl": "skipped", "bench": "pass", "table1": "pass"}
PEERS = ("infobatch", "composer_sb")


def make_gpu_check(args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "gpu-check", f"PY={sys.executable}",
                           f"GPU_CHECK_ARGS={args}"], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run for the module: (process, report json, out dir, work dir)."""
    base = tmp_path_factory.mktemp("gpu_check")
    out, work = base / "out", base / "work"
    proc = make_gpu_check(f"--dry-run --out {out} --work {work}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "dry-run-cpu.json").read_text()), out, work


@pytest.mark.slow
def test_dry_run_reports_every_check(dry_run):
    proc, report, out, work = dry_run
    assert list(report["results"]) == list(gpu_check.CHECKS) == list(EXPECTED)
    assert {name: r["status"] for name, r in report["results"].items()} == EXPECTED
    assert report["ok"] and report["env"]["dry_run"] and report["env"]["gpus"] == 0
    assert all(r["figure"] and r["seconds"] > 0 for r in report["results"].values())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("gpu-check ")]
    assert [line.split()[1] for line in lines[:-1]] == list(EXPECTED)           # one line per check, in order
    assert [line.split()[2] for line in lines[:-1]] == [s.upper() for s in EXPECTED.values()]
    assert lines[-1].endswith("(0 failed)")
    text = (out / "dry-run-cpu.md").read_text()
    assert all(f"| {name} | {status} |" in text for name, status in EXPECTED.items())
    cuda = report["results"]["cuda_tests"]["details"]
    assert cuda["rc"] == 0 and cuda["tests"] >= 19 and cuda["skipped"] == cuda["tests"]   # collected, none ran
    assert sorted(p.name for p in out.iterdir()) == ["dry-run-cpu.json", "dry-run-cpu.md"]
    assert (work / "bench" / "cpu.md").exists() and (work / "logs" / "table1.log").exists()


@pytest.mark.slow
def test_dry_run_trains_every_paper_model_and_projects_the_sweep(dry_run):
    _, report, _, _ = dry_run
    rows = report["results"]["models"]["details"]["rows"]
    assert [r["model"] for r in rows] == list(gpu_check.MODELS)
    for r in rows:
        assert r["ok"] and r["status"] == {"traditional": "completed", "sb": "completed"}, r
        assert r["trad_img_s"] > 0 and r["sb_img_s"] > 0 and r["eval_img_s"] > 0
        assert 0 < r["kept_share"] < 1 and 0 < r["ideal"] < 1 and r["sb_ratio"] > 0
        assert r["peak_mib"] == {"traditional": None, "sb": None}                # a CUDA figure only
    proj = report["projection"]
    assert proj["runs"] == 48 and proj["epochs"] == 40 and proj["dry_run"]
    assert proj["gpu_hours"] == pytest.approx(48 * proj["hours_per_run"])


@pytest.mark.slow
def test_dry_run_table1_runs_the_one_gpu_sweep_at_equal_cost(dry_run):
    """make reproduce-table1-1gpu at toy size: every run of the grid (one seed) finished, Traditional
    trained through its (shortened) schedule, every other run borrowed its schedule's Traditional cost."""
    _, report, _, work = dry_run
    runs = work / "table1" / "runs"
    summaries = {p.parent.relative_to(runs).as_posix(): json.loads(p.read_text()) for p in runs.rglob("summary.json")}
    grid = gpu_check.sweep_grid()
    assert sorted(summaries) == sorted(f"{sch}/{exp}_s0" for sch in grid["lr_schedule"] for exp in grid["experiment"])
    for name, s in summaries.items():
        schedule = name.split("/")[0]
        assert s["lr_schedule"] == schedule and s["model"] == "resnet8" and s["dataset"] == "cifar10", name
        assert s["config"]["dataset"]["loader"] == "device", name
        if s["strategy"] == "traditional":
            assert s["status"] == "completed" and s["epochs"] == 1.0, name
            continue
        trad = summaries[f"{schedule}/cifar10_1gpu_traditional_s0"]
        assert s["budget"]["max_cost"] == trad["cost"] and s["budget"]["source"]["axis"] == "cost", name
        # stops at the first step past the budget: at most one packed batch (16 x 3) plus a selection chunk
        assert s["cost"] <= trad["cost"] + 16 * 3 + 48, name
        if s["strategy"] not in PEERS:
            assert s["status"] == "budget" and s["cost"] >= trad["cost"], name
            assert s["budget"]["max_epochs"] is None, name
    report_dir = work / "table1" / "report"
    for f in ("table1.md", "cost_axis/table1.md", "comparison.md", "pareto_cifar10.png", "figures/fig7.png"):
        assert (report_dir / f).exists(), f
    assert len(list((report_dir / "runs").rglob("summary.json"))) == 16           # collected records
    assert report["results"]["table1"]["details"]["finished"] == 16


def test_without_cuda_it_prints_one_line_and_exits_0(tmp_path):
    proc = make_gpu_check(f"--out {tmp_path / 'out'}", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == gpu_check.NO_CUDA
    direct = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "out")],
                            cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                            timeout=300)
    assert direct.returncode == 0 and direct.stdout == gpu_check.NO_CUDA + "\n"
    assert not (tmp_path / "out").exists()


def test_unknown_check_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry-run", "--only", "models,gpus",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["ERROR --only='models,gpus': unknown check gpus; accepted: a "
                                                "comma-separated subset of cuda_tests, models, ddp_nccl, bench, table1"]
    assert not (tmp_path / "out").exists()

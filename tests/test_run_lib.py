"""scripts/run_lib.sh, the run()/phase() helper the long-run scripts source (table1_cpu.sh, frontier.sh,
regime_search.sh): JOBS checked and capped at the cores, one log per run named after its folder, failures
reported and the other runs carried on."""
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "scripts" / "run_lib.sh"


def _source(tmp_path, body, jobs="2", train="echo", omp="1"):
    script = (f'out={tmp_path}/out; base="common=1"; train="{train}"; jobs={jobs}\n'
              f'source {LIB}\n{body}\n')
    env = {**os.environ, "OMP_NUM_THREADS": omp}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def test_phase_runs_every_line_with_its_log(tmp_path):
    out = tmp_path / "out"
    lines = f"{out}/runs/b1/sb_s0 strategy=sb seed=0\n{out}/runs/b1/sb_s1 strategy=sb seed=1\n"
    proc = _source(tmp_path, f"printf '{lines}' | phase; echo ended")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ended"
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == ["runs_b1_sb_s0.log", "runs_b1_sb_s1.log"]
    # the trainer gets the common overrides, the run's own, then its folder
    assert (out / "logs" / "runs_b1_sb_s1.log").read_text().split() == [
        "common=1", "strategy=sb", "seed=1", f"hydra.run.dir={out}/runs/b1/sb_s1"]


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path):
    out = tmp_path / "out"
    proc = _source(tmp_path, f"printf '{out}/a x=1\\n{out}/b x=2\\n' | phase", train="false", jobs="1")
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [f"FAILED {out}/a (see {out}/logs/a.log)",
                                        f"FAILED {out}/b (see {out}/logs/b.log)"]


def test_jobs_beyond_the_cores_are_capped(tmp_path):
    cores = int(subprocess.run(["getconf", "_NPROCESSORS_ONLN"], capture_output=True, text=True).stdout)
    proc = _source(tmp_path, 'echo "jobs=$jobs"', jobs=str(cores + 3))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"jobs={cores}"
    assert f"exceeds the {cores} cores: running {cores} at a time" in proc.stderr


@pytest.mark.parametrize("jobs, omp, message", [
    ("two", "1", "JOBS=two: accepted: an integer >= 1"),
    ("0", "1", "JOBS=0: accepted: an integer >= 1"),
    ("1", "x", "OMP_NUM_THREADS=x: accepted: an integer >= 1"),
])
def test_bad_jobs_or_threads_stop_before_any_run(tmp_path, jobs, omp, message):
    proc = _source(tmp_path, "echo should-not-run", jobs=jobs, omp=omp)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message
    assert "should-not-run" not in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["table1_cpu.sh", "frontier.sh", "regime_search.sh"])
def test_every_long_run_script_checks_jobs_through_the_helper(tmp_path, script):
    env = {**os.environ, "JOBS": "lots", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "JOBS=lots: accepted: an integer >= 1"

"""Reliability, third pass, through the doors a user uses (`python -m selective_backprop.train`, torchrun,
scripts/demo.py, the report scripts): a lock on every run directory, no silent empty runs, records that
can be repaired, one-line errors for the last tracebacks, a demo that never crashes, and the smaller ones.

Real Fashion-MNIST subsets on the CPU (width 8, one or two epochs, a 500-image test subset).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from resume_helpers import signal_when_logged, wait_for_marker
from selective_backprop.engine.checkpoint import DiskFullError, checkpoint_path, load_checkpoint, save_checkpoint
from selective_backprop.engine.run_lock import STALE_S, RunDirLock, RunDirLocked, read_lock

BASE = ["dataset.subset=256", "train.max_epochs=2", "train.batch_size=64", "model.width=8", "strategy=sb",
        "device=cpu", "train.progress=false", "train.tensorboard=false", "dataset.test_subset=500"]


# ----------------------------------------------------------------------------------------- helpers

def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def train_cmd(run_dir: Path | str, root: Path, extra=(), hooks=()) -> list[str]:
    entry = [str(REPO / "tests" / "hooked_train.py"), *hooks, "--"] if hooks else ["-m", "selective_backprop.train"]
    return [sys.executable, *entry, *BASE, f"dataset.root={root}", f"hydra.run.dir={run_dir}", *extra]


def train(run_dir: Path | str, root: Path, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(run_dir, root, extra), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)


def script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The single ERROR line of a refused command (and no traceback)."""
    out = output(proc)
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1, out[-3000:]
    return errors[0]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@contextlib.contextmanager
def paused_run(run_dir: Path, root: Path, point: str, extra=(), hold: bool = False):
    """A CLI run paused at `point` (tests/hooked_train.py); yields the process; killed on exit if alive."""
    marker = run_dir.parent / f"marker-{run_dir.name}"
    marker.unlink(missing_ok=True)
    hooks = ["--pause-at", point, "--marker", str(marker)] + (["--hold"] if hold else [])
    log_path = run_dir.parent / f"log-{run_dir.name}.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(train_cmd(run_dir, root, extra, hooks), cwd=REPO, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_marker(proc, marker, point, log_path, timeout_s=300)
        proc.log_path = log_path
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ 1. a lock on every run directory

def test_second_process_is_refused_while_the_first_lives_and_a_killed_holder_resumes(tmp_path, fmnist_root):
    run_dir = tmp_path / "run"
    with paused_run(run_dir, fmnist_root, "mid_epoch:0") as first:
        holder = read_lock(run_dir / "run.lock")
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = train(run_dir, fmnist_root)
        assert second.returncode == 2, output(second)[-3000:]
        line = one_error(second)
        assert str(run_dir) in line and f"pid {first.pid}" in line and socket.gethostname() in line, line
        assert first.poll() is None and read_lock(run_dir / "run.lock")["pid"] == first.pid
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run_dir / "run.lock").exists()              # SIGKILL leaves a stale lock ...
    resumed = train(run_dir, fmnist_root)               # ... that does not block the next run
    assert resumed.returncode == 0, output(resumed)[-3000:]
    assert f"taking over the lock of pid {holder['pid']}" in output(resumed)
    assert summary(run_dir)["status"] == "completed"
    assert [json.loads(r)["epoch"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1.0, 2.0]
    assert not (run_dir / "run.lock").exists()


def _foreign_lock(run_dir: Path, heartbeat: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.lock").write_text(json.dumps({"pid": 4242, "host": "node-elsewhere", "started": heartbeat,
                                                  "heartbeat": heartbeat, "token": "x"}))


def test_a_live_lock_from_another_node_refuses_every_data_parallel_rank(tmp_path, fmnist_root):
    """torchrun K = 2: rank 0 alone reads (and would take) the lock; rank 1 is refused with it, no hang,
    and only rank 0 reports."""
    run_dir = tmp_path / "run"
    _foreign_lock(run_dir, time.time())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "selective_backprop.train", *BASE, f"dataset.root={fmnist_root}",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    out = output(proc)
    assert proc.returncode != 0, out[-3000:]
    errors = [line for line in out.splitlines() if "[ERROR]" in line and "in use by" in line]
    assert len(errors) == 1 and "pid 4242 on host node-elsewhere" in errors[0], out[-3000:]
    assert "exitcode  : 2" in out, out[-3000:]               # a refused rank exits 2 (torchrun reports it)
    assert "run_lock.py" not in out and "RunDirLocked:" not in out, out[-3000:]     # no worker traceback
    assert json.loads((run_dir / "run.lock").read_text())["host"] == "node-elsewhere"      # left alone
    assert not (run_dir / "summary.json").exists()


def test_a_lock_whose_heartbeat_stopped_is_taken_over_and_a_live_one_beats(tmp_path):
    run_dir = tmp_path / "run"
    _foreign_lock(run_dir, time.time())
    with pytest.raises(RunDirLocked, match="pid 4242 on host node-elsewhere"):
        RunDirLock(run_dir).acquire()
    _foreign_lock(run_dir, time.time() - STALE_S - 60)      # its node died: no heartbeat for > STALE_S
    lock = RunDirLock(run_dir, heartbeat_s=0.05)
    with lock:
        first = read_lock(lock.path)
        assert first["pid"] == os.getpid() and first["token"] == lock.token
        time.sleep(0.5)
        assert read_lock(lock.path)["heartbeat"] > first["heartbeat"]       # refreshed while it runs
    assert not lock.path.exists() and list(run_dir.iterdir()) == []


# --------------------------------------------------------------------- 2. runs that train nothing

@pytest.mark.parametrize("extra,named", [
    (["strategy=stale_sb", "dataset.subset=1"], "dataset.subset=1"),
    (["strategy=uniform", "train.batch_size=1000"], "train.batch_size=1000"),
])
def test_a_strategy_that_cannot_fill_one_batch_per_epoch_is_refused(tmp_path, fmnist_root, extra, named):
    run_dir = tmp_path / "run"
    proc = train(run_dir, fmnist_root, extra)
    assert proc.returncode == 2, output(proc)[-3000:]
    line = one_error(proc)
    assert named in line and "train.batch_size" in line and "never take an optimizer step" in line, line
    assert not (run_dir / "summary.json").exists() and not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "run.lock").exists()


def test_a_run_that_ends_without_a_step_is_failed_not_completed(tmp_path, fmnist_root):
    """Uniform at s = 0.1 keeps ~26 of 256 examples in its one epoch: fewer than a batch of 64."""
    run_dir = tmp_path / "run"
    proc = train(run_dir, fmnist_root, ["strategy=uniform", "strategy.selectivity=0.1", "train.max_epochs=1"])
    assert proc.returncode == 1, output(proc)[-3000:]
    line = one_error(proc)
    assert "trained nothing" in line and "no optimizer step" in line, line
    record = summary(run_dir)
    assert record["status"] == "failed" and record["steps"] == 0 and "no optimizer step" in record["error"]
    assert not (run_dir / "run.lock").exists()


# ---------------------------------------------------------------------- 4. records that can be repaired

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fmnist_root):
    """A finished two-epoch run: (run dir, its metrics.jsonl text)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = train(run_dir, fmnist_root)
    assert proc.returncode == 0, output(proc)[-3000:]
    return run_dir, (run_dir / "metrics.jsonl").read_text()


@pytest.mark.parametrize("damage", ["deleted", "truncated", "appended"])
def test_a_finished_runs_metrics_are_rebuilt_from_its_checkpoint(finished_run, fmnist_root, damage):
    run_dir, text = finished_run
    path = run_dir / "metrics.jsonl"
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        path.write_text(text[: len(text.splitlines()[0]) + 20])        # the first row and part of the second
    else:
        path.write_text(text + text)                                     # a second process's rows
    proc = train(run_dir, fmnist_root)
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "rebuilt it with the 2 evaluations checkpoint.pt holds" in output(proc)
    assert path.read_text() == text


def test_a_finished_run_without_checkpoint_says_what_is_missing(tmp_path, finished_run, fmnist_root):
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    for name in ("summary.json", "metrics.jsonl"):
        (run_dir / name).write_bytes((finished_run[0] / name).read_bytes())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text(lines[0] + "\n")
    proc = train(run_dir, fmnist_root)
    assert proc.returncode == 2, output(proc)[-3000:]
    line = one_error(proc)
    assert "holds 1 evaluation(s)" in line and "checkpoint.pt' is missing" in line, line
    assert f"move '{run_dir}' away and re-run the same command" in line
    assert (run_dir / "metrics.jsonl").read_text() == lines[0] + "\n"          # nothing touched


# ---------------------------------------------------------------------------- 5. the last tracebacks

@contextlib.contextmanager
def unwritable_folder(tmp_path: Path):
    """A folder that refuses new files, even to root: immutable (chattr +i) where the filesystem allows
    it, else a non-root user's read-only folder, else sysfs (read-only to everyone)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        return
    yield Path("/sys/kernel")


def test_an_output_directory_that_is_a_file_under_a_file_or_unwritable_is_refused(tmp_path, fmnist_root):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with unwritable_folder(tmp_path) as locked:
        cases = {a_file: "is a file", a_file / "run": "is a file", locked: "is not writable",
                 locked / "run": "is not writable"}
        for run_dir, why in cases.items():
            proc = train(run_dir, fmnist_root)
            assert proc.returncode == 2, output(proc)[-3000:]
            line = one_error(proc)
            assert line.startswith("ERROR hydra.run.dir:") and str(run_dir) in line and why in line, line
    assert a_file.read_text() == "not a folder"


def test_a_seed_beyond_64_bits_and_an_unresolvable_interpolation_are_one_line(tmp_path, fmnist_root):
    proc = train(tmp_path / "seed", fmnist_root, ["seed=99999999999999999999"])
    assert proc.returncode == 2 and "seed=99999999999999999999" in one_error(proc)
    assert "[0, 2^63)" in one_error(proc)
    env_var = "SB_TEST_SURELY_UNSET_VARIABLE"
    proc = train(tmp_path / "interp", fmnist_root, [f"dataset.root=${{oc.env:{env_var}}}"])
    assert proc.returncode == 2, output(proc)[-3000:]
    line = one_error(proc)
    assert "dataset.root" in line and env_var in line, line
    assert not (tmp_path / "interp" / "summary.json").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs: room for one checkpoint of the test model (~190 KiB), not for a second beside it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN); "
                    "test_a_failed_checkpoint_write_keeps_the_previous_one covers the writer")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_during_the_checkpoint_write_keeps_the_last_good_one(small_disk, fmnist_root):
    run_dir = small_disk / "run"
    proc = train(run_dir, fmnist_root)
    assert proc.returncode == 1, output(proc)[-3000:]
    line = one_error(proc)
    assert "no space left" in line and "previous checkpoint.pt is kept" in line, line
    assert not list(run_dir.glob(".checkpoint.pt.tmp*")) and not list(run_dir.glob(".*.tmp*"))
    assert load_checkpoint(checkpoint_path(run_dir))["next_epoch"] == 1           # epoch 1's, intact
    record = summary(run_dir)
    assert record["status"] == "failed" and "no space left" in record["error"]
    assert not (run_dir / "run.lock").exists()
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)   # space freed
    resumed = train(run_dir, fmnist_root)
    assert resumed.returncode == 0, output(resumed)[-3000:]
    assert "resuming from" in output(resumed) and summary(run_dir)["status"] == "completed"


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """The writer alone, with torch.save failing as it does on a full disk (its C++ writer's RuntimeError
    with the OSError as context): runs everywhere, mount or not."""
    import errno

    from selective_backprop.engine import checkpoint as ckpt

    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"format": 1, "next_epoch": 1}, path)

    def full(obj, f):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(DiskFullError, match="no space left.*previous checkpoint.pt is kept"):
        save_checkpoint({"format": 1, "next_epoch": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["next_epoch"] == 1


# ------------------------------------------------------------------------- 6. the demo never crashes

def _demo(out: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    return script("demo.py", "--out", str(out), "--subset", "256", "--test-subset", "256", "--width", "8",
                  f"dataset.root={root}", *extra)


def _demo_rows(proc: subprocess.CompletedProcess) -> dict[str, list[str]]:
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "strategy" not in line]
    return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


def test_the_demo_on_a_small_subset_finishes_every_strategy(tmp_path, fmnist_root):
    """256 examples: a few optimizer steps per epoch, test error near chance after the first LR stage:
    slow, not diverged."""
    proc = _demo(tmp_path / "demo", fmnist_root)
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "Traceback" not in output(proc) and "DivergedError" not in output(proc)
    rows = _demo_rows(proc)
    assert list(rows) == ["traditional", "sb", "uniform"]
    assert all(cells[0].endswith("%") for cells in rows.values()), rows
    assert proc.stdout.splitlines()[0].startswith(("SB did NOT pay off here", "SB reached"))


def test_the_demo_reports_diverged_strategies(tmp_path, fmnist_root):
    proc = _demo(tmp_path / "demo", fmnist_root, "optimizer.lr=1000")
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "Traceback" not in output(proc)
    first = proc.stdout.splitlines()[0]
    assert first.startswith("No verdict: Traditional diverged") and "sb diverged" in first, first
    rows = _demo_rows(proc)
    assert {name: cells[0] for name, cells in rows.items()} == {"traditional": "diverged", "sb": "diverged",
                                                                  "uniform": "diverged"}
    assert (tmp_path / "demo" / "table.md").read_text().splitlines()[0] == first


def test_sigterm_during_the_demo_preempts_its_run(tmp_path, fmnist_root):
    out = tmp_path / "demo"
    log_path = tmp_path / "demo.log"
    cmd = [sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out), "--subset", "512",
           "--test-subset", "256", "--width", "8", f"dataset.root={fmnist_root}"]
    rc, text = signal_when_logged(cmd, REPO, _env(), log_path, "epoch 1.00 |")
    assert rc == 75, text[-3000:]
    assert "preempted by SIGTERM" in text and "Traceback" not in text
    assert summary(out / "traditional")["status"] == "preempted"
    assert not (out / "traditional" / "run.lock").exists()


# ------------------------------------------------------------------------------- 7. smaller ones

@pytest.mark.parametrize("override,expected", [
    ("train.max_epoch=5", ["train.max_epoch: unknown key", "did you mean train.max_epochs?"]),
    ("strategy=sbb", ["strategy=sbb: no such option", "stale_sb | traditional | uniform", "did you mean sb?"]),
    ("model=resnet9", ["model=resnet9: no such option", "resnet8", "wrn28_10"]),
    ("+strategy.staleness=3", ["strategy.staleness: not a key of strategy=sb", "strategy=stale_sb"]),
])
def test_unknown_keys_and_options_are_one_line_with_the_valid_names(tmp_path, fmnist_root, override, expected):
    proc = train(tmp_path / "run", fmnist_root, [override])
    assert proc.returncode == 2, output(proc)[-3000:]
    line = one_error(proc)
    assert all(part in line for part in expected), line
    assert "strategy.name" not in line


def test_a_corrupted_label_file_is_named(tmp_path, fmnist_root):
    source = fmnist_root / "FashionMNIST" / "raw"
    if not (source / "train-labels-idx1-ubyte").exists():      # the session's data root is filled on first use
        assert train(tmp_path / "warm", fmnist_root, ["train.max_epochs=1"]).returncode == 0
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to(source / name)
    labels = bytearray((source / "train-labels-idx1-ubyte").read_bytes())
    labels[8 + 100] = 0xFF                                       # label 255 for example 100
    (raw / "train-labels-idx1-ubyte").write_bytes(bytes(labels))
    proc = train(tmp_path / "run", tmp_path / "data")
    assert proc.returncode == 2, output(proc)[-3000:]
    line = one_error(proc)
    assert str(raw / "train-labels-idx1-ubyte") in line and "labels outside [0, 10)" in line, line
    assert "images" not in line


def test_a_random_bytes_checkpoint_never_suggests_weights_only_false(tmp_path, fmnist_root):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                                          generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    proc = train(run_dir, fmnist_root)
    assert proc.returncode == 2, output(proc)[-3000:]
    line = one_error(proc)
    assert "checkpoint.pt' cannot be loaded" in line and "weights_only" not in line, line


def test_report_scripts_name_a_missing_folder_and_an_empty_schedule_filter(tmp_path, finished_run):
    proc = script("make_table1.py", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and one_error(proc) == f"ERROR RUN_DIR: '{tmp_path / 'missing'}' does not exist; " \
                                                        "accepted: run directories or folders holding them"
    proc = script("make_table1.py", str(finished_run[0]), "--out", str(tmp_path / "out"), "--schedules", "sched9")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --schedules sched9 leaves no run: the 1 usable run(s) under {finished_run[0]} have the LR "
        f"schedule(s) fashion_mnist_sched1")


def test_compare_strategies_leaves_out_a_nan_seed_with_a_warning(tmp_path):
    from test_compare import _write_run

    root = tmp_path / "runs"
    for seed in (0, 1):
        _write_run(root, f"trad_s{seed}", "traditional", seed, [300, 600, 900], [0.30, 0.22, 0.20], backpropped=300)
    _write_run(root, "sb_s0", "sb", 0, [300, 600, 900], [0.30, 0.22, 0.21], {"selectivity": 1 / 3})
    _write_run(root, "sb_s1", "sb", 1, [300, 600, 900], [math.nan] * 3, {"selectivity": 1 / 3})
    proc = script("compare_strategies.py", str(root), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, output(proc)[-3000:]
    assert "nan" not in proc.stdout.lower(), proc.stdout
    sb_row = [line for line in proc.stdout.splitlines() if line.startswith("| SB |")]
    assert len(sb_row) == 1 and sb_row[0].startswith("| SB | 1 | 21.00 %"), sb_row
    warnings = [line for line in proc.stderr.splitlines() if "NaN" in line]
    assert len(warnings) == 1 and str(root / "sb_s1") in warnings[0], proc.stderr


def test_two_sigints_write_aborted_and_the_run_resumes(tmp_path, fmnist_root):
    run_dir = tmp_path / "run"
    with paused_run(run_dir, fmnist_root, "mid_epoch:1", hold=True) as proc:
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)                         # the first one is handled: preemption requested
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
        text = proc.log_path.read_text()
    assert rc == 128 + signal.SIGINT, text[-3000:]
    assert "aborted by second SIGINT" in text and "Traceback" not in text, text[-3000:]
    record = summary(run_dir)
    assert record["status"] == "aborted" and "second SIGINT" in record["error"]
    assert not (run_dir / "run.lock").exists()
    resumed = train(run_dir, fmnist_root)
    assert resumed.returncode == 0, output(resumed)[-3000:]
    assert "resuming from" in output(resumed) and summary(run_dir)["status"] == "completed"

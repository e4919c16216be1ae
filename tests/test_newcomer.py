"""Issue 15: a newcomer's path. Data on a fresh machine (scripts/get_data.py), no traceback for bad input
in any entry point, train.progress auto, unknown `+` keys, refused runs keep their .hydra snapshot,
failed sweep jobs leave summary.json, divergence short of NaN, NaN seeds in Table 1."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_tiny
from selective_backprop.data import build_data
from selective_backprop.data import fashion_mnist_debian as fmd
from selective_backprop.errors import ConfigError

SCRIPTS = REPO / "scripts"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The run printed exactly one ERROR line, no traceback, and exited 2; returns that line."""
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


# ------------------------------------------------------------------------ point 2: data on a fresh machine

@pytest.fixture
def get_data(monkeypatch, tmp_path):
    """scripts/get_data.py with no Debian copy, not root, and every outside effect recorded."""
    module = _load_script("get_data")
    monkeypatch.setenv(fmd.ENV_VAR, str(tmp_path / "no-debian"))
    calls: list = []
    monkeypatch.setattr(module.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr(module.os, "geteuid", lambda: 1000)
    module.calls = calls
    return module


def _fake_debian(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in fmd.IDX_FILES:
        (folder / f"{name}.gz").write_bytes(b"")


def test_get_data_debian_present_does_nothing(get_data, tmp_path, monkeypatch):
    _fake_debian(tmp_path / "debian")
    monkeypatch.setenv(fmd.ENV_VAR, str(tmp_path / "debian"))
    monkeypatch.setattr(get_data, "download", lambda root: pytest.fail("must not download"))
    assert get_data.get_data(tmp_path / "data") == "debian"
    assert get_data.calls == [] and not (tmp_path / "data").exists()


def test_get_data_as_root_with_apt_installs_the_package(get_data, tmp_path, monkeypatch):
    monkeypatch.setattr(get_data.os, "geteuid", lambda: 0)
    monkeypatch.setattr(get_data.shutil, "which", lambda name: "/usr/bin/apt-get")

    def apt(cmd, **kw):          # the install puts the package files in place
        get_data.calls.append(cmd)
        if "install" in cmd:
            _fake_debian(tmp_path / "no-debian")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(get_data.subprocess, "run", apt)
    assert get_data.get_data(tmp_path / "data") == "apt"
    assert get_data.calls == [["apt-get", "update", "-qq"],
                              ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]]


def test_get_data_without_root_downloads_into_the_data_root(get_data, tmp_path, monkeypatch, fmnist_root,
                                                            fmnist_bundle):
    """Not root: torchvision's download into ROOT/FashionMNIST/raw (faked with the real files), which the
    data loader then reads with no Debian copy present."""
    real = fmd.raw_folder(fmnist_root)

    class FakeFashionMNIST:
        def __init__(self, root, train=True, download=False):
            raw = fmd.raw_folder(Path(root))
            if download:
                raw.mkdir(parents=True, exist_ok=True)
                for name in fmd.IDX_FILES:
                    shutil.copy(real / name, raw / name)
            real_ds = FakeFashionMNIST.original(str(root), train=train, download=False)
            self.data, self.targets = real_ds.data, real_ds.targets

    import torchvision
    FakeFashionMNIST.original = torchvision.datasets.FashionMNIST
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    root = tmp_path / "data"
    assert get_data.get_data(root) == "download"
    assert get_data.calls == []                                 # not root: apt-get is not tried
    assert fmd.raw_files_present(root)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST.original)
    bundle = build_data({"name": "fashion_mnist", "root": str(root), "subset": 100}, 0)
    assert len(bundle.train) == 100 and len(bundle.test) == 10000
    assert get_data.get_data(root) == "present"                 # a second setup does nothing


def test_get_data_offline_prints_what_to_run_and_exits_0(get_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(get_data, "download", lambda root: False)
    assert get_data.main(["--root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "apt-get install dataset-fashion-mnist" in out[0]
    assert f"python -m selective_backprop.data.download fashion_mnist --root {tmp_path / 'data'}" in out[0]


def test_get_data_failing_download_falls_through(get_data, tmp_path, monkeypatch):
    """A real fetch() that cannot download (no network) is reported, not raised."""
    def no_network(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    import torchvision
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    assert get_data.download(tmp_path / "data") is False
    assert get_data.get_data(tmp_path / "data") == "missing"


def test_make_setup_calls_get_data():
    setup = (REPO / "Makefile").read_text().split("\nsetup:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in setup.splitlines()[1:]]
    assert lines.index("$(PY) scripts/get_data.py") > lines.index("$(PIP) install -e '.[dev]'")


# ------------------------------------------------------------ point 2: no traceback from any entry point

def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            fmd.ENV_VAR: str(tmp_path / "no-debian"), "SB_DATA_ROOT": str(tmp_path / "empty-data")}


def _entry_points(tmp_path: Path) -> dict[str, list[str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    py = sys.executable
    return {
        "train": [py, "-m", "selective_backprop.train", f"hydra.run.dir={tmp_path / 'run'}"],
        "demo": [py, str(SCRIPTS / "demo.py"), "--out", str(tmp_path / "demo"), "--subset", "64"],
        "benchmark": [py, str(SCRIPTS / "benchmark.py"), "--out", str(tmp_path / "bench"), "--epochs", "1"],
        "gradient_similarity": [py, str(SCRIPTS / "gradient_similarity.py"), "--root",
                                str(tmp_path / "empty-data"), "--out", str(tmp_path / "fig5")],
        "collect_runs": [py, str(SCRIPTS / "collect_runs.py"), str(REPO / "tests" / "fixtures" / "runs"),
                         str(a_file)],
        "make_table1": [py, str(SCRIPTS / "make_table1.py"), str(REPO / "tests" / "fixtures" / "runs"),
                        "--out", str(a_file)],
        "plot_pareto": [py, str(SCRIPTS / "plot_pareto.py"), str(REPO / "tests" / "fixtures" / "runs"),
                        "--out", str(a_file / "sub")],
        "plot_figures": [py, str(SCRIPTS / "plot_figures.py"), str(REPO / "tests" / "fixtures" / "runs"),
                         "--out", "/sys/sb-unwritable"],
    }


EXPECTED_FIELD = {"train": "dataset.root", "demo": "dataset.root", "benchmark": "dataset.root",
                  "gradient_similarity": "dataset.root", "collect_runs": "DEST", "make_table1": "--out",
                  "plot_pareto": "--out", "plot_figures": "--out"}


@pytest.mark.parametrize("name", list(EXPECTED_FIELD))
def test_entry_point_reports_bad_data_or_output_in_one_line(name, tmp_path):
    proc = subprocess.run(_entry_points(tmp_path)[name], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    line = _one_error_line(proc)
    assert EXPECTED_FIELD[name] in line, line


# ---------------------------------------------------------------------------------- point 3: progress

def test_progress_auto_is_the_default_and_follows_the_terminal(monkeypatch):
    import yaml

    from selective_backprop.conf import CONFIG_DIR
    from selective_backprop.engine import progress

    assert yaml.safe_load(Path(CONFIG_DIR, "config.yaml").read_text())["train"]["progress"] == "auto"
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.progress_mode("auto") == "bar"
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert progress.progress_mode("auto") == "line"
    assert progress.progress_mode(True) == "bar" and progress.progress_mode(False) == "off"


def test_progress_auto_off_a_terminal_logs_one_line_per_epoch(tmp_path, fmnist_root, fmnist_bundle, caplog,
                                                              capsys):
    with caplog.at_level(logging.INFO, logger="selective_backprop.engine.trainer"):
        run_tiny(tmp_path, fmnist_root, ["train.progress=auto", "dataset.subset=256"], bundle=fmnist_bundle)
    lines = [r.getMessage() for r in caplog.records if " done | " in r.getMessage()]
    assert [line.split(" done")[0] for line in lines] == ["epoch 0", "epoch 1"]
    assert "ex/s" not in capsys.readouterr().err          # no tqdm bar (pytest's stderr is no terminal)


# ---------------------------------------------------------------------------- point 4: unknown + keys

def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "selective_backprop.train", f"hydra.run.dir={tmp_path / 'run'}",
           f"dataset.root={tmp_path / 'data'}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,key", [("+train.max_epoch=5", "train.max_epoch"),
                                          ("+strategy.selectivty=0.1", "strategy.selectivty")])
def test_unknown_added_key_is_refused(override, key, tmp_path):
    line = _one_error_line(_cli(tmp_path, "strategy=sb", override))
    assert f"{key}: unknown key" in line and "did you mean" in line
    assert not (tmp_path / "run" / "summary.json").exists()


def test_known_keys_come_from_the_yaml_files(tmp_path, monkeypatch):
    """A key a config file defines is known as soon as it is in the file (no list in the code)."""
    import selective_backprop.conf as conf
    from selective_backprop.validate import check_added_keys

    copy = tmp_path / "conf"
    shutil.copytree(conf.CONFIG_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    choices = {"dataset": "fashion_mnist", "model": "resnet8", "strategy": "sb", "lr_schedule": "static",
               "optimizer": "sgd", "experiment": None, "sweep": None, "hydra/launcher": "basic"}
    monkeypatch.setattr(conf, "CONFIG_DIR", str(copy))
    with pytest.raises(ConfigError, match=r"strategy\.new_knob: unknown key"):
        check_added_keys(["++strategy.new_knob=1"], choices)
    with open(copy / "strategy" / "sb.yaml", "a") as f:
        f.write("new_knob: 0\n")
    check_added_keys(["++strategy.new_knob=1", "++train.max_epochs=3", "+hydra.job.env_set.X=1",
                      "+experiment=fashion_mnist_cpu"], choices)
    with pytest.raises(ConfigError, match=r"train\.nope"):
        check_added_keys(["+train.nope=1"], choices)
    choices["experiment"] = "fashion_mnist_cpu"          # an experiment (package _global_) adds its keys
    assert "train.max_epochs" in __import__("selective_backprop.validate", fromlist=["x"]).known_keys(choices)


# ------------------------------------------------------------------------- point 7: .hydra snapshot kept

def test_refused_run_keeps_its_hydra_snapshot(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    summary = {"status": "completed", "config_key": "0123456789abcdef", "seed": 0, "final_test_error": 0.2}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    snapshot = {name: f"# the earlier run's {name}\nseed: 7\n".encode() for name in
                ("config.yaml", "hydra.yaml", "overrides.yaml")}
    for name, data in snapshot.items():
        (run_dir / ".hydra" / name).write_bytes(data)
    line = _one_error_line(_cli(tmp_path))
    assert "different config" in line
    assert {n: (run_dir / ".hydra" / n).read_bytes() for n in snapshot} == snapshot
    assert json.loads((run_dir / "summary.json").read_text()) == summary


# ------------------------------------------------------------------ point 8: failed sweep jobs recorded

@pytest.mark.slow
def test_sweep_job_refused_by_validation_leaves_a_failed_summary(tmp_path, fmnist_root, fmnist_bundle):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "selective_backprop.train", "-m", f"hydra.sweep.dir={sweep}",
           f"dataset.root={fmnist_root}", "dataset.subset=256", "train.max_epochs=1", "model.width=8",
           "train.batch_size=64", "device=cpu", "train.tensorboard=false", "strategy=sb",
           "strategy.history=0,16"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]    # Hydra: a job failed
    failed = json.loads((sweep / "0" / "summary.json").read_text())
    assert failed["status"] == "failed" and "strategy.history=0" in failed["error"]
    assert failed["config"]["strategy"]["history"] == 0 and failed["config_key"]
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"


def test_failed_job_summary_never_overwrites_a_run(tmp_path):
    from conftest import compose_config
    from selective_backprop.train import write_failed_job_summary

    cfg = compose_config(["strategy=sb", "strategy.history=0"])
    held = tmp_path / "held"
    held.mkdir()
    (held / "summary.json").write_text('{"status": "completed"}')
    write_failed_job_summary(cfg, str(held), ConfigError("strategy.history=0: not accepted"))
    assert (held / "summary.json").read_text() == '{"status": "completed"}'
    write_failed_job_summary(cfg, str(tmp_path / "fresh"), ConfigError("strategy.history=0: not accepted"))
    assert json.loads((tmp_path / "fresh" / "summary.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------- point 9: divergence

def test_huge_learning_rate_ends_diverged(tmp_path, fmnist_root, fmnist_bundle):
    from selective_backprop.engine.trainer import DivergedError

    with pytest.raises(DivergedError):
        run_tiny(tmp_path, fmnist_root, ["optimizer.lr=100", "dataset.subset=256", "train.max_epochs=2"],
                 bundle=fmnist_bundle)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["error"]


@pytest.mark.parametrize("factor,milestones,progress,backpropped,error,loss,steps,earlier,diverged", [
    (100, [3], 1.0, 100, 0.5, 231.0, 7, None, True),      # > 100 x ln 10 = 230.26
    (100, [3], 1.0, 100, 0.5, 229.0, 7, None, False),
    (10, [3], 1.0, 100, 0.5, 24.0, 7, None, True),        # > 10 x ln 10 = 23.03
    (100, [3], 3.0, 300, 0.90, 2.3, 150, 2.3, True),      # at chance after the first LR stage (3 epochs x 100)
    (100, [3], 2.0, 200, 0.90, 2.3, 150, 2.3, False),     # ... but not before it
    (100, [3], 3.0, 120, 0.90, 2.3, 150, 2.3, False),     # ... nor with fewer backprops than that stage (SB, uniform)
    (100, [3], 9.0, 300, 0.90, 2.3, 150, 2.3, True),      # ... until it has done as many
    (100, [3], 3.0, 300, 0.80, 2.3, 150, 2.3, False),
    (100, [3], 3.0, 300, 0.90, 2.3, 7, 2.3, False),       # ... nor after a few steps only (a small run)
    (100, [3], 3.0, 300, 0.90, 2.3, 150, 2.31, False),    # ... nor while its test loss still falls
    (100, [3], 3.0, 300, 0.90, 2.3, 150, None, False),    # ... nor with no earlier evaluation to compare
    (100, [], 9.0, 900, 0.90, 2.3, 150, 2.3, False),      # no LR stages: the loss rule only
    (None, [3], 3.0, 300, 0.90, 1e19, 150, 2.3, False),   # null: off
])
def test_explosion_rule(factor, milestones, progress, backpropped, error, loss, steps, earlier, diverged):
    """DivergenceGuard.check_eval on a 100-example, 10-class run at `progress` epochs after `steps` steps,
    with an earlier evaluation (20 steps before) of test loss `earlier`."""
    from selective_backprop.engine.control import DivergedError, DivergenceGuard
    from selective_backprop.distributed import SINGLE

    guard = DivergenceGuard(factor, 10, milestones, 100, torch.device("cpu"), SINGLE)
    rows = [] if earlier is None else [{"step": max(steps - 20, 0), "test_loss": earlier}]
    where = {"steps": steps, "epochs": progress, "backpropped": backpropped, "earlier": rows}
    if diverged:
        with pytest.raises(DivergedError, match="diverge_factor"):
            guard.check_eval(error, loss, **where)
    else:
        guard.check_eval(error, loss, **where)


# ------------------------------------------------------------------------ point 10: NaN seed in Table 1

def _record(root: Path, name: str, strategy: str, seed: int, errors: list[float], times: list[float]) -> None:
    run = root / name
    run.mkdir(parents=True)
    rows = [{"epoch": i + 1, "step": i + 1, "train_s": t, "test_error": e} for i, (e, t) in
            enumerate(zip(errors, times))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": "completed", "dataset": "fashion_mnist", "model": "resnet8", "strategy": strategy,
               "lr_schedule": "static", "config_key": f"key-{strategy}", "seed": seed,
               "final_test_error": errors[-1], "best_test_error": min(errors), "train_s": times[-1],
               "config": {"dataset": {"label_noise": 0.0}, "seed": seed}}
    (run / "summary.json").write_text(json.dumps(summary))


def test_nan_seed_is_left_out_of_table1_with_a_warning(tmp_path, caplog):
    from selective_backprop.analysis.records import load_runs
    from selective_backprop.analysis.table1 import table1

    for seed in (0, 1):
        _record(tmp_path, f"trad{seed}", "traditional", seed, [0.5, 0.3, 0.2], [10, 20, 30])
    _record(tmp_path, "sb0", "sb", 0, [0.4, 0.25, 0.2], [5, 10, 15])
    _record(tmp_path, "sb1", "sb", 1, [math.nan, math.nan, math.nan], [5, 10, 15])
    with caplog.at_level(logging.WARNING):
        df = table1(load_runs([tmp_path]))
    row = df[df["strategy"] == "sb"].iloc[0]
    assert (row["speedup_1.1"], row["speedup_1.2"], row["speedup_1.4"]) == pytest.approx((2.0, 2.0, 3.0))
    warned = [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "sb1") in warned[0]

"""Bad input is refused before any work: one line naming the field or file, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF, REPO, compose_config, tiny_config
from selective_backprop.data.fashion_mnist_debian import IDX_FILES, raw_folder
from selective_backprop.engine.checkpoint import save_checkpoint
from selective_backprop.record import config_key
from selective_backprop.errors import ConfigError, DataError
from selective_backprop.train import run
from selective_backprop.validate import validate_config

BAD = [
    (["strategy=sb", "strategy.beta=0"], r"strategy\.beta=0.*> 0"),
    (["strategy=sb", "strategy.beta=-1"], r"strategy\.beta=-1"),
    (["strategy=sb", "strategy.selectivity=0"], r"strategy\.selectivity=0.*\(0, 1\]"),
    (["strategy=uniform", "strategy.selectivity=1.5"], r"strategy\.selectivity=1\.5.*\(0, 1\]"),
    (["strategy=sb", "strategy.beta=2", "strategy.selectivity=0.5"],
     r"strategy\.beta=2.* and strategy\.selectivity=0\.5 disagree"),
    (["strategy=sb", "strategy.history=0"], r"strategy\.history=0.*>= 1"),
    (["strategy=stale_sb", "strategy.staleness=0"], r"strategy\.staleness=0.*integer >= 1"),
    (["strategy=stale_sb", "strategy.staleness=1.5"], r"strategy\.staleness=1\.5.*integer >= 1"),
    (["strategy=kath18", "strategy.selectivity=1.0"], r"strategy\.selectivity=1\.0.*presample ratio"),
    (["strategy=kath18", "strategy.closed_tau=score", "strategy.score_while_closed=false"],
     r"strategy\.closed_tau='score'.*score_while_closed=false"),
    (["strategy=kath18", "strategy.sampling=uniform"], r"strategy\.sampling='uniform'.*shuffle \| replacement"),
    (["strategy=infobatch", "strategy.prune_ratio=0.95"], r"strategy\.prune_ratio=0\.95.*\[0, 0\.9\]"),
    (["strategy=infobatch", "strategy.delta=0.8", "strategy.anneal=0.2"],
     r"strategy\.delta=0\.8, strategy\.anneal=0\.2: not accepted together"),
    (["train.batch_size=0"], r"train\.batch_size=0.*>= 1"),
    (["optimizer.lr=0"], r"optimizer\.lr=0.*> 0"),
    (["optimizer.lr=-0.1"], r"optimizer\.lr=-0\.1.*> 0"),
    (["lr_schedule.milestones=[6,3]"], r"lr_schedule\.milestones.*strictly increasing"),
    (["lr_schedule.milestones=[3,3,8]"], r"lr_schedule\.milestones.*strictly increasing"),
    (["train.max_epochs=null", "train.max_time_s=null"], r"train\.max_epochs and train\.max_time_s.*> 0"),
    (["train.max_epochs=0"], r"train\.max_epochs=0.*>= 1"),
    (["train.max_epochs=1.5"], r"train\.max_epochs=1\.5.*an integer >= 1 or null"),
    (["train.eval_every=1.5"], r"train\.eval_every=1\.5.*an integer >= 1"),
    (["train.checkpoint_every=2.5"], r"train\.checkpoint_every=2\.5.*an integer >= 1"),
    (["train.progress=sometimes"], r"train\.progress='sometimes'.*auto"),
    (["train.diverge_factor=1"], r"train\.diverge_factor=1.*> 1"),
    (["train.max_epochs=null", "train.max_time_s=-5"], r"train\.max_time_s=-5.*> 0"),
    (["dataset.subset=0"], r"dataset\.subset.*accepted"),
    (["dataset.subset=60001"], r"dataset\.subset: 60001.*\[1, 60000\]"),
    (["dataset=cifar10", "dataset.subset=50001"], r"dataset\.subset: 50001.*\[1, 50000\]"),
    (["dataset.label_noise=1.0"], r"dataset\.label_noise.*\[0, 1\)"),
    (["dataset.label_noise=-0.1"], r"dataset\.label_noise.*\[0, 1\)"),
    (["train.checkpoint_every=0"], r"train\.checkpoint_every=0.*>= 1"),
    (["train.eval_every=0"], r"train\.eval_every=0"),
    (["train.eval_every_cost=0"], r"train\.eval_every_cost=0: .*a number > 0.*epoch.*null"),
    (["train.eval_every_cost=-100"], r"train\.eval_every_cost=-100: .*a number > 0"),
    (["train.eval_every_cost=epochs"], r"train\.eval_every_cost='epochs': .*epoch \(one Traditional"),
    (["train.eval_every_cost=true"], r"train\.eval_every_cost=True: "),
    (["train.precision=fp8"], r"train\.precision='fp8'"),
    (["device=tpu"], r"device='tpu'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_is_refused_before_any_work(overrides, message, tmp_path):
    cfg = compose_config(["dataset.subset=256", "train.max_epochs=2", "device=cpu",
                          f"dataset.root={tmp_path / 'data'}"] + overrides)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message) as info:
        run(cfg, str(out))
    assert "\n" not in str(info.value)
    assert not out.exists() and not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_refused(tmp_path):
    cfg = compose_config(["device=cuda", f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"device='cuda'.*no CUDA device.*accepted: auto or cpu"):
        validate_config(cfg)


# experiments run at a budget borrowed from their Traditional run (sweep=table1_1gpu sets train.budget_from)
BORROWING = {f"cifar10_1gpu_{s}" for s in ("sb", "stale_sb_n2", "stale_sb_n3", "kath18", "uniform")}


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) + [None])
def test_shipped_configs_validate(name):
    overrides = [f"experiment={name}"] if name else []
    if name in BORROWING:       # alone they have no budget, and say how to give one
        with pytest.raises(ConfigError, match=r"^no budget: .*\(or train\.budget_from\)$"):
            validate_config(compose_config(overrides))
        overrides.append("train.max_cost=1000")
    validate_config(compose_config(overrides))


@pytest.mark.parametrize("value", ["epoch", "1000", "2.5e3", "null"])
def test_eval_every_cost_accepts_a_number_epoch_or_null(value):
    cfg = compose_config([f"train.eval_every_cost={value}"])
    validate_config(cfg)
    assert cfg.train.eval_every_cost == {"epoch": "epoch", "1000": 1000, "2.5e3": 2500.0, "null": None}[value]


def test_trainer_validates_too(tmp_path):
    from selective_backprop.engine.trainer import Trainer

    cfg = compose_config(["strategy=stale_sb", "strategy.staleness=0", f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError, match="strategy.staleness"):
        Trainer(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- data

def _fake_root(tmp_path: Path, fmnist_root: Path, broken: str, content: bytes) -> Path:
    """A data root whose FashionMNIST/raw links the real files except `broken`, which holds `content`."""
    root = tmp_path / "data"
    raw = raw_folder(root)
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        if name == broken:
            (raw / name).write_bytes(content)
        else:
            os.symlink(raw_folder(fmnist_root) / name, raw / name)
    return root


@pytest.fixture(scope="module")
def real_raw(fmnist_root, fmnist_bundle) -> Path:
    """The decompressed real IDX files (fmnist_bundle put them under fmnist_root)."""
    return raw_folder(fmnist_root)


def test_data_folder_missing_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SB_FASHION_MNIST_DIR", str(tmp_path / "no-debian-copy"))
    cfg = tiny_config(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"dataset\.root: no FashionMNIST files in '.*nowhere"):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    cfg = compose_config(["dataset=cifar10", f"dataset.root={tmp_path / 'empty'}", "device=cpu"])
    with pytest.raises(DataError, match=r"dataset\.root: no CIFAR10 files in '.*empty"):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_truncated_data_file_is_refused(tmp_path, fmnist_root, real_raw):
    labels = (real_raw / "train-labels-idx1-ubyte").read_bytes()
    root = _fake_root(tmp_path, fmnist_root, "train-labels-idx1-ubyte", labels[:30000])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte' has 30000 bytes, expected 60008"):
        run(tiny_config(root), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_bad_header_is_refused(tmp_path, fmnist_root, real_raw):
    labels = bytearray((real_raw / "t10k-labels-idx1-ubyte").read_bytes())
    labels[:4] = struct.pack(">I", 2051)
    root = _fake_root(tmp_path, fmnist_root, "t10k-labels-idx1-ubyte", bytes(labels))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte' has a bad IDX header"):
        run(tiny_config(root), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_wrong_image_shape_is_refused(tmp_path, fmnist_root, real_raw):
    header = struct.pack(">4I", 2051, 10000, 32, 32)       # 32x32 images where 28x28 belong
    root = _fake_root(tmp_path, fmnist_root, "t10k-images-idx3-ubyte", header + bytes(64))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte' has a bad IDX header.*dims \(32, 32\)"):
        run(tiny_config(root), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------- output directory

def _finished_record(run_dir: Path, key: str, seed: int = 0, status: str = "completed") -> dict[str, bytes]:
    run_dir.mkdir(parents=True)
    summary = {"status": status, "config_key": key, "seed": seed, "final_test_error": 0.125}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1.0, "test_error": 0.125}) + "\n")
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_finished_run_of_another_config_is_not_overwritten(tmp_path):
    cfg = compose_config(["device=cpu", f"dataset.root={tmp_path}"])
    run_dir = tmp_path / "run"
    before = _finished_record(run_dir, "0123456789abcdef")
    with pytest.raises(ConfigError, match=r"output directory: '.*run' holds a completed run of a different config"):
        run(cfg, str(run_dir))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_other_seed_or_unfinished_other_run_is_not_overwritten(tmp_path):
    cfg = compose_config(["device=cpu", f"dataset.root={tmp_path}"])
    key = config_key(OmegaConf.to_container(cfg, resolve=True))
    before = _finished_record(tmp_path / "seed", key, seed=1)
    with pytest.raises(ConfigError, match="different config"):
        run(cfg, str(tmp_path / "seed"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "seed").iterdir()} == before
    _finished_record(tmp_path / "preempted", "0123456789abcdef", status="preempted")
    with pytest.raises(ConfigError, match="holds a preempted run of a different config"):
        run(cfg, str(tmp_path / "preempted"))
    (tmp_path / "ckpt").mkdir()
    save_checkpoint({"format": 1, "config_key": "0123456789abcdef", "seed": 0}, tmp_path / "ckpt" / "checkpoint.pt")
    with pytest.raises(ConfigError, match="holds a checkpointed run of a different config"):
        run(cfg, str(tmp_path / "ckpt"))


def test_same_finished_run_returns_its_error_without_training(tmp_path):
    cfg = compose_config(["device=cpu", f"dataset.root={tmp_path / 'no-data-needed'}"])
    key = config_key(OmegaConf.to_container(cfg, resolve=True))
    run_dir = tmp_path / "run"
    before = _finished_record(run_dir, key, status="budget")
    assert run(cfg, str(run_dir)) == 0.125
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_corrupted_checkpoint_is_refused(tmp_path, fmnist_root, fmnist_bundle):
    cfg = tiny_config(fmnist_root, ["train.tensorboard=false"])
    key = config_key(OmegaConf.to_container(cfg, resolve=True))
    run_dir = tmp_path / "run"
    _finished_record(run_dir, key, status="preempted")
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match=r"checkpoint '.*checkpoint\.pt' cannot be loaded"):
        run(cfg, str(run_dir), fmnist_bundle)


# ---------------------------------------------------------------------------------- the CLI, exit 2

def _cli(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    cmd = [sys.executable, "-m", "selective_backprop.train", "device=cpu", "train.progress=false",
           f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    return proc, errors


def test_cli_refuses_bad_values_with_exit_2(tmp_path):
    proc, errors = _cli(tmp_path, "strategy=stale_sb", "strategy.staleness=0", f"dataset.root={tmp_path}")
    assert proc.returncode == 2 and len(errors) == 1 and "strategy.staleness" in errors[0], proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "summary.json").exists()


def test_cli_refuses_missing_data_with_exit_2(tmp_path):
    proc, errors = _cli(tmp_path, "dataset=cifar10", f"dataset.root={tmp_path / 'empty'}")
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout[-2000:]
    assert "dataset.root" in errors[0] and "CIFAR10" in errors[0]
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "tb").exists()


def test_cli_refuses_to_overwrite_another_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    before = _finished_record(run_dir, "0123456789abcdef")
    proc, errors = _cli(tmp_path, f"dataset.root={tmp_path}")
    assert proc.returncode == 2 and len(errors) == 1 and "different config" in errors[0], proc.stdout[-2000:]
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {k: after.get(k) for k in before} == before and "checkpoint.pt" not in after
    assert not (run_dir / "tb").exists()


def test_integer_epochs_and_null_cap_are_accepted(tmp_path):
    """Issue 15.5: epochs are counted in whole numbers; null (no epoch cap, another budget) stays legal."""
    base = ["device=cpu", f"dataset.root={tmp_path / 'data'}"]
    validate_config(compose_config(base + ["train.max_epochs=3", "train.eval_every=2", "train.checkpoint_every=3"]))
    validate_config(compose_config(base + ["train.max_epochs=null", "train.max_time_s=5"]))
    validate_config(compose_config(base + ["train.progress=true", "train.diverge_factor=null"]))


def _data_root_cli(tmp_path, root):
    cmd = [sys.executable, "-m", "selective_backprop.train", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "SB_DATA_ROOT": str(root), "SB_FASHION_MNIST_DIR": str(tmp_path / "no-debian"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "tb").exists()
    return errors[0]


@pytest.mark.parametrize("kind", ["file", "below_a_file", "unwritable"])
def test_data_root_that_is_a_file_or_unwritable_is_refused(tmp_path, kind):
    """Issue 15.6: SB_DATA_ROOT naming a file or an unwritable place: exit 2, one line naming it."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    root = {"file": a_file, "below_a_file": a_file / "data", "unwritable": Path("/sys/sb-data")}[kind]
    line = _data_root_cli(tmp_path, root)
    assert f"dataset.root: '{root}'" in line
    assert ("not writable" if kind == "unwritable" else "is a file") in line


def test_read_only_root_holding_the_files_is_fine(tmp_path, monkeypatch, fmnist_root, real_raw):
    """A shared data root that already holds the files needs no write access."""
    from selective_backprop.data.datasets import check_root

    monkeypatch.setattr("tempfile.TemporaryFile", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "denied")))
    check_root("fashion_mnist", fmnist_root)
    with pytest.raises(DataError, match=r"dataset\.root: '.*empty' is not writable"):
        check_root("fashion_mnist", tmp_path / "empty")


def test_decompressed_files_follow_the_umask(tmp_path):
    """Issue 15.6: decompressed data files get 0666 & ~umask (mkstemp's 0600 broke shared roots)."""
    from conftest import DEBIAN_FMNIST
    from selective_backprop.data.fashion_mnist_debian import decompress_debian

    if not (DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    old = os.umask(0o022)
    try:
        assert decompress_debian(tmp_path, DEBIAN_FMNIST)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in raw_folder(tmp_path).iterdir()}
    assert modes == {name: 0o644 for name in IDX_FILES}

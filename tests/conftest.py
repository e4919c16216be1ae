"""Shared fixtures: the real Hydra config, composed and shrunk for CPU tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
from selective_backprop.conf import CONFIG_DIR

CONF = Path(CONFIG_DIR)
DEBIAN_FMNIST = Path(os.environ.get("SB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

# One intra-op thread for the tests and the CLI subprocesses they start: on 2 shared cores a 2-thread
# pool waits on descheduled threads and runs small ops 10-50x slower (results/bench/cpu.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# Deterministic cuBLAS for deterministic=true runs on a GPU (tests/test_cuda.py's exact resume); read when
# cuBLAS starts, so set before any CUDA work. No effect on the CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`cuda` tests (`gpu` is an alias) are skipped only for lack of CUDA, or of the GPUs they ask
    for with @pytest.mark.cuda(gpus=N); `pytest -m cuda` selects them all (make gpu-check)."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if item.get_closest_marker("gpu") is not None and item.get_closest_marker("cuda") is None:
            item.add_marker(pytest.mark.cuda)
        marker = item.get_closest_marker("cuda")
        if marker is None:
            continue
        wanted = int(marker.kwargs.get("gpus", 1))
        if available < wanted:
            why = "needs a CUDA device" if available == 0 else f"needs {wanted} CUDA devices, {available} here"
            item.add_marker(pytest.mark.skip(reason=why))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The project's real config with overrides, as Hydra would compose it for a run."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []), return_hydra_config=False)


def tiny_config(tmp_root: Path, overrides: list[str] | None = None) -> DictConfig:
    """Fashion-MNIST subset, 2 epochs, CPU, no progress bar; data cached under the session's data root."""
    base = ["dataset.subset=512", "train.max_epochs=2", "device=cpu", "train.progress=false",
            "train.batch_size=64", "model.width=8", f"dataset.root={tmp_root}"]
    return compose_config(base + list(overrides or []))


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    """A data root holding real Fashion-MNIST (decompressed once per session from Debian's package)."""
    if not (DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail("Debian's dataset-fashion-mnist is missing in CI: .ci/run must install it")
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def fmnist_bundle(fmnist_root):
    """The real Fashion-MNIST bundle with a 512-example subset (shared by end-to-end tests)."""
    from selective_backprop.data import build_data
    cfg = tiny_config(fmnist_root)
    return build_data(cfg.dataset, int(cfg.seed))


def run_tiny(tmp_path: Path, fmnist_root: Path, overrides: list[str], bundle=None):
    """Train a tiny run in-process; returns (trainer, summary)."""
    from selective_backprop.engine.trainer import Trainer
    cfg = tiny_config(fmnist_root, overrides)
    trainer = Trainer(cfg, str(tmp_path / "run"), data_bundle=bundle)
    return trainer, trainer.fit()

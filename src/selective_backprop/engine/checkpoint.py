"""checkpoint.pt: everything an exact resume needs, as tensors and plain Python types.

The trainer builds the payload (see ``Trainer._checkpoint_state``); this module writes it atomically
and reads it back with ``torch.load(..., weights_only=True)``: nothing executable is ever loaded from
a run directory. Payloads therefore hold only tensors, numbers, strings, None, lists, tuples and dicts
(OmegaConf nodes and numpy scalars are converted by :func:`to_plain`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch

from selective_backprop.errors import ConfigError
from selective_backprop.record import CHECKPOINT_FILE

CHECKPOINT_NAME = CHECKPOINT_FILE
FORMAT_VERSION = 1
_TMP_PREFIX = f".{CHECKPOINT_NAME}.tmp"


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


def to_plain(obj: Any, clone: bool = False) -> Any:
    """`obj` with tensors detached on the CPU (copied when `clone`) and containers made plain."""
    if isinstance(obj, torch.Tensor):
        out = obj.detach().cpu()
        return out.clone() if clone and out.data_ptr() == obj.data_ptr() else out
    if isinstance(obj, dict):
        return {k: to_plain(v, clone) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, clone) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if hasattr(obj, "item") and type(obj).__module__ == "numpy":
        return obj.item()
    return obj


def remove_stale_temps(run_dir: str | Path) -> None:
    """Delete temp files a killed writer left behind (they were never renamed, so never valid)."""
    for tmp in Path(run_dir).glob(f"{_TMP_PREFIX}*"):
        tmp.unlink(missing_ok=True)


def save_checkpoint(payload: dict, path: str | Path, before_rename: Callable[[], None] | None = None) -> None:
    """Write `payload` to `path` atomically: a temp file in the same folder, fsync, then rename.

    A kill at any moment leaves either the previous checkpoint or the new one, never half a file.
    `before_rename` runs between the two (the test hook uses it).
    """
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(to_plain(payload), f)
        f.flush()
        os.fsync(f.fileno())
    if before_rename is not None:
        before_rename()
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems cannot fsync a directory
        pass


def check_world_size(path: str | Path, saved: int, running: int) -> None:
    """Refuse to resume a checkpoint written by another number of data-parallel processes (one line)."""
    if int(saved) != int(running):
        how = f"torchrun --nproc_per_node={saved} ..." if saved > 1 else "a single process (no torchrun)"
        raise ConfigError(f"checkpoint '{path}' was written by {saved} data-parallel process(es), this run has "
                          f"{running}; accepted: resume with the same number ({how}), or use another hydra.run.dir")


def saved_world_size(path: str | Path) -> int:
    """How many data-parallel processes wrote the checkpoint at `path` (memory-mapped: cheap; 1 for
    checkpoints from before data parallelism). ConfigError naming the file if unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
        return int(load_checkpoint(path).get("world_size", 1))      # the full load names the problem
    return int(state.get("world_size", 1)) if isinstance(state, dict) else 1


def load_checkpoint(path: str | Path) -> dict:
    """The payload at `path`, loaded on the CPU with weights_only=True; ConfigError naming the file if unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(f"checkpoint '{path}' cannot be loaded ({type(err).__name__}: {first}); "
                          f"move it away to start the run over") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"checkpoint '{path}' has format {found!r}; accepted: format {FORMAT_VERSION} "
                          f"written by this version (move it away to start the run over)")
    return state

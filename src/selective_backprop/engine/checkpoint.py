"""checkpoint.pt: everything an exact resume needs, as tensors and plain Python types.

The trainer builds the payload (see ``Trainer._checkpoint_state``); this module writes it atomically
and reads it back with ``torch.load(..., weights_only=True)``: nothing executable is ever loaded from
a run directory. Payloads therefore hold only tensors, numbers, strings, None, lists, tuples and dicts
(OmegaConf nodes and numpy scalars are converted by :func:`to_plain`).
"""

from __future__ import annotations

import errno
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
    try:
        with open(tmp, "wb") as f:
            torch.save(to_plain(payload), f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:          # the previous checkpoint stays; no partial file is left
        tmp.unlink(missing_ok=True)
        full = _disk_full(err)
        if full is not None:
            kept = "the previous checkpoint.pt is kept" if path.exists() else "no checkpoint.pt was written yet"
            raise DiskFullError(full.errno, f"no space left on the device of '{path.parent}' while writing "
                                f"checkpoint.pt ({full.strerror}): {kept} and the partial file removed; free "
                                f"some space and re-run the same command to resume") from err
        raise
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


class DiskFullError(OSError):
    """The device of the run directory is full (ENOSPC / EDQUOT); the message says what was kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def _disk_full(err: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT OSError behind `err` (torch.save reports it as a RuntimeError from its C++
    writer, with the OSError as context), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None


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


def _load_failure(err: BaseException) -> str:
    """What went wrong, in a few words: torch's weights-only message names the unpickler's complaint and
    advises loading with weights_only=False, which is never done with a run directory's files (it would run
    whatever code the file holds), so that advice is left out."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    if lines and lines[0].startswith(advice[0]):
        lines = [ln.replace("WeightsUnpickler error:", "").strip() for ln in lines if not ln.startswith(advice)]
        lines = [ln for ln in lines if ln] or ["content a weights-only load refuses"]
    first = lines[0] if lines else "unreadable"
    return ". ".join(part for part in first.split(". ") if "weights_only" not in part) or "unreadable"


def load_checkpoint(path: str | Path) -> dict:
    """The payload at `path`, loaded on the CPU with weights_only=True; ConfigError naming the file if unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"checkpoint '{path}' cannot be loaded ({type(err).__name__}: {_load_failure(err)}); "
                          f"it is not a checkpoint this program wrote, or a damaged one; move it away to start "
                          f"the run over") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"checkpoint '{path}' has format {found!r}; accepted: format {FORMAT_VERSION} "
                          f"written by this version (move it away to start the run over)")
    return state

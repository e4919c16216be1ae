"""Data parallelism: who this process is, and the few collectives a data-parallel run needs.

A run is data parallel when it is started as K > 1 processes, by
``torchrun --nproc_per_node=K -m selective_backprop.train ...`` (RANK / WORLD_SIZE / MASTER_ADDR set by
torchrun) or as K Slurm tasks of a submitit job (``hydra.launcher.tasks_per_node=K``).
:func:`init_from_env` then starts the process group: NCCL when the run trains on CUDA, gloo on the
CPU. Host-side decisions (how many packed batches every rank takes, the preemption and budget flags,
Kath18's gate) travel on a CPU gloo group as well, so they never wait for the device.

With one process there is no process group and :data:`SINGLE` stands in: every collective is then
the identity, `shard` returns the source and `wrap` the model, so callers have one code path and a
single-process run computes exactly what it did before data parallelism existed.

Decisions (see README "Scaling out"):

* ``train.batch_size`` is the *global* batch b: each of K ranks trains on b/K examples per step,
  so steps, the learning-rate schedule and the config's meaning do not depend on K.
* each epoch's permutation is truncated to a multiple of K and cut into K equal slices, one per
  rank (:class:`ShardedSource`); an epoch in the ``considered`` unit is those K * floor(N/K) examples.
* rank r > 0 draws (selection, augmentation, dropout) from streams derived from (seed, r); rank 0
  uses the single-process streams.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from selective_backprop.errors import ConfigError
from selective_backprop.sources.source import Batch, derive_seed

log = logging.getLogger(__name__)

_RANK_STREAM = 6                 # derive_seed(seed, rank, 6): a rank's own generator seed
_BARRIER_TIMEOUT = datetime.timedelta(minutes=10)
HYDRA_FILES = (".hydra",)        # what Hydra writes into a run dir before the task starts (+ *.log)


class Dist:
    """A process's place in the run; with world_size 1 every method is the identity (no collective)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, control: Any = None):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self._control = control           # CPU gloo group for host scalars (None: the default group)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Dist(rank={self.rank}, world_size={self.world_size})"

    # -- what a rank trains ----------------------------------------------------------------------
    def shard(self, source: Any) -> Any:
        """This rank's view of a data source (ShardedSource); the source itself in a single process."""
        return source if self.world_size == 1 else ShardedSource(source, self.rank, self.world_size)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the training forward runs (DistributedDataParallel, which averages gradients over
        ranks); the model itself in a single process. Selection and evaluation use the bare model."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def local_device(self, device: torch.device) -> torch.device:
        """`cuda` without an index means this process's current device (cuda:LOCAL_RANK under torchrun)."""
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def split_batch(self, global_batch: int) -> int:
        """This rank's share b/K of the global batch `train.batch_size` (b itself in a single process)."""
        k = self.world_size
        if global_batch % k:
            raise ConfigError(f"train.batch_size={global_batch}: not divisible by the {k} data-parallel "
                              f"processes; accepted: a multiple of {k} (the global batch, split evenly over "
                              f"the ranks)")
        return global_batch // k

    def share(self, count: int) -> int:
        """This rank's share of a per-run count, rounded up (ceil(count / K); `count` in a single process)."""
        return -(-count // self.world_size)

    # -- seeds ---------------------------------------------------------------------------------
    def rank_seed(self, seed: int) -> int:
        """This rank's generator seed: `seed` on rank 0 (the single-process stream), derived elsewhere."""
        return int(seed) if self.rank == 0 else derive_seed(int(seed), self.rank, _RANK_STREAM)

    # -- host scalars (control plane) ----------------------------------------------------------
    def _reduce(self, values: Sequence, dtype: torch.dtype, op: str) -> list:
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=dtype)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op), group=self._control)
        return t.tolist()

    def min_int(self, value: int) -> int:
        return int(self._reduce([value], torch.int64, "MIN")[0])

    def max_int(self, value: int) -> int:
        return int(self._reduce([value], torch.int64, "MAX")[0])

    def sum_ints(self, values: Sequence[int]) -> list[int]:
        return [int(v) for v in self._reduce(values, torch.int64, "SUM")]

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in self._reduce(values, torch.float64, "SUM")]

    def max_floats(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in self._reduce(values, torch.float64, "MAX")]

    def any_flags(self, flags: Sequence[bool]) -> list[bool]:
        """Element-wise OR over ranks (one collective for several flags)."""
        return [bool(v) for v in self._reduce([int(bool(f)) for f in flags], torch.int64, "MAX")]

    def all_true(self, flag: bool) -> bool:
        return bool(self._reduce([int(bool(flag))], torch.int64, "MIN")[0])

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self._control)
        return box[0]

    def gather_objects(self, obj: Any) -> list | None:
        """Every rank's `obj` (picklable, CPU tensors) on rank 0, in rank order; None on other ranks."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self._control)
        return out

    def barrier(self, timeout_s: float | None = None) -> None:
        """Wait for every rank (bounded: raises after `timeout_s`, default 10 minutes, instead of hanging)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        timeout = _BARRIER_TIMEOUT if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        dist.monitored_barrier(group=self._control, timeout=timeout, wait_all_ranks=True)

    # -- device tensors (data plane: NCCL on CUDA, gloo on the CPU) ---------------------------
    def all_gather_cat(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's `t` concatenated along dim 0 in rank order (lengths may differ: padded for the
        exchange, then cut), and where this rank's rows start in it."""
        if not self.enabled:
            return t, 0
        import torch.distributed as dist

        sizes = torch.tensor([t.shape[0]], dtype=torch.int64)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world_size)]
        dist.all_gather(all_sizes, sizes, group=self._control)
        lengths = [int(s) for s in all_sizes]
        longest = max(lengths)
        padded = t if t.shape[0] == longest else torch.cat([t, t.new_zeros((longest - t.shape[0], *t.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        joined = torch.cat([p[:n] for p, n in zip(parts, lengths)])
        return joined, sum(lengths[:self.rank])

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks of a device tensor (returns it)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a device tensor (a new tensor; no host sync)."""
        if not self.enabled:
            return t
        out = t.detach().clone().reshape(1)
        self.sum_(out)
        return (out / self.world_size).reshape(t.shape).to(t.dtype)

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank; parameters are kept equal by DDP."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf, src=0)

    # -- the Hydra run directory -----------------------------------------------------------------
    def agree_output_dir(self, output_dir: str) -> str:
        """Rank 0's output directory on every rank; a non-zero rank removes the one its own Hydra made.

        Each rank composes the config itself, so `${now:...}` in hydra.run.dir can differ between ranks.
        A non-zero rank's directory is deleted when it differs from rank 0's and holds nothing but what
        Hydra puts there (`.hydra/`, `*.log`); anything else is left alone, with a warning.
        """
        chosen = self.broadcast_object(str(output_dir))
        if self.rank != 0 and os.path.abspath(output_dir) != os.path.abspath(chosen):
            _remove_stray_run_dir(Path(output_dir), Path(chosen))
        return chosen


SINGLE = Dist()
_current: Dist | None = None


def _remove_stray_run_dir(stray: Path, keep: Path) -> None:
    if not stray.is_dir():
        return
    extra = [p.name for p in stray.iterdir() if p.name not in HYDRA_FILES and p.suffix != ".log"]
    if extra:
        log.warning("rank's own Hydra run dir %s holds %s: left in place", stray, ", ".join(sorted(extra)))
        return
    shutil.rmtree(stray, ignore_errors=True)
    parent = stray.parent
    try:                     # e.g. outputs/<date>/ made for this dir alone
        if parent != keep.parent and parent not in keep.parents and not any(parent.iterdir()):
            parent.rmdir()
    except OSError:
        pass


def _slurm_or_submitit_env() -> dict[str, str] | None:
    """RANK/WORLD_SIZE/... for K > 1 tasks of a submitit job (Slurm or local executor), else None."""
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    if executor not in ("slurm", "local"):
        return None
    try:
        import submitit
        job = submitit.JobEnvironment()
        ntasks = job.num_tasks
    except Exception:          # not inside a submitit job after all
        return None
    if ntasks <= 1:
        return None
    if executor == "local":
        master = "127.0.0.1"
    else:
        master = job.hostnames[0]
    port = int(hashlib.sha256(str(job.job_id).encode()).hexdigest(), 16) % 20000 + 20000
    return {"RANK": str(job.global_rank), "WORLD_SIZE": str(ntasks), "LOCAL_RANK": str(job.local_rank),
            "MASTER_ADDR": master, "MASTER_PORT": str(port)}


def launched_world_size() -> int:
    """K as set by the launcher (torchrun or submitit tasks), before any process group exists; 1 if none."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    env = _slurm_or_submitit_env()
    return int(env["WORLD_SIZE"]) if env else 1


def launched_rank() -> int:
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    env = _slurm_or_submitit_env()
    return int(env["RANK"]) if env else 0


def init_from_env(device: str = "auto") -> Dist:
    """Start the process group when this process is one of K > 1 launched ones; returns current().

    Backend: NCCL when the run trains on CUDA (`device` auto with a GPU, or cuda), each rank on
    cuda:LOCAL_RANK; gloo otherwise. A single process (or torchrun with one) starts nothing.
    """
    import torch.distributed as dist

    if not dist.is_available():
        return SINGLE
    if dist.is_initialized():
        return current()
    if "WORLD_SIZE" not in os.environ:
        for key, value in (_slurm_or_submitit_env() or {}).items():
            os.environ.setdefault(key, value)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(device) != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    atexit.register(_shutdown)
    return current()


def _shutdown() -> None:
    import torch.distributed as dist

    global _current
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:          # pragma: no cover - best effort at exit
            pass
    _current = None


def current() -> Dist:
    """The running process group as a Dist (built once; its gloo control group too), or SINGLE."""
    global _current
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    if _current is None:
        control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        _current = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), control)
    return _current


class ShardedSource:
    """A data source seen by one rank: its equal slice of every epoch's order (same interface).

    `permutation(epoch)` and `with_replacement(epoch, count)` are the full source's streams, truncated
    to a multiple of K and sliced: rank r gets positions [r*m, (r+1)*m), m = floor(len/K). `len()` stays
    the dataset size (tables such as Stale-SB's are indexed by dataset index). `batches` passes a
    per-rank augmentation key instead of the epoch on ranks r > 0, so ranks do not share crop/flip draws.
    """

    def __init__(self, inner: Any, rank: int, world_size: int):
        self.inner = inner
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _slice(self, order: torch.Tensor) -> torch.Tensor:
        per = order.shape[0] // self.world_size
        return order[self.rank * per:(self.rank + 1) * per]

    def permutation(self, epoch: int) -> torch.Tensor:
        return self._slice(self.inner.permutation(epoch))

    def with_replacement(self, epoch: int, count: int) -> torch.Tensor:
        return self._slice(self.inner.with_replacement(epoch, count))

    def batches(self, indices: torch.Tensor, batch_size: int, epoch: int = 0) -> Iterator[Batch]:
        key = epoch if self.rank == 0 else derive_seed(epoch, self.rank, _RANK_STREAM)
        return self.inner.batches(indices, batch_size, key)

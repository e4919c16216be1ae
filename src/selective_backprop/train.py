"""Training entry point: `python -m selective_backprop.train [overrides]` or `sb-train [overrides]`.

Re-running a command with the same output directory (`hydra.run.dir=...`) resumes it from its
checkpoint.pt, or returns at once if it already finished. Exit codes (single run):

* 0  completed, stopped by the time budget, or already complete;
* 2  refused before any work: a bad config value, missing/corrupted data, or an output directory
     holding a different run (one ERROR line naming the field or file; nothing is written there);
* 3  diverged: the training loss became NaN/inf (one ERROR line; summary.json status "diverged");
* 1  any other failure during the run (summary.json status "failed", with the error);
* 75 preempted by SIGTERM/SIGINT (EX_TEMPFAIL from sysexits.h): the checkpoint is on disk and
     re-running the same command resumes it; a cluster's requeue can act on this code.

In a Hydra multirun (`-m`) a failing job raises instead of exiting, so Hydra records it as failed and
runs the remaining jobs; Hydra then reports the first failure and exits 1. Preemption stops the sweep (75).

Data parallel: `torchrun --nproc_per_node=K -m selective_backprop.train ...` (or K submitit tasks per
job) trains with DistributedDataParallel, see distributed.py. Every rank runs this entry point;
they all use rank 0's output directory, and only rank 0 writes there (Hydra's own files included).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from selective_backprop.errors import ConfigError
from selective_backprop.record import CHECKPOINT_FILE, SUMMARY_FILE, Status, build_summary, write_summary

log = logging.getLogger("selective_backprop")

EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75   # EX_TEMPFAIL: "temporary failure, the user is invited to retry"


def _write_failed_summary(cfg: DictConfig, output_dir: str, err: BaseException) -> None:
    """summary.json with status "failed" for an error before training started (the trainer writes its own)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    summary = build_summary(config, Status.FAILED, error=f"{type(err).__name__}: {err}", final_test_error=None,
                            dataset=cfg.dataset.name, model=cfg.model.name, strategy=cfg.strategy.name,
                            seed=int(cfg.seed))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_summary(output_dir, summary)


def write_failed_job_summary(cfg: DictConfig, output_dir: str, err: BaseException) -> None:
    """A sweep job refused before any work still leaves summary.json (status "failed", the error), so the
    analysis lists it; never where the directory already holds a run record (nothing is overwritten)."""
    run_dir = Path(output_dir)
    if (run_dir / SUMMARY_FILE).exists() or (run_dir / CHECKPOINT_FILE).exists():
        return
    try:
        _write_failed_summary(cfg, output_dir, err)
    except Exception as exc:             # a config too broken to record (e.g. an unresolvable value)
        log.warning("could not write the failed job's summary.json in %s: %s: %s", output_dir,
                    type(exc).__name__, exc)


# Files of a run's .hydra/ snapshot as they were before Hydra rewrote them for the current job
# (path -> previous bytes, None when the file is new): restored when the job is refused, so a directory
# holding another run keeps a snapshot that agrees with its summary.json.
_SNAPSHOT_BEFORE: dict[Path, bytes | None] = {}


def _keep_snapshot_backups() -> None:
    """Wrap Hydra's `_save_config` (which writes .hydra/{config,hydra,overrides}.yaml before the task
    runs) so that the files it overwrites are kept in memory (_SNAPSHOT_BEFORE). Idempotent; installed at
    import, so a submitit job (which unpickles _hydra_main, importing this module) has it too."""
    import hydra.core.utils as hydra_utils

    original = hydra_utils._save_config
    if getattr(original, "_keeps_backup", False):
        return

    def save_config(cfg, filename, output_dir):
        path = Path(output_dir) / filename
        _SNAPSHOT_BEFORE[path] = path.read_bytes() if path.is_file() else None
        return original(cfg, filename, output_dir)

    save_config._keeps_backup = True
    hydra_utils._save_config = save_config


def _restore_snapshot(output_dir: str) -> None:
    """Put back the .hydra/ files of `output_dir` that Hydra overwrote for this (refused) job."""
    root = Path(output_dir).resolve()
    for path, before in list(_SNAPSHOT_BEFORE.items()):
        if root in path.resolve().parents and before is not None:
            path.write_bytes(before)


def _forget_snapshot(output_dir: str) -> None:
    root = Path(output_dir).resolve()
    for path in [p for p in _SNAPSHOT_BEFORE if root in p.resolve().parents]:
        del _SNAPSHOT_BEFORE[path]


_keep_snapshot_backups()


def run(cfg: DictConfig, output_dir: str, data_bundle=None) -> float:
    """Train one run described by `cfg`, writing its record to `output_dir`; returns the final test error.

    Validates the config and the output directory first (ConfigError, nothing written); resumes from
    `output_dir`/checkpoint.pt when it holds this run; returns the recorded error at once when this run
    already finished there. Raises Preempted when SIGTERM/SIGINT stopped it (see train.main).
    """
    from selective_backprop.engine import checkpoint as ckpt
    from selective_backprop import distributed
    from selective_backprop.engine.trainer import Preempted, Trainer
    from selective_backprop.validate import check_run_dir, validate_config

    validate_config(cfg)
    state = check_run_dir(cfg, output_dir)
    if state.finished:
        error = state.summary.get("final_test_error")
        log.info("run dir %s already holds this run, finished (%s): final test error %s; nothing to do",
                 output_dir, state.summary["status"], error)
        return float("nan") if error is None else float(error)
    dist = distributed.current()
    if state.checkpoint is not None:      # another number of processes: refused before any work
        ckpt.check_world_size(state.checkpoint, ckpt.saved_world_size(state.checkpoint), dist.world_size)
    try:
        trainer = Trainer(cfg, output_dir, data_bundle=data_bundle)
        resumed = trainer.resume(state.checkpoint) if state.checkpoint is not None else None
    except ConfigError:
        raise
    except Exception as err:
        if dist.is_main:
            _write_failed_summary(cfg, output_dir, err)
        raise
    log.info("run dir: %s | %s on %s, %s, strategy %s %s", output_dir, cfg.model.name, cfg.dataset.name,
             trainer.device, trainer.strategy.name, trainer.strategy_params())
    if resumed is not None:
        log.info("resuming from %s: %d epochs done, %d evaluations recorded", state.checkpoint, resumed,
                 len(trainer.eval_rows))
    summary = trainer.fit()
    if summary["status"] == Status.PREEMPTED:
        where = (f"checkpoint.pt holds epoch {trainer.saved_epoch}" if trainer.saved_epoch is not None
                 else "no epoch was completed, so it restarts from scratch")
        raise Preempted(f"preempted by {_signal_name()}: stopped at step {summary['steps']}; "
                        f"{where}; re-run the same command (same hydra.run.dir) to resume (exit {EXIT_PREEMPTED})")
    error = summary["final_test_error"]
    log.info("finished (%s): final test error %s, train %.1fs, run dir %s", summary["status"],
             "n/a" if error is None else f"{error:.4f}", summary["train_s"], output_dir)
    return float("nan") if error is None else float(error)


def _signal_name() -> str:
    from selective_backprop.engine.control import PREEMPTION

    return signal.Signals(PREEMPTION.signum).name if PREEMPTION.signum is not None else "?"


def install_preemption_handlers(repeat_grace_s: float = 0.0) -> None:
    """SIGTERM/SIGINT set the trainer's preemption flag (the CLI process only; never in library use).

    The trainer stops at the next step boundary, writes the last epoch boundary's checkpoint and
    summary.json status "preempted"; main() exits 75. A second signal aborts at once (KeyboardInterrupt);
    checkpoint.pt is written atomically, so the one on disk stays valid. A second signal within
    `repeat_grace_s` of the first is taken for the same request and ignored: data-parallel workers can
    get the cluster's SIGTERM and torchrun's forwarded copy of it.
    """
    from selective_backprop.engine.control import PREEMPTION

    first: list[float] = []

    def handler(signum, frame):
        if PREEMPTION.requested:
            if first and time.monotonic() - first[0] < repeat_grace_s:
                return
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting")
        first[:] = [time.monotonic()]
        PREEMPTION.request(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _quiet_nonzero_rank() -> None:
    """A data-parallel rank r > 0 logs warnings and errors only (rank 0 reports the run) and to the
    console only: the run directory's Hydra log file is rank 0's."""
    logging.getLogger("selective_backprop").setLevel(logging.WARNING)
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler):
            logging.getLogger().removeHandler(handler)
            handler.close()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    """Hydra entry: returns the final test error (what a sweeper optimises); exit codes in the module doc."""
    from selective_backprop import distributed
    from selective_backprop.engine.trainer import DivergedError, Preempted

    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    dist = distributed.init_from_env(str(cfg.get("device", "auto")))    # no-op for a single process
    install_preemption_handlers(repeat_grace_s=10.0 if dist.enabled else 0.0)
    if dist.enabled:
        if not dist.is_main:
            _quiet_nonzero_rank()
        output_dir = dist.agree_output_dir(output_dir)
    # errors every rank meets alike (config, divergence, preemption) are reported by rank 0 alone
    report = log.warning if dist.is_main else log.debug
    from selective_backprop.validate import check_added_keys
    try:
        check_added_keys(hydra_cfg.overrides.task, hydra_cfg.runtime.choices)    # `+typo=...`
        return run(cfg, output_dir)
    except Preempted as err:
        report("%s", err)
        sys.exit(EXIT_PREEMPTED)
    except (ConfigError, DivergedError) as err:
        kind = "diverged: " if isinstance(err, DivergedError) else ""
        (log.error if dist.is_main else log.debug)("%s%s", kind, err)
        if isinstance(err, ConfigError) and dist.is_main:
            _restore_snapshot(output_dir)           # a refused job leaves the directory as it was
            if multirun:
                write_failed_job_summary(cfg, output_dir, err)
        if multirun:        # Hydra's launcher marks this job failed and runs the others
            raise
        sys.exit(EXIT_DIVERGED if isinstance(err, DivergedError) else EXIT_CONFIG)
    finally:
        _forget_snapshot(output_dir)


# Overrides that keep Hydra itself from writing into the run directory on a data-parallel rank r > 0
# (no .hydra/ snapshot, no log file): rank 0 writes those.
_NONZERO_RANK_HYDRA = ("hydra.output_subdir=null", "hydra/job_logging=stdout")


def main() -> None:
    """Console entry point (`sb-train`, `python -m selective_backprop.train`): Hydra's main, after telling
    Hydra on a data-parallel rank r > 0 not to write its files (see _NONZERO_RANK_HYDRA)."""
    from selective_backprop import distributed

    if distributed.launched_world_size() > 1 and distributed.launched_rank() > 0:
        given = {arg.split("=", 1)[0].lstrip("+~") for arg in sys.argv[1:] if "=" in arg}
        sys.argv += [o for o in _NONZERO_RANK_HYDRA if o.split("=", 1)[0] not in given]
    _hydra_main()


if __name__ == "__main__":
    main()

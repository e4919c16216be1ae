"""Training entry point: `python -m selective_backprop.train [overrides]` or `sb-train [overrides]`.

Re-running a command with the same output directory (`hydra.run.dir=...`) resumes it from its
checkpoint.pt, or returns at once if it already finished. Exit codes (single run):

* 0  completed, stopped by the time budget, or already complete;
* 2  refused before any work: a bad config value, key or option, missing/corrupted data, an output
     directory that is a file or not writable, holds a different run, or is in use by another live
     process (run.lock), or a finished run whose evaluations cannot be rebuilt (one ERROR line naming
     the field or file; nothing is written there);
* 3  diverged: the training loss became NaN/inf (one ERROR line; summary.json status "diverged");
* 1  any other failure during the run (summary.json status "failed", with the error); one ERROR line
     for a run that ended without one optimizer step and for a full disk;
* 75 preempted by SIGTERM/SIGINT (EX_TEMPFAIL from sysexits.h): the checkpoint is on disk and
     re-running the same command resumes it; a cluster's requeue can act on this code;
* 128 + signal: aborted by a second SIGTERM/SIGINT (summary.json status "aborted"; resumable).

In a Hydra multirun (`-m`) a failing job raises instead of exiting, so Hydra records it as failed and
runs the remaining jobs; Hydra then reports the first failure and exits 1. Preemption stops the sweep (75).

Data parallel: `torchrun --nproc_per_node=K -m selective_backprop.train ...` (or K submitit tasks per
job) trains with DistributedDataParallel, see distributed.py. Every rank runs this entry point;
they all use rank 0's output directory, and only rank 0 writes there (Hydra's own files included).
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

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

    Validates the config and the output directory first (ConfigError, nothing written); takes the
    directory's lock (engine/run_lock.py: a second live process is refused with RunDirLocked) for the
    whole run; resumes from `output_dir`/checkpoint.pt when it holds this run; returns the recorded
    error at once when this run already finished there (rebuilding its metrics.jsonl from checkpoint.pt
    if that file was truncated or deleted). Raises Preempted when SIGTERM/SIGINT stopped it (see
    train.main), NoTrainingStep when it ended without an optimizer step.
    """
    from selective_backprop.cli_errors import check_output_dir
    from selective_backprop import distributed
    from selective_backprop.engine.run_lock import lock_run_dir
    from selective_backprop.validate import validate_config

    validate_config(cfg)
    check_output_dir(output_dir, "hydra.run.dir")
    with lock_run_dir(output_dir, distributed.current()):
        return _run_locked(cfg, output_dir, data_bundle)


def _run_locked(cfg: DictConfig, output_dir: str, data_bundle=None) -> float:
    from selective_backprop.engine import checkpoint as ckpt
    from selective_backprop import distributed
    from selective_backprop.engine.record_repair import repair_metrics
    from selective_backprop.engine.trainer import Preempted, Trainer
    from selective_backprop.validate import check_run_dir

    state = check_run_dir(cfg, output_dir)
    if state.finished:
        if distributed.current().is_main:
            repair_metrics(output_dir, state.summary)
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


class Aborted(KeyboardInterrupt):
    """A second SIGTERM/SIGINT: the run stops at once (summary.json status "aborted"; exit 128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(f"second {signal.Signals(signum).name}")
        self.signum = signum


def install_preemption_handlers(repeat_grace_s: float = 0.0) -> None:
    """SIGTERM/SIGINT set the trainer's preemption flag (the CLI process only; never in library use).

    The trainer stops at the next step boundary, writes the last epoch boundary's checkpoint and
    summary.json status "preempted"; main() exits 75. A second signal aborts at once (Aborted, a
    KeyboardInterrupt: summary.json status "aborted", exit 128 + signal); checkpoint.pt is written atomically, so the one on disk stays valid. A second signal within
    `repeat_grace_s` of the first is taken for the same request and ignored: data-parallel workers can
    get the cluster's SIGTERM and torchrun's forwarded copy of it.
    """
    from selective_backprop.engine.control import PREEMPTION

    first: list[float] = []

    def handler(signum, frame):
        if PREEMPTION.requested:
            if first and time.monotonic() - first[0] < repeat_grace_s:
                return
            raise Aborted(signum)
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
    from selective_backprop.engine.run_lock import RunDirLocked
    from selective_backprop.engine.trainer import DivergedError, NoTrainingStep, Preempted

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
    failure = log.error if dist.is_main else log.debug
    from selective_backprop.validate import check_added_keys
    try:
        check_added_keys(hydra_cfg.overrides.task, hydra_cfg.runtime.choices)    # `+typo=...`
        return run(cfg, output_dir)
    except Preempted as err:
        report("%s", err)
        sys.exit(EXIT_PREEMPTED)
    except (ConfigError, DivergedError) as err:
        kind = "diverged: " if isinstance(err, DivergedError) else ""
        failure("%s%s", kind, err)
        if isinstance(err, ConfigError) and dist.is_main:
            _restore_snapshot(output_dir)           # a refused job leaves the directory as it was
            if multirun and not isinstance(err, RunDirLocked):     # never write into another run's directory
                write_failed_job_summary(cfg, output_dir, err)
        if multirun:        # Hydra's launcher marks this job failed and runs the others
            raise
        sys.exit(EXIT_DIVERGED if isinstance(err, DivergedError) else EXIT_CONFIG)
    except NoTrainingStep as err:
        failure("trained nothing: %s (summary.json status \"failed\")", err)
        if multirun:
            raise
        sys.exit(EXIT_FAILED)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        failure("%s", _disk_full_message(err))
        if multirun:
            raise
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt as err:       # a second SIGTERM/SIGINT (Aborted), or Ctrl-C without handlers
        failure("aborted by %s: summary.json status \"aborted\"; re-run the same command (same hydra.run.dir) "
                "to resume from the last checkpoint.pt", str(err) or "SIGINT")
        sys.exit(128 + getattr(err, "signum", signal.SIGINT))
    finally:
        _forget_snapshot(output_dir)


def _disk_full_message(err: OSError) -> str:
    """One line for a full device during the run (the checkpoint writer's message says what it kept)."""
    from selective_backprop.engine.checkpoint import DiskFullError

    if isinstance(err, DiskFullError):
        return str(err)
    where = f" writing '{err.filename}'" if err.filename else ""
    return (f"no space left on the device{where} ({err.strerror}): the records so far and the last checkpoint.pt "
            f"are kept; free some space and re-run the same command to resume")


# Overrides that keep Hydra itself from writing into the run directory on a data-parallel rank r > 0
# (no .hydra/ snapshot, no log file): rank 0 writes those.
_NONZERO_RANK_HYDRA = ("hydra.output_subdir=null", "hydra/job_logging=stdout")


def _raised_in_task(err: BaseException) -> bool:
    """Whether `err` came out of the task function (the run) rather than Hydra's own preparation."""
    task = getattr(_hydra_main, "__wrapped__", _hydra_main).__code__
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is task:
            return True
        tb = tb.tb_next
    return False


# The output directory of the job Hydra is preparing (and whether it is a sweep's), as Hydra's own config
# last named it: Hydra resets that config when preparing the directory fails, so it is kept here.
_JOB_DIR: dict[str, Any] = {}


def _remember_job_dir() -> None:
    """Wrap HydraConfig.set_config so the job's output directory is known when Hydra fails to create it
    (see _output_dir_problem). Idempotent."""
    original = HydraConfig.set_config
    if getattr(original, "_remembers", False):
        return

    def set_config(self, cfg):
        output_dir = OmegaConf.select(cfg, "hydra.runtime.output_dir", default=None, throw_on_resolution_failure=False)
        if output_dir:
            _JOB_DIR.update(dir=str(output_dir), multirun=OmegaConf.select(cfg, "hydra.mode", default=None)
                            == RunMode.MULTIRUN)
        return original(self, cfg)

    set_config._remembers = True
    HydraConfig.set_config = set_config


def _output_dir_problem() -> str | None:
    """The one-line reason Hydra could not prepare the job's output directory (a file, under a file, not
    writable), or None when it is usable or not known yet."""
    from selective_backprop.cli_errors import check_output_dir

    if not _JOB_DIR.get("dir"):
        return None
    try:
        check_output_dir(_JOB_DIR["dir"], "hydra.sweep.dir" if _JOB_DIR.get("multirun") else "hydra.run.dir")
    except ConfigError as err:
        return str(err)
    return None


def _before_task_message(err: Exception) -> str | None:
    """One line for an error Hydra raised before the task ran: a config it could not compose or resolve
    (unknown key, unknown option, bad interpolation or syntax), or an unusable output directory."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from selective_backprop.cli_errors import describe_config_error

    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return describe_config_error(err)
    return _output_dir_problem()


def _one_line_config_errors() -> None:
    """Hydra prints its composition errors over several lines (or a traceback: an output directory that
    is a file, a log file that cannot be opened) and exits 1. Wrap its `run_and_report` so such an error,
    raised before the task runs, becomes one `ERROR ...` line with the valid names and exit 2 (as every
    other refused input); errors of the run itself keep Hydra's handling. Idempotent."""
    import hydra._internal.utils as hydra_internal

    from selective_backprop.cli_errors import report_bad_input

    original = hydra_internal.run_and_report
    if getattr(original, "_one_line", False):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except Exception as err:
                message = None if _raised_in_task(err) else _before_task_message(err)
                if message is None:
                    raise
                sys.exit(report_bad_input(ConfigError(message)))
        return original(guarded)

    run_and_report._one_line = True
    hydra_internal.run_and_report = run_and_report


def main() -> None:
    """Console entry point (`sb-train`, `python -m selective_backprop.train`): Hydra's main, after telling
    Hydra on a data-parallel rank r > 0 not to write its files (see _NONZERO_RANK_HYDRA) and to report a
    config it cannot compose in one line (_one_line_config_errors)."""
    from selective_backprop import distributed

    if distributed.launched_world_size() > 1 and distributed.launched_rank() > 0:
        given = {arg.split("=", 1)[0].lstrip("+~") for arg in sys.argv[1:] if "=" in arg}
        sys.argv += [o for o in _NONZERO_RANK_HYDRA if o.split("=", 1)[0] not in given]
    _one_line_config_errors()
    _remember_job_dir()
    _hydra_main()


if __name__ == "__main__":
    main()

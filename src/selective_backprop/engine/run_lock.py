"""One process trains into a run directory at a time: the lock file `run.lock`.

`RunDirLock(run_dir)` takes `run_dir/run.lock` when a run starts and removes it when the run ends,
however it ends (completed, budget, preempted, failed, diverged, Ctrl-C): `with RunDirLock(...)`.
A second process on the same directory is refused with `RunDirLocked` (a ConfigError: one line
naming the directory and the holder's pid and host; exit 2 at the CLI) while the holder lives.

The file is written whole to a temporary name and hard-linked to `run.lock`: the link is atomic
and fails when the name exists, on local disks and on NFS alike, so a reader never sees half a lock
and two starters never both win (a filesystem without hard links gets `O_CREAT | O_EXCL`). It holds JSON: `pid`, `host`, `started`, `heartbeat` (Unix
seconds) and a random `token`. While the run lives a daemon thread refreshes `heartbeat` every
`HEARTBEAT_S` seconds. A lock is stale, and the next run takes it over, when its holder ran on this
host and its pid is gone (SIGKILL, a crash), or when its heartbeat is older than `STALE_S` seconds
(a holder on another node that died: the Slurm path). Under data parallelism only rank 0 takes the
lock; every rank learns whether it got it (`lock_run_dir`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selective_backprop.errors import ConfigError
from selective_backprop.record import LOCK_FILE

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0       # how often a live run refreshes its lock
STALE_S = 600.0          # a lock whose heartbeat is older than this is taken over (its holder is gone)


class RunDirLocked(ConfigError):
    """Another live process is training into this run directory."""


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def read_lock(path: Path) -> dict | None:
    """The lock's fields, {} for an unreadable lock file, None when there is none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stale_reason(holder: dict, path: Path, now: float | None = None) -> str | None:
    """Why the lock `holder` (read from `path`) no longer protects a live run, or None if it does."""
    now = time.time() if now is None else now
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)):          # unreadable: judge by the file's age
        try:
            beat = path.stat().st_mtime
        except OSError:
            return "gone"
    if now - beat > STALE_S:
        return f"its heartbeat is {now - beat:.0f} s old (> {STALE_S:.0f} s)"
    pid = holder.get("pid")
    if holder.get("host") == _host() and isinstance(pid, int) and not _pid_alive(pid):
        return f"pid {pid} is gone"
    return None


def describe(holder: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    started = holder.get("started")
    since = (datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S")
             if isinstance(started, (int, float)) else "?")
    beat = holder.get("heartbeat")
    age = f", heartbeat {now - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {since}{age})"


class RunDirLock:
    """The lock on `run_dir` (created if missing); a context manager, or acquire() / release()."""

    def __init__(self, run_dir: str | os.PathLike[str], heartbeat_s: float = HEARTBEAT_S):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_FILE
        self.heartbeat_s = heartbeat_s
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._created: list[Path] = []
        self.held = False

    # -- the file --------------------------------------------------------------------------------
    def _payload(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": _host(), "started": self._started,
                           "heartbeat": time.time(), "token": self.token}) + "\n"

    def _write_temp(self) -> Path:
        tmp = self.dir / f".{LOCK_FILE}.{self.token}.tmp"
        with open(tmp, "w") as f:
            f.write(self._payload())
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _try_link(self) -> bool:
        """Create run.lock atomically (whole content); False when it already exists."""
        tmp = self._write_temp()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:                    # a filesystem without hard links: O_EXCL creation
            return self._try_create()
        finally:
            tmp.unlink(missing_ok=True)

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._payload())
        return True

    def _break_stale(self, holder: dict) -> None:
        """Move a stale lock aside; if another process replaced it meanwhile, put that one back."""
        aside = self.dir / f".{LOCK_FILE}.{self.token}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:          # someone else broke it first
            return
        moved = read_lock(aside)
        if moved and holder and moved.get("token") != holder.get("token"):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # a fresh lock: give it back
        aside.unlink(missing_ok=True)

    # -- acquire / release -------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock (RunDirLocked when a live process holds it) and start the heartbeat."""
        self._created = self._missing_dirs()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        for _ in range(5):
            if self._try_link():
                self.held = True
                self._start_heartbeat()
                return
            holder = read_lock(self.path)
            if holder is None:             # released meanwhile
                continue
            why = stale_reason(holder, self.path)
            if why is None:
                raise RunDirLocked(
                    f"hydra.run.dir: '{self.dir}' is in use by {describe(holder)}; accepted: a directory no "
                    f"other run is using (wait for that run to end, or stop it: the next run resumes it)")
            log.warning("run dir %s: taking over the lock of %s (%s)", self.dir, describe(holder), why)
            self._break_stale(holder)
        raise RunDirLocked(f"hydra.run.dir: '{self.dir}' could not be locked ({self.path} keeps changing); "
                           f"accepted: a directory no other run is using")

    def release(self) -> None:
        """Stop the heartbeat and remove run.lock (only if it is still this process's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and (read_lock(self.path) or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False
        for folder in self._created:          # a run refused before writing anything leaves no folder behind
            try:
                folder.rmdir()
            except OSError:                   # not empty: the run wrote its record there
                break
        self._created = []

    def _missing_dirs(self) -> list[Path]:
        """The folders acquire() creates (the run directory and missing parents), deepest first."""
        missing, folder = [], self.dir.absolute()
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        return missing

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- heartbeat -----------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Rewrite the heartbeat; False (with a warning) when the lock is no longer this process's."""
        if (read_lock(self.path) or {}).get("token") != self.token:
            log.warning("run dir %s: the lock %s is no longer this process's (taken over while this run "
                        "was stalled?); another run may be writing here", self.dir, self.path)
            return False
        tmp = self._write_temp()
        os.replace(tmp, self.path)
        return True

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if not self.refresh():
                        return
                except OSError as err:       # a full or vanished disk: the run itself will report it
                    log.debug("run dir %s: heartbeat failed: %s", self.dir, err)

        self._thread = threading.Thread(target=beat, name="run-dir-lock", daemon=True)
        self._thread.start()


@contextlib.contextmanager
def lock_run_dir(run_dir: str | os.PathLike[str], dist: Any) -> Iterator[None]:
    """Hold the run directory's lock for the block. Data parallel: rank 0 takes it and every rank learns
    the outcome (one collective), so all raise RunDirLocked together or none does."""
    lock = RunDirLock(run_dir) if dist.is_main else None
    refusal: RunDirLocked | None = None
    if lock is not None:
        try:
            lock.acquire()
        except RunDirLocked as err:
            refusal = err
    if dist.any_flags([refusal is not None])[0]:
        raise refusal or RunDirLocked(f"hydra.run.dir: '{run_dir}' is in use by another run (rank 0 reports it)")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()

"""Bad input at the command line: one `ERROR ...` line on stderr and exit code 2, never a traceback.

Every entry point (sb-train reports through Hydra's logging; scripts/demo.py, benchmark.py,
gradient_similarity.py, collect_runs.py and the report scripts through this module) treats a
ConfigError / DataError (and a Hydra composition error in the scripts that compose a config) the
same way, so a user with a bad value or missing data sees what to fix, not a stack trace.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from selective_backprop.errors import ConfigError

EXIT_BAD_INPUT = 2


def _bad_input_types() -> tuple[type[BaseException], ...]:
    try:
        from hydra.errors import HydraException
    except ImportError:  # pragma: no cover - hydra is a dependency
        return (ConfigError,)
    return (ConfigError, HydraException)


def report_bad_input(err: BaseException) -> int:
    """Print `ERROR <message>` (one line: whitespace runs collapsed) to stderr; returns 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"ERROR {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def exits_on_bad_input(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a script's `main`: ConfigError / DataError / Hydra errors become one ERROR line and 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except _bad_input_types() as err:
            return report_bad_input(err)

    return wrapper


def check_output_dir(path: str | Path, field: str = "--out") -> Path:
    """Raise ConfigError (one line naming `field` and the path) unless `path` is, or can be created as,
    a writable folder. Writability is probed with a temporary file deleted at once (permission bits do
    not tell for root users or read-only mounts); no folder is created here."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == target else f"cannot be created: '{existing}' is a file"
        raise ConfigError(f"{field}: '{target}' {where}; accepted: a folder (existing or new)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{field}: '{target}' is not writable ({exc.strerror or exc} in '{existing}'); "
                          f"accepted: a writable folder") from exc
    return target

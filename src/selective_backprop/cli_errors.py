"""Bad input at the command line: one `ERROR ...` line on stderr and exit code 2, never a traceback.

Every entry point (sb-train reports through Hydra's logging; scripts/demo.py, benchmark.py,
gradient_similarity.py, collect_runs.py and the report scripts through this module) treats a
ConfigError / DataError (and a Hydra composition error in the scripts that compose a config) the
same way, so a user with a bad value or missing data sees what to fix, not a stack trace.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from selective_backprop.errors import ConfigError, check_folder

EXIT_BAD_INPUT = 2


def _bad_input_types() -> tuple[type[BaseException], ...]:
    try:
        from hydra.errors import HydraException
    except ImportError:  # pragma: no cover - hydra is a dependency
        return (ConfigError,)
    return (ConfigError, HydraException)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _suggest(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def describe_config_error(err: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing or resolving the config: the
    field or option named, with the accepted names (Hydra's own text spans several lines)."""
    from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

    options = getattr(err, "options", None)
    missing = getattr(err, "missing_cfg_file", None)
    if options and missing and "/" in str(missing):            # strategy=sbb, model=resnet9
        group, option = str(missing).rsplit("/", 1)
        return (f"{group.replace('/', '.')}={option}: no such option; accepted: {' | '.join(options)}"
                f"{_suggest(option, list(options))}")
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    key = getattr(cause, "full_key", None)
    if key and "not in struct" in str(cause):                    # train.max_epoch=5
        from selective_backprop.validate import all_known_keys

        return (f"{key}: unknown key; accepted: a key the config files define{_suggest(key, sorted(all_known_keys()))}"
                f" (a new key is added with +{key}=...)")
    if isinstance(cause, InterpolationResolutionError):
        first = (str(cause).strip().splitlines() or [""])[0]
        where = f"{key}: " if key else ""
        return f"{where}cannot resolve an interpolation ({first}); accepted: a value, or an interpolation that resolves"
    text = _one_line(str(err))
    if err.__cause__ is not None and str(err.__cause__) not in str(err):
        text += f" ({_one_line((str(err.__cause__).strip().splitlines() or [''])[0])})"
    return text


def report_bad_input(err: BaseException) -> int:
    """Print `ERROR <message>` (one line: whitespace runs collapsed) to stderr; returns 2."""
    message = describe_config_error(err) if not isinstance(err, ConfigError) else _one_line(str(err))
    print(f"ERROR {message or type(err).__name__}", file=sys.stderr, flush=True)
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
    return check_folder(path, field)

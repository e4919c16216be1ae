"""Errors the project raises for bad input: one line, naming the field or file."""

import tempfile
from pathlib import Path


class ConfigError(ValueError):
    """A config value or a data file is unusable; raised before any training work starts.

    The message is one line that names the field (``strategy.beta``) or the file/folder,
    and says what is accepted.
    """


class DataError(ConfigError):
    """A dataset folder or file is missing, truncated or corrupted."""


def check_folder(path: str | Path, field: str, *, error: type[ConfigError] = ConfigError,
                 accepted: str = "a folder (existing or new)", writable: bool = True,
                 accepted_writable: str = "a writable folder") -> Path:
    """Raise ``error`` (one line naming ``field`` and the path) unless ``path`` is, or can be created as, a
    folder - and, with ``writable``, one this process can write in. Writability is probed with a
    temporary file deleted at once (permission bits alone do not tell: root users, read-only mounts,
    /proc); nothing else is created. Returns the absolute path."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == target else f"cannot be created: '{existing}' is a file"
        raise error(f"{field}: '{target}' {where}; accepted: {accepted}")
    if writable:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise error(f"{field}: '{target}' is not writable ({exc.strerror or exc} in '{existing}'); "
                        f"accepted: {accepted_writable}") from exc
    return target

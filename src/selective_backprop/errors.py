"""Errors the project raises for bad input: one line, naming the field or file."""


class ConfigError(ValueError):
    """A config value or a data file is unusable; raised before any training work starts.

    The message is one line that names the field (``strategy.beta``) or the file/folder,
    and says what is accepted.
    """


class DataError(ConfigError):
    """A dataset folder or file is missing, truncated or corrupted."""

"""Checks for strategy constructor keywords: each returns the value or raises a one-line ConfigError.

Every strategy (one module each in this package) validates its own keywords with these, so a
bad `strategy.<key>` is refused when the strategy is built, which the trainer does before it builds
any data. The message names the config field: ``strategy.<key>=<value>: not accepted; accepted: ...``.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from selective_backprop.errors import ConfigError


def fail(key: str, value: Any, accepted: str) -> NoReturn:
    raise ConfigError(f"strategy.{key}={value!r}: not accepted; accepted: {accepted}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(key: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """`value` as a float inside the interval [lo, hi] (ends open as asked)."""
    ok = is_number(value) and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        fail(key, value, f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
    return float(value)


def integer(key: str, value: Any, minimum: int, *, nullable: bool = False) -> int | None:
    """`value` as an int >= minimum (None passes when nullable)."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(key, value, f"an integer >= {minimum}" + (" or null" if nullable else ""))
    return int(value)


def choice(key: str, value: Any, choices: tuple) -> Any:
    if isinstance(value, bool) or value not in choices:
        fail(key, value, " | ".join(map(str, choices)))
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        fail(key, value, "true or false")
    return value

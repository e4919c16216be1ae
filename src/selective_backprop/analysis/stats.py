"""Paired intervals over seeds: the one place the analysis turns per-seed numbers into a claim.

Every comparison the project publishes pairs each seed with the *same seed's* reference run (same
training subset, same initialisation), because the seed explains much of the run-to-run variance.

- :func:`paired_ratio` — a speedup (or any ratio > 0): the geometric mean of the per-seed ratios with a
  Student-t interval on the log ratios (df = n − 1), exponentiated back.
- :func:`paired_difference` — a difference (e.g. final error minus the reference's): the mean per-seed
  difference with a Student-t interval (df = n − 1).
- :func:`verdict` — "better", "worse" or "indistinguishable": better/worse only when the interval
  excludes the null value (1 for a ratio, 0 for a difference).

With fewer than two pairs there is no interval (``low``/``high`` are NaN) and the verdict is
"indistinguishable". The level defaults to 90 % (two-sided).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st

LEVEL = 0.90
METHOD_RATIO = "geometric mean, Student-t interval on log ratios over paired seeds"
METHOD_DIFF = "mean, Student-t interval on paired differences over seeds"


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval, from ``n`` paired seeds."""
    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def excludes(self, null: float) -> bool:
        return self.n >= 2 and not math.isnan(self.low) and (self.low > null or self.high < null)

    def format(self, fmt: str = "{:.2f}", suffix: str = "") -> str:
        """``1.24× [0.99, 1.54]``-style text; the estimate alone when there is no interval."""
        if math.isnan(self.estimate):
            return "–"
        text = fmt.format(self.estimate) + suffix
        if math.isnan(self.low):
            return text
        return f"{text} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


NONE = Interval(math.nan, math.nan, math.nan, 0)


def _pairs(a: Sequence[float], b: Sequence[float]) -> list[tuple[float, float]]:
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return [(float(x), float(y)) for x, y in zip(a, b) if not (math.isnan(float(x)) or math.isnan(float(y)))]


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of ``values`` with its Student-t interval (NaN values are left out)."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return NONE
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """a − b per seed (pairs with a NaN side are left out): mean and t interval."""
    return t_interval([x - y for x, y in _pairs(a, b)], level)


def paired_ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """a / b per seed (positive values; pairs with a NaN side left out): geometric mean, t on logs."""
    pairs = _pairs(a, b)
    if any(x <= 0 or y <= 0 for x, y in pairs):
        raise ValueError("paired_ratio needs positive values")
    logs = t_interval([math.log(x / y) for x, y in pairs], level)
    if logs.n == 0:
        return NONE
    return Interval(math.exp(logs.estimate), math.exp(logs.low) if logs.n >= 2 else math.nan,
                    math.exp(logs.high) if logs.n >= 2 else math.nan, logs.n, level)


def verdict(interval: Interval, null: float, higher_is_better: bool = True,
            words: tuple[str, str] = ("better", "worse")) -> str:
    """words[0] when the interval lies wholly on the good side of ``null``, words[1] on the bad side,
    else "indistinguishable" (also with fewer than two seeds)."""
    if not interval.excludes(null):
        return "indistinguishable"
    above = interval.low > null
    return words[0] if above == higher_is_better else words[1]

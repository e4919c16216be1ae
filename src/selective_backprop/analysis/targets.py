"""Reaching a target error: the one definition every table and figure uses.

A run's time (or cost) to a target is the ``train_s`` (or ``cost`` …) of its first evaluation, in file
order, with ``test_error <= target`` — compared with an absolute tolerance of :data:`TARGET_TOL`, so that
e.g. 0.28 counts as reaching 0.2 × 1.4 = 0.27999999999999997; NaN when no evaluation reaches it.
"""

from __future__ import annotations

import math

import pandas as pd

from .records import AXES

TRADITIONAL = "traditional"
TARGET_TOL = 1e-9


def as_float(x) -> float:
    value = pd.to_numeric(x, errors="coerce")
    return math.nan if pd.isna(value) else float(value)


def first_reaching_eval(evals: pd.DataFrame, target: float) -> pd.Series | None:
    """The first evaluation row reaching ``target`` (or None)."""
    ev = evals.sort_values("eval_idx") if "eval_idx" in evals.columns else evals
    err = pd.to_numeric(ev["test_error"], errors="coerce")
    hit = ev[err <= target + TARGET_TOL]
    return hit.iloc[0] if len(hit) else None


def time_to_target(evals: pd.DataFrame, target: float, column: str = "train_s") -> float:
    """``column`` (default ``train_s``) of the first evaluation (in file order) with
    ``test_error <= target``; NaN if none."""
    hit = first_reaching_eval(evals, target)
    return as_float(hit[column]) if hit is not None and column in hit.index else math.nan


def axis_column(axis: str) -> str:
    """The evaluation column behind an axis name (``time`` / ``time_eval`` / ``cost``)."""
    if axis not in AXES:
        raise ValueError(f"axis {axis!r}: accepted {' | '.join(AXES)}")
    return AXES[axis]

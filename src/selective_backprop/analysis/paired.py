"""Paired comparisons: every configuration against the same seed's Traditional run at the same point.

A *point* is a setup (dataset, training subset, augmentation, model, width, test subset) with an LR
schedule (:func:`~selective_backprop.analysis.records.point_of`); a configuration is the runs sharing
``config_key``. The seed draws the training subset and the initialisation and explains much of the
run-to-run variance, so only same-seed comparisons are made. At a point, for a configuration and a
target factor f, each seed s that has both a run of the configuration and a Traditional run gives:

* its **target**: Traditional seed s's own final test error × f;
* Traditional's cost (or time) to that target, T_s (always reached: f ≥ 1), and the configuration's,
  C_s, each at the first evaluation reaching it (:mod:`.targets`); the seed's **speedup** T_s / C_s;
* a seed that never reaches its target within its budget could at best have reached it right after its
  last evaluation: its speedup is **at most** T_s / (its total cost) — the *optimistic bound*.

**The speedup** is the geometric mean over the n paired seeds with a 90 % Student-t interval on the log
ratios (df = n − 1; :func:`~selective_backprop.analysis.stats.paired_ratio`), with how many seeds
reached the target ("k/n"). When k < n the unreached seeds enter at their optimistic bound, so the
estimate and its interval are upper bounds (written "≤").

**The verdict** (:func:`speedup_verdict`): *faster* only when every seed reached its target and the
interval's low end is above 1; *slower* when the interval's high end is below 1 (with unreached seeds
at their optimistic bound: the strategy is slower even granting it the best case); otherwise
*indistinguishable* (also with fewer than two paired seeds).

**Final-error differences** (the configuration's minus Traditional's, and minus the uniform control's at
the same point, same seed) are mean paired differences in points with a 90 % t interval
(:func:`~selective_backprop.analysis.stats.paired_difference`): *lower* / *higher* only when the interval
excludes 0. The uniform ratio (``vs_uniform``) is the geometric mean over the seeds where both the
configuration and uniform reached the target of uniform's cost to it ÷ the configuration's (> 1: ranking
by loss beat a random subset of the same size).

**Traditional's first reach**: per point and factor, the epoch at which each Traditional seed first
reached its own target and the share of its total cost spent by then (seed mean and range), printed
beside every table (``../shared/PAPER.md``, "Reading a speedup").

Time axes (``time``, ``time_eval``) leave out every pair whose run or Traditional reference the timing
audit flags (:mod:`.audit`); the cost axis uses every pair.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .records import RunSet, config_label, strategy_sort_key
from .stats import NONE, Interval, paired_difference, paired_ratio, verdict
from .targets import TRADITIONAL, as_float, axis_column, time_to_target

logger = logging.getLogger(__name__)

UNIFORM = "uniform"
TIME_AXES = ("time", "time_eval")
METHOD = ("geometric mean over n paired seeds (each seed against the same seed's Traditional run on the "
          "same setup and LR schedule, to that run's own final error × f), 90 % Student-t interval on the "
          "log ratios; k/n = seeds that reached the target; \"≤\": some seed never reached it and enters at "
          "its optimistic bound (Traditional's cost to the target ÷ the seed's total cost), so the estimate "
          "and interval are upper bounds. Verdict: faster only when every seed reached and the interval "
          "lies above 1; slower when it lies below 1 (bounds included); else indistinguishable")
METHOD_ERROR = ("final-error differences in points: mean over paired seeds with a 90 % Student-t interval; "
                "lower / higher only when the interval excludes 0")
POINT_META = ("point", "setup", "dataset", "train_subset", "augment", "model", "width", "lr_schedule",
              "test_subset")


@dataclass(frozen=True)
class Speedup:
    """A paired speedup: the interval (upper bounds when ``reached < n``), seeds reached, paired seeds."""
    interval: Interval
    reached: int
    n: int

    @property
    def verdict(self) -> str:
        return speedup_verdict(self.interval, self.reached, self.n)

    def cell(self, verdict_word: bool = True) -> str:
        """``1.16× [0.72, 1.87] 3/3 faster``; ``≤0.93× [0.70, 1.22] 2/3 indistinguishable``; ``–`` (no pair)."""
        if self.n == 0 or math.isnan(self.interval.estimate):
            return "–"
        text = ("" if self.reached == self.n else "≤") + self.interval.format(suffix="×")
        text += f" {self.reached}/{self.n}"
        return text + (f" {self.verdict}" if verdict_word else "")


def speedup_verdict(interval: Interval, reached: int, n: int) -> str:
    """faster / slower / indistinguishable by the rule in the module docstring."""
    if reached == n:
        return verdict(interval, 1.0, words=("faster", "slower"))
    return "slower" if interval.n >= 2 and interval.high < 1.0 else "indistinguishable"


def summarise(trad_to: Sequence[float], own_to: Sequence[float], own_total: Sequence[float]) -> Speedup:
    """The paired speedup from per-seed costs: Traditional's to the target, the run's to it (NaN: never
    reached) and the run's total (its optimistic bound's denominator)."""
    pairs = [(t, o if not math.isnan(o) else tot, not math.isnan(o))
             for t, o, tot in zip(trad_to, own_to, own_total)
             if t > 0 and (o > 0 or (math.isnan(o) and tot > 0))]
    if not pairs:
        return Speedup(NONE, 0, 0)
    interval = paired_ratio([p[0] for p in pairs], [p[1] for p in pairs])
    return Speedup(interval, sum(p[2] for p in pairs), len(pairs))


# ---------------------------------------------------------------- per-seed rows

def _by_seed(runs: pd.DataFrame) -> dict[str, pd.Series]:
    return {str(r["seed"]): r for _, r in runs.iterrows()}


def references(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per point, its Traditional runs, one per seed; where a seed has several (Traditional runs of
    different configurations at one point), the one whose configuration has most seeds there is used,
    with a warning. A point without any Traditional run is named in a warning and has no entry."""
    out: dict[str, pd.DataFrame] = {}
    for point, at in runs.groupby("point", sort=False):
        trad = at[at["strategy"] == TRADITIONAL]
        if trad.empty:
            logger.warning("no usable Traditional run at %s: its %d run(s) have no reference and are left "
                           "out", point, len(at))
            continue
        size = trad["config_key"].map(trad["config_key"].value_counts())
        ranked = trad.assign(_n=-size, _i=range(len(trad))).sort_values(["_n", "_i"], kind="stable")
        seeds = ranked["seed"].astype(str)
        extra = ranked[seeds.duplicated()]
        if len(extra):
            logger.warning("%s has several Traditional runs for seed(s) %s; the reference is %s, not %s", point,
                           ", ".join(sorted(set(extra["seed"].astype(str)))),
                           ", ".join(ranked.loc[~seeds.duplicated() & seeds.isin(set(extra["seed"].astype(str))),
                                                "run_dir"]), ", ".join(extra["run_dir"]))
        out[str(point)] = trad.loc[ranked.index[~seeds.duplicated().to_numpy()]].sort_index()
    return out


def seed_rows(runset: RunSet, factors: Sequence[float], axes: Sequence[str], excluded: Iterable[str] = (),
              refs: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per (point, non-Traditional configuration, paired seed, axis, factor): ``point, setup,
    lr_schedule, strategy, config, config_key, seed, run_dir, trad_run_dir, axis, factor, target, trad_to,
    own_to, own_total, reached, speedup`` (the seed's T/C, or its optimistic bound when not reached) and
    ``excluded`` (a time-axis pair with a run the timing audit flags). Seeds without a same-seed
    Traditional run at the point are left out with a warning."""
    excluded = frozenset(excluded)
    refs = references(runset.runs) if refs is None else refs
    ev_by_run = {k: g for k, g in runset.evals.groupby("run_dir")}
    rows: list[dict[str, Any]] = []
    for point, at in runset.runs.groupby("point", sort=False):
        if str(point) not in refs:
            continue
        trad_seed = _by_seed(refs[str(point)])
        for key, own in at[at["strategy"] != TRADITIONAL].groupby("config_key", sort=False):
            unpaired = [str(s) for s in own["seed"] if str(s) not in trad_seed]
            if unpaired:
                logger.warning("%s at %s: seed(s) %s have no same-seed Traditional run there and are left out "
                               "of its paired comparisons", own["strategy"].iloc[0], point, ", ".join(unpaired))
            label = config_label(str(own["strategy"].iloc[0]), own.iloc[0].to_dict())
            for _, run in own.iterrows():
                ref = trad_seed.get(str(run["seed"]))
                if ref is not None:
                    rows.extend(_pair_rows(run, ref, ev_by_run, factors, axes, excluded, label))
    return pd.DataFrame(rows)


def run_total(run: pd.Series, ev: pd.DataFrame | None, column: str) -> float:
    """A run's total on ``column`` (``cost`` / ``train_s`` / ``train_eval_s``): its summary's, else (absent
    or 0 in an older record) its last evaluation's."""
    total = as_float(run.get(column))
    if (math.isnan(total) or total <= 0) and ev is not None and column in ev.columns:
        total = as_float(pd.to_numeric(ev[column], errors="coerce").max())
    return total


def _pair_rows(run: pd.Series, ref: pd.Series, ev_by_run: dict[str, pd.DataFrame], factors: Sequence[float],
               axes: Sequence[str], excluded: frozenset[str], label: str) -> list[dict[str, Any]]:
    out = []
    trad_ev, own_ev = ev_by_run.get(ref["run_dir"]), ev_by_run.get(run["run_dir"])
    for axis in axes:
        column = axis_column(axis)
        total = run_total(run, own_ev, column)
        for f in factors:
            target = float(ref["final_test_error"]) * f
            trad_to = time_to_target(trad_ev, target, column) if trad_ev is not None else math.nan
            own_to = time_to_target(own_ev, target, column) if own_ev is not None else math.nan
            reached = not math.isnan(own_to)
            denominator = own_to if reached else total
            out.append({"point": run["point"], "setup": run["setup"], "lr_schedule": run["lr_schedule"],
                        "strategy": run["strategy"], "config": label, "config_key": run["config_key"],
                        "seed": run["seed"], "run_dir": run["run_dir"], "trad_run_dir": ref["run_dir"],
                        "axis": axis, "factor": f, "target": target, "trad_to": trad_to, "own_to": own_to,
                        "own_total": total, "reached": reached,
                        "speedup": trad_to / denominator if denominator > 0 else math.nan,
                        "excluded": axis in TIME_AXES and bool({run["run_dir"], ref["run_dir"]} & excluded)})
    return out


# ---------------------------------------------------------------- per-configuration rows

def _std(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def own_stats(runs: pd.DataFrame) -> dict[str, Any]:
    """Seeds, final error (mean, sd), epochs, backward passes, cost and training seconds (seed means)."""
    def mean(col: str) -> float:
        return float(pd.to_numeric(runs[col], errors="coerce").mean())
    return {"n_seeds": len(runs), "final_error": mean("final_test_error"),
            "final_error_sd": _std(runs["final_test_error"]), "epochs": mean("epochs"),
            "backpropped": mean("examples_backpropped"), "cost": mean("cost"), "train_s": mean("train_s")}


def trad_reach(trad: pd.DataFrame, evals: dict[str, pd.DataFrame], factors: Sequence[float]) -> dict[str, float]:
    """Per factor: the epoch at which each Traditional seed first reached its own final error × f and the
    share of its total cost spent by then — ``trad_epoch_<f>`` (seed mean), ``_min``, ``_max`` and
    ``trad_cost_frac_<f>`` likewise."""
    out: dict[str, float] = {}
    for f in factors:
        epochs, fracs = [], []
        for _, run in trad.iterrows():
            ev = evals.get(run["run_dir"])
            target = float(run["final_test_error"]) * f
            if ev is None or math.isnan(target):
                continue
            epochs.append(time_to_target(ev, target, "epoch"))
            total = run_total(run, ev, "cost")
            fracs.append(time_to_target(ev, target, "cost") / total if total > 0 else math.nan)
        for name, values in ((f"trad_epoch_{f:g}", epochs), (f"trad_cost_frac_{f:g}", fracs)):
            values = [v for v in values if not math.isnan(v)]
            out[name] = sum(values) / len(values) if values else math.nan
            out[f"{name}_min"] = min(values) if values else math.nan
            out[f"{name}_max"] = max(values) if values else math.nan
    return out


def _difference(a: pd.DataFrame, b: pd.DataFrame, name: str) -> dict[str, Any]:
    """``<name>_pts`` (mean a − b over same-seed pairs, in points), ``_low``, ``_high``, ``<name>_n`` and
    ``verdict_<name>`` (lower / higher / indistinguishable)."""
    a_err = {str(s): e for s, e in zip(a["seed"], pd.to_numeric(a["final_test_error"], errors="coerce"))}
    b_err = {str(s): e for s, e in zip(b["seed"], pd.to_numeric(b["final_test_error"], errors="coerce"))}
    seeds = [s for s in a_err if s in b_err]
    i = paired_difference([100 * a_err[s] for s in seeds], [100 * b_err[s] for s in seeds]) if seeds else NONE
    return {f"{name}_pts": i.estimate, f"{name}_pts_low": i.low, f"{name}_pts_high": i.high, f"{name}_n": i.n,
            f"verdict_{name}": verdict(i, 0.0, higher_is_better=False, words=("lower", "higher"))
            if i.n else ""}


def _speedup_columns(pairs: pd.DataFrame, axes: Sequence[str], factors: Sequence[float]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for axis in axes:
        for f in factors:
            p = pairs[(pairs["axis"] == axis) & (pairs["factor"] == f) & ~pairs["excluded"]] if len(pairs) else pairs
            s = summarise(list(p["trad_to"]), list(p["own_to"]), list(p["own_total"])) if len(p) else Speedup(NONE, 0, 0)
            name = f"speedup_{axis}_{f:g}"
            row.update({name: s.interval.estimate, f"{name}_low": s.interval.low, f"{name}_high": s.interval.high,
                        f"reached_{axis}_{f:g}": f"{s.reached}/{s.n}", f"verdict_{axis}_{f:g}": s.verdict if s.n else ""})
    return row


def _uniform_columns(pairs: pd.DataFrame, uniform_pairs: pd.DataFrame | None, axes: Sequence[str],
                     factors: Sequence[float]) -> dict[str, Any]:
    """``vs_uniform_<axis>_<f>`` (+ ``_low``, ``_high``, ``_n`` = "k/n": seeds where both reached / paired)."""
    row: dict[str, Any] = {}
    for axis in axes:
        for f in factors:
            name = f"vs_uniform_{axis}_{f:g}"
            i, k, n = NONE, 0, 0
            if uniform_pairs is not None and len(pairs):
                sel = [(pairs["axis"] == axis) & (pairs["factor"] == f) & ~pairs["excluded"],
                       (uniform_pairs["axis"] == axis) & (uniform_pairs["factor"] == f) & ~uniform_pairs["excluded"]]
                mine = dict(zip(pairs.loc[sel[0], "seed"].astype(str), pairs.loc[sel[0], "own_to"]))
                theirs = dict(zip(uniform_pairs.loc[sel[1], "seed"].astype(str), uniform_pairs.loc[sel[1], "own_to"]))
                seeds = [s for s in mine if s in theirs]
                both = [s for s in seeds if not (math.isnan(mine[s]) or math.isnan(theirs[s]))]
                n, k = len(seeds), len(both)
                i = paired_ratio([theirs[s] for s in both], [mine[s] for s in both]) if both else NONE
            row.update({name: i.estimate, f"{name}_low": i.low, f"{name}_high": i.high,
                        f"{name}_n": f"{k}/{n}" if n else ""})
    return row


def paired_table(runset: RunSet, factors: Sequence[float], axes: Sequence[str],
                 excluded: Iterable[str] = ()) -> pd.DataFrame:
    """One row per (point, non-Traditional configuration); see the module docstring. Columns: the point's
    fields (:data:`POINT_META`), Traditional's ``trad_seeds``, ``trad_final_error`` (``_sd``),
    ``trad_epochs``, ``trad_backpropped``, ``trad_cost``, ``trad_train_s`` and first reach
    (:func:`trad_reach`); the configuration's ``strategy, config, config_key`` and :func:`own_stats`;
    the error differences (:func:`_difference`: ``error_vs_trad``, ``error_vs_uniform``); per axis and
    factor ``speedup_<axis>_<f>`` with ``_low``, ``_high``, ``reached_…`` ("k/n"), ``verdict_…``; and
    ``vs_uniform_<axis>_<f>`` with ``_low``, ``_high``, ``_n``."""
    runs = runset.runs
    refs = references(runs)
    seeds = seed_rows(runset, factors, axes, excluded, refs)
    ev_by_run = {k: g for k, g in runset.evals.groupby("run_dir")}
    rows = []
    for point, at in runs.groupby("point", sort=False):
        if str(point) not in refs:
            continue
        trad = refs[str(point)]
        first = at.iloc[0]
        tstats = own_stats(trad)
        base = {**{k: first.get(k) for k in POINT_META},
                "trad_seeds": tstats["n_seeds"], "trad_final_error": tstats["final_error"],
                **{f"trad_{k}": v for k, v in tstats.items() if k not in ("n_seeds", "final_error")},
                **trad_reach(trad, ev_by_run, factors)}
        at_point = seeds[seeds["point"] == point] if len(seeds) else seeds
        configs = list(at[at["strategy"] != TRADITIONAL].groupby("config_key", sort=False))
        uniform = [(k, own) for k, own in configs if own["strategy"].iloc[0] == UNIFORM]
        u_key, u_runs = uniform[0] if len(uniform) == 1 else (None, None)
        u_pairs = at_point[at_point["config_key"] == u_key] if u_key is not None and len(at_point) else None
        for key, own in configs:
            strat = str(own["strategy"].iloc[0])
            pairs = at_point[at_point["config_key"] == key] if len(at_point) else at_point
            row = {**base, "strategy": strat, "config": config_label(strat, own.iloc[0].to_dict()),
                   "config_key": key, **own_stats(own), **_difference(own, trad, "error_vs_trad")}
            is_uniform = key == u_key
            row.update(_difference(own, u_runs, "error_vs_uniform") if u_runs is not None and not is_uniform
                       else _difference(own.iloc[0:0], own.iloc[0:0], "error_vs_uniform"))
            row.update(_speedup_columns(pairs, axes, factors))
            row.update(_uniform_columns(pairs, None if is_uniform else u_pairs, axes, factors))
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_s"] = out["strategy"].map(lambda s: strategy_sort_key(str(s)))
    return out.sort_values(["point", "_s", "config"], kind="stable").drop(columns="_s").reset_index(drop=True)


# ---------------------------------------------------------------- text

def seeds_text(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def speedup_cell(row: pd.Series | dict, axis: str, factor: float, verdict_word: bool = True) -> str:
    """A row's speedup cell (:meth:`Speedup.cell`) rebuilt from its columns."""
    name = f"speedup_{axis}_{factor:g}"
    k, n = (int(x) for x in str(row[f"reached_{axis}_{factor:g}"]).split("/"))
    if n == 0 and axis in TIME_AXES:
        return "n/a"          # every pair has a run the timing audit flags
    s = Speedup(Interval(float(row[name]), float(row[f"{name}_low"]), float(row[f"{name}_high"]), n), k, n)
    return s.cell(verdict_word)


def difference_cell(row: pd.Series | dict, name: str) -> str:
    """``+0.55 [−1.20, +2.30] indistinguishable`` (points); empty when there is no pair."""
    n = row.get(f"{name}_n")
    if not n or (isinstance(n, float) and math.isnan(n)):
        return ""
    i = Interval(float(row[f"{name}_pts"]), float(row[f"{name}_pts_low"]), float(row[f"{name}_pts_high"]), int(n))
    return f"{i.format('{:+.2f}')} {row[f'verdict_{name}']}"


def ratio_cell(row: pd.Series | dict, name: str) -> str:
    """``1.24× [0.99, 1.54] (3/3)``; empty without pairs, ``– (0/3)`` when no seed pair both reached."""
    n = row.get(f"{name}_n")
    if not n or (isinstance(n, float) and math.isnan(n)):
        return ""
    value = float(row[name])
    if math.isnan(value):
        return f"– ({n})"
    k = int(str(n).split("/")[0])
    return f"{Interval(value, float(row[f'{name}_low']), float(row[f'{name}_high']), k).format(suffix='×')} ({n})"


def _range(row: pd.Series | dict, name: str, scale: float = 1.0) -> str:
    lo, hi = (f"{scale * row[f'{name}_{end}']:.0f}" for end in ("min", "max"))
    return lo if lo == hi else f"{lo}–{hi}"


def reach_text(row: pd.Series | dict, factors: Sequence[float]) -> str:
    """``×1.1 at epoch 9.3 (8–10), 31 % of its cost (27–33 %); ×1.2 …`` (seed mean and range)."""
    parts = []
    for f in factors:
        e, c = row.get(f"trad_epoch_{f:g}"), row.get(f"trad_cost_frac_{f:g}")
        if e is None or math.isnan(e):
            continue
        parts.append(f"×{f:g} at epoch {e:.1f} ({_range(row, f'trad_epoch_{f:g}')}), "
                     f"{100 * c:.0f} % of its cost ({_range(row, f'trad_cost_frac_{f:g}', 100)} %)")
    return "; ".join(parts)

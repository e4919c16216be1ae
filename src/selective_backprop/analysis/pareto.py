"""Pareto frontier of (training time, test error) over all configurations (paper Fig 14).

Points: every evaluation of every configuration's seed-mean curve
(:func:`~selective_backprop.analysis.records.seed_mean_curves`), per dataset, label-noise runs
left out. The frontier is the lowest error reached by any configuration by each time budget:
points sorted by (``train_s``, ``test_error``, strategy order, ``config_key``); a point is on
the frontier when its error is strictly lower than that of every point before it. (So of two
identical points only the first in that order counts; a later point with equal error does not.)

The x axis is ``axis`` (:data:`~selective_backprop.analysis.records.AXES`): ``time`` (``train_s``,
the paper's, the default), ``time_eval`` (``train_s + eval_s``) or ``cost`` (forward-equivalent
units); ``schedules`` (e.g. ``["sched1"]``) keeps only runs whose LR schedule ends in ``_<name>``.

Beside the seed-mean frontier, :func:`pareto_share_by_seed` gives each strategy's share seed by seed
(each seed's runs alone: same training subset and initialisation), as mean and range over seeds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .records import AXIS_LABELS, RunSet, seed_mean_curves, strategy_label, strategy_sort_key
from .table1 import TRADITIONAL, axis_column, frame_to_csv

logger = logging.getLogger(__name__)

STRATEGY_COLORS = {
    "traditional": "tab:gray",
    "sb": "tab:blue",
    "stale_sb": "tab:green",
    "kath18": "tab:orange",
    "uniform": "tab:purple",
    "infobatch": "tab:red",
    "composer_sb": "tab:brown",
}
_EXTRA_COLORS = ["tab:pink", "tab:olive", "tab:cyan"]


def strategy_color(name: str) -> str:
    if name in STRATEGY_COLORS:
        return STRATEGY_COLORS[name]
    return _EXTRA_COLORS[sum(map(ord, str(name))) % len(_EXTRA_COLORS)]


def pareto_points(runset: RunSet, include_noisy: bool = False, axis: str = "time",
                  schedules: list[str] | None = None, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """All seed-mean curve points with ``on_frontier`` (bool), per dataset. Columns: ``dataset,
    strategy, lr_schedule, config_key, epoch, train_s``, the axis column when it is another one
    (``train_eval_s`` / ``cost``), ``test_error, on_frontier``. Runs in ``exclude`` (e.g. the timing
    audit's flagged runs on a time axis) are left out."""
    x = axis_column(axis)
    rs = (runset if include_noisy else runset.clean()).with_schedules(schedules)
    excluded = set(exclude)
    if excluded:
        rs = rs.subset(~rs.runs["run_dir"].isin(excluded))
    cols = ["dataset", "strategy", "lr_schedule", "config_key", "epoch", "train_s"]
    cols += ([x] if x != "train_s" else []) + ["test_error"]
    curves = seed_mean_curves(rs)
    if curves.empty or any(c not in curves.columns for c in cols):
        return pd.DataFrame(columns=cols + ["on_frontier"])
    pts = curves[cols].dropna(subset=[x, "test_error"]).copy()
    pts["_s"] = pts["strategy"].map(lambda s: strategy_sort_key(str(s)))
    pts = pts.sort_values(["dataset", x, "test_error", "_s", "config_key"], kind="stable")
    on = []
    best: dict[str, float] = {}
    for ds, err in zip(pts["dataset"], pts["test_error"]):
        b = best.get(ds, math.inf)
        on.append(bool(err < b))
        if err < b:
            best[ds] = err
    pts["on_frontier"] = on
    return pts.drop(columns="_s").reset_index(drop=True)


def pareto_share(points: pd.DataFrame) -> pd.DataFrame:
    """Columns ``dataset, strategy, points, share``: per dataset (sorted) and strategy present
    in it (strategy order), the number of frontier points it contributed and their share of
    the dataset's frontier points (0 for strategies with none)."""
    rows = []
    for ds, g in points.groupby("dataset", sort=True):
        total = int(g["on_frontier"].sum())
        for strat in sorted(g["strategy"].unique(), key=lambda s: strategy_sort_key(str(s))):
            n = int(g.loc[g["strategy"] == strat, "on_frontier"].sum())
            rows.append({"dataset": ds, "strategy": strat, "points": n,
                         "share": n / total if total else math.nan})
    return pd.DataFrame(rows, columns=["dataset", "strategy", "points", "share"])


def pareto_share_by_seed(runset: RunSet, include_noisy: bool = False, axis: str = "time",
                         schedules: list[str] | None = None, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """The frontier share seed by seed: each seed's runs alone make a frontier (so every configuration is
    compared on the same training subset and initialisation; a seed without a Traditional run of the
    dataset is not counted for it); per dataset and strategy ``seeds`` (how many such seeds it ran with),
    ``share`` (the mean of its shares), ``share_min`` and ``share_max``."""
    cols = ["dataset", "strategy", "seeds", "share", "share_min", "share_max"]
    per_seed = []
    for seed in sorted(runset.runs["seed"].dropna().unique(), key=str):
        one = runset.subset(runset.runs["seed"] == seed)
        share = pareto_share(pareto_points(one, include_noisy, axis, schedules, exclude))
        with_reference = set(share.loc[share["strategy"] == TRADITIONAL, "dataset"])
        per_seed.append(share[share["share"].notna() & share["dataset"].isin(with_reference)])
    if not per_seed or all(p.empty for p in per_seed):
        return pd.DataFrame(columns=cols)
    every = pd.concat(per_seed, ignore_index=True)
    rows = []
    for (ds, strat), g in every.groupby(["dataset", "strategy"], sort=False):
        rows.append({"dataset": ds, "strategy": strat, "seeds": len(g), "share": float(g["share"].mean()),
                     "share_min": float(g["share"].min()), "share_max": float(g["share"].max())})
    out = pd.DataFrame(rows, columns=cols)
    out["_s"] = out["strategy"].map(lambda s: strategy_sort_key(str(s)))
    return out.sort_values(["dataset", "_s"], kind="stable").drop(columns="_s").reset_index(drop=True)


def pareto_share_csv(share: pd.DataFrame) -> str:
    """CSV text; ``share`` as ``repr(round(x, 6))``."""
    return frame_to_csv(share, ["share"])


def plot_pareto(points: pd.DataFrame, dataset: str, log_time: bool = False,
                axis: str = "time") -> Figure:
    """Scatter of one dataset's points (x: ``axis``) coloured by strategy; frontier points opaque
    with the frontier drawn as a step line, the others transparent."""
    x = axis_column(axis)
    g = points[points["dataset"] == dataset]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for strat in sorted(g["strategy"].unique(), key=lambda s: strategy_sort_key(str(s))):
        sg = g[g["strategy"] == strat]
        color = strategy_color(strat)
        off, on = sg[~sg["on_frontier"]], sg[sg["on_frontier"]]
        ax.scatter(off[x], 100 * off["test_error"], color=color, alpha=0.2, s=18,
                   linewidths=0)
        ax.scatter(on[x], 100 * on["test_error"], color=color, alpha=1.0, s=30,
                   edgecolors="black", linewidths=0.5,
                   label=f"{strategy_label(strat)} ({len(on)})")
    front = g[g["on_frontier"]].sort_values(x)
    if len(front):
        ax.step(front[x], 100 * front["test_error"], where="post", color="black",
                linewidth=0.8, alpha=0.6)
    if log_time:
        ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABELS[axis])
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{dataset}: Pareto frontier (legend: frontier points)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def write_pareto(points: pd.DataFrame, out_dir: str | Path, log_time: bool = False, axis: str = "time",
                 by_seed: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``pareto_<dataset>.png`` / ``.pdf`` per dataset and ``pareto_share.csv`` (and
    ``pareto_share_seeds.csv`` from :func:`pareto_share_by_seed` when ``by_seed`` is given)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for ds in sorted(points["dataset"].unique()):
        fig = plot_pareto(points, ds, log_time=log_time, axis=axis)
        for ext in ("png", "pdf"):
            p = out / f"pareto_{ds}.{ext}"
            fig.savefig(p, dpi=150)
            paths[f"{ds}.{ext}"] = p
    p = out / "pareto_share.csv"
    p.write_text(pareto_share_csv(pareto_share(points)), encoding="utf-8")
    paths["share"] = p
    if by_seed is not None:
        p = out / "pareto_share_seeds.csv"
        p.write_text(frame_to_csv(by_seed, ["share", "share_min", "share_max"]), encoding="utf-8")
        paths["share_seeds"] = p
    return paths

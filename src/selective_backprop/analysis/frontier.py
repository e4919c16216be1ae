"""The error-vs-budget frontier: with the compute I have, which method gives the lowest error?

A *frontier run* trains one strategy to a cost budget (``train.max_cost``) with its LR schedule fitted
to that budget (``lr_schedule.index: budget``; scripts/frontier.sh). Its *budget* is the share of
Traditional's full-schedule cost at the same point, ``max_cost / C``, C being the cost of the point's
*reference run*: a Traditional run through an epoch-indexed schedule found among the same records. A
*point* is the setup every run there shares (the loader's ``setup``: the dataset with its subset,
augmentation and test subset, the model with its width). Each budget-fitted schedule (``budget_steps``,
``budget_linear``) makes its own frontier.

At every point, schedule and budget, each configuration's final test error is compared seed by seed with
Traditional's and with uniform's at the same budget: the mean paired difference with its 90 % Student-t
interval (:func:`.stats.paired_difference`) and the verdict (:func:`.stats.verdict`, lower error is
better: "better" when the whole interval lies below 0).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .paired import UNIFORM
from .pareto import strategy_color
from .records import SUMMARY_FILE, RunSet, config_label, strategy_label, strategy_sort_key
from .stats import LEVEL, NONE, Interval, paired_difference, t_interval, verdict
from .table1 import frame_to_csv, write_texts
from .targets import TRADITIONAL

logger = logging.getLogger(__name__)

BUDGET_DECIMALS = 3          # budget shares are grouped at this precision (0.25, 0.5, ...)
RUN_COLUMNS = ["run_dir", "point", "schedule", "budget_indexed", "strategy", "label", "seed", "max_cost",
               "final_test_error", "cost", "epochs", "examples_backpropped", "train_s"]
COMPARED = {"traditional": TRADITIONAL, "uniform": UNIFORM}       # column prefix -> the strategy compared with


def _run_row(run: pd.Series) -> dict[str, Any]:
    summary = json.loads((Path(run["run_dir"]) / SUMMARY_FILE).read_text(encoding="utf-8"))
    config = summary.get("config") or {}
    schedule = config.get("lr_schedule") or {}
    return {"run_dir": run["run_dir"], "point": run["setup"], "schedule": schedule.get("name"),
            "budget_indexed": schedule.get("index", "epoch") == "budget", "strategy": run["strategy"],
            "label": config_label(str(run["strategy"]), summary.get("strategy_params") or {}),
            "seed": run["seed"], "max_cost": (summary.get("budget") or {}).get("max_cost"),
            **{c: run[c] for c in ("final_test_error", "cost", "epochs", "examples_backpropped", "train_s")}}


def frontier_runs(runset: RunSet) -> pd.DataFrame:
    """One row per usable run: :data:`RUN_COLUMNS` (its point = the loader's setup, schedule name, whether
    that schedule is budget-indexed, its configuration label and its budget ``max_cost``)."""
    rows = [_run_row(r) for _, r in runset.runs.iterrows()]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def reference_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per point, the reference: Traditional through an epoch-indexed schedule (``cost`` C, the seeds'
    mean ``error``, ``schedule``, ``n_seeds``). Reference runs of different costs at one point are refused."""
    ref = runs[(runs["strategy"] == TRADITIONAL) & ~runs["budget_indexed"].astype(bool)]
    rows = []
    for point, g in ref.groupby("point", sort=True):
        costs = sorted(set(pd.to_numeric(g["cost"]).round(6)))
        if len(costs) > 1:
            raise ValueError(f"point {point}: reference Traditional runs of different costs {costs} "
                             f"({', '.join(g['run_dir'])}); keep one epoch schedule per point")
        rows.append({"point": point, "reference_cost": costs[0], "reference_schedule": g["schedule"].iloc[0],
                     "reference_error": float(g["final_test_error"].mean()), "reference_seeds": len(g)})
    return pd.DataFrame(rows, columns=["point", "reference_cost", "reference_schedule", "reference_error",
                                       "reference_seeds"])


def budget_runs(runs: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """The budget-fitted runs with a cost budget at a point holding a reference, with their ``budget``
    (max_cost / the reference cost, rounded to :data:`BUDGET_DECIMALS`). Others are logged and left out."""
    fitted = runs[runs["budget_indexed"].astype(bool) & runs["max_cost"].notna()]
    merged = fitted.merge(refs, on="point", how="left")
    missing = merged["reference_cost"].isna()
    if missing.any():
        logger.warning("no reference Traditional run (epoch schedule) at the point of %d budget-fitted run(s), "
                       "left out: %s", int(missing.sum()), ", ".join(merged.loc[missing, "run_dir"]))
    merged = merged[~missing].copy()
    merged["budget"] = (pd.to_numeric(merged["max_cost"]) / merged["reference_cost"]).round(BUDGET_DECIMALS)
    return merged


def _by_seed(g: pd.DataFrame) -> dict[Any, float]:
    return {seed: float(err) for seed, err in zip(g["seed"], g["final_test_error"])}


def _paired(mine: dict[Any, float], theirs: dict[Any, float] | None) -> Interval:
    """Mine − theirs over the seeds both have (NaN interval when theirs is missing)."""
    if not theirs:
        return NONE
    seeds = sorted(set(mine) & set(theirs), key=str)
    return paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])


def _comparison(prefix: str, iv: Interval) -> dict[str, Any]:
    return {f"vs_{prefix}": iv.estimate, f"vs_{prefix}_low": iv.low, f"vs_{prefix}_high": iv.high,
            f"vs_{prefix}_seeds": iv.n,
            f"verdict_{prefix}": verdict(iv, 0.0, higher_is_better=False) if iv.n else ""}


def _cell_rows(cell: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of one (point, schedule, budget): every configuration against Traditional and uniform."""
    seeds_of = {label: _by_seed(g) for label, g in cell.groupby("label", sort=False)}
    baselines = {prefix: seeds_of.get(strategy_label(s)) for prefix, s in COMPARED.items()}   # at defaults
    rows = []
    for label, g in cell.groupby("label", sort=False):
        first = g.iloc[0]
        errors = pd.to_numeric(g["final_test_error"])
        spread = t_interval(errors.tolist())
        row = {"point": first["point"], "schedule": first["schedule"], "budget": first["budget"],
               "budget_cost": float(first["reference_cost"]) * float(first["budget"]),
               "strategy": first["strategy"], "label": label, "n_seeds": len(g), "error": float(errors.mean()),
               "error_sd": float(errors.std(ddof=1)) if len(g) > 1 else math.nan,
               "error_low": spread.low, "error_high": spread.high}
        for prefix, strategy in COMPARED.items():
            same = label == strategy_label(strategy)
            row.update(_comparison(prefix, NONE if same else _paired(seeds_of[label], baselines[prefix])))
        row.update({c: float(pd.to_numeric(g[c]).mean()) for c in ("cost", "epochs", "examples_backpropped",
                                                                   "train_s")})
        row.update({c: first[c] for c in ("reference_cost", "reference_schedule", "reference_error",
                                          "reference_seeds")})
        rows.append(row)
    return rows


def frontier_table(runset: RunSet) -> pd.DataFrame:
    """One row per point, schedule, budget and configuration: seeds, final error (mean, sd, t interval),
    the paired differences vs Traditional and vs uniform at that budget (``vs_traditional`` / ``_low`` /
    ``_high`` / ``_seeds``, ``verdict_traditional``; the same for ``uniform``), the point's reference, and the
    seed means of cost, epochs, backpropped examples and training seconds. Sorted by point, schedule,
    budget, then strategy order."""
    runs = frontier_runs(runset)
    if runs.empty:
        return pd.DataFrame()
    fitted = budget_runs(runs, reference_runs(runs))
    rows = []
    for _, cell in fitted.groupby(["point", "schedule", "budget"], sort=True):
        rows.extend(_cell_rows(cell))
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_s"] = df["strategy"].map(lambda s: strategy_sort_key(str(s)))
    return (df.sort_values(["point", "schedule", "budget", "_s", "label"], kind="stable")
            .drop(columns="_s").reset_index(drop=True))


# ---------------------------------------------------------------------------------------- rendering

def frontier_csv(df: pd.DataFrame) -> str:
    text = ("point", "schedule", "reference_schedule", "strategy", "label", "verdict_traditional", "verdict_uniform")
    ints = ("n_seeds", "reference_seeds", "vs_traditional_seeds", "vs_uniform_seeds")
    return frame_to_csv(df, [c for c in df.columns if c not in text + ints])


def _pp(iv_row: pd.Series, prefix: str) -> str:
    """``+0.42 [0.10, 0.74]`` percentage points; ``–`` without a comparison."""
    iv = Interval(100 * iv_row[f"vs_{prefix}"], 100 * iv_row[f"vs_{prefix}_low"], 100 * iv_row[f"vs_{prefix}_high"],
                  int(iv_row[f"vs_{prefix}_seeds"]))
    return iv.format("{:+.2f}")


def _error_cell(r: pd.Series) -> str:
    sd = "" if math.isnan(r["error_sd"]) else f" ± {100 * r['error_sd']:.2f}"
    return f"{100 * r['error']:.2f}{sd}"


def frontier_markdown(df: pd.DataFrame) -> str:
    """Per point and schedule: the reference line and a table of every budget and configuration."""
    level = f"{100 * LEVEL:.0f} %"
    parts = [f"Final test error (mean ± sd over seeds, %) at each budget, a share of Traditional's full-schedule "
             f"cost; Δ = the paired difference in error (percentage points, mean over seeds with its {level} "
             f"Student-t interval) against Traditional and against uniform at the same budget and seed; "
             f"better / worse: the interval lies wholly below / above 0.\n"]
    head = ["budget", "strategy", "seeds", "error %", f"Δ vs Traditional, pp [{level}]", "vs Traditional",
            f"Δ vs uniform, pp [{level}]", "vs uniform", "epochs"]
    for (point, schedule), g in df.groupby(["point", "schedule"], sort=False):
        ref = g.iloc[0]
        parts.append(f"## {point} · {schedule}\n")
        parts.append(f"Budget 1 = {ref['reference_cost']:,.0f} cost units: Traditional through "
                     f"{ref['reference_schedule']} ({int(ref['reference_seeds'])} seed(s), final error "
                     f"{100 * ref['reference_error']:.2f} %).\n")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in g.iterrows():
            lines.append("| " + " | ".join([f"{r['budget']:g}", str(r["label"]), str(r["n_seeds"]), _error_cell(r),
                                              _pp(r, "traditional"), r["verdict_traditional"] or "–",
                                              _pp(r, "uniform"), r["verdict_uniform"] or "–",
                                              f"{r['epochs']:.1f}"]) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _band(ax, x: np.ndarray, low: np.ndarray, high: np.ndarray, color: str) -> None:
    """The interval as a band over the budgets; at a lone budget (a band needs two) as a bar."""
    ok = ~(np.isnan(low) | np.isnan(high))
    if ok.sum() >= 2:
        ax.fill_between(x[ok], low[ok], high[ok], color=color, alpha=0.15, lw=0)
    elif ok.any():
        ax.vlines(x[ok], low[ok], high[ok], color=color, alpha=0.5, lw=3)


def plot_frontier(df: pd.DataFrame) -> Figure:
    """One row of two panels per point and schedule: final test error against the budget (one line per
    configuration; band: Traditional's mean at that budget + the paired interval, Traditional's own: its
    t interval over seeds) and the paired difference against Traditional with its interval (0 =
    Traditional)."""
    groups = list(df.groupby(["point", "schedule"], sort=False))
    fig = Figure(figsize=(11, 3.9 * len(groups)), constrained_layout=True)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for ((point, schedule), g), (left, right) in zip(groups, axes):
        trad = g[g["strategy"] == TRADITIONAL].groupby("budget")["error"].mean()
        styles: dict[str, int] = {}
        n_labels = g["label"].nunique()
        lone = g["budget"].nunique() == 1  # one budget: dodge the configurations so their bars do not overlap
        for i, (label, c) in enumerate(g.groupby("label", sort=False)):
            c = c.sort_values("budget")
            strategy = str(c["strategy"].iloc[0])
            color = strategy_color(strategy)
            style = ("-", "--", ":")[min(styles.setdefault(strategy, 0), 2)]
            styles[strategy] += 1
            x = c["budget"].to_numpy(float)
            if lone:
                x = x + 0.004 * (i - (n_labels - 1) / 2)
            y = 100 * c["error"].to_numpy(float)
            base = 100 * c["budget"].map(trad).to_numpy(float)
            if strategy == TRADITIONAL:
                low, high = 100 * c["error_low"].to_numpy(float), 100 * c["error_high"].to_numpy(float)
            else:
                low = base + 100 * c["vs_traditional_low"].to_numpy(float)
                high = base + 100 * c["vs_traditional_high"].to_numpy(float)
            left.plot(x, y, style, marker="o", color=color, label=str(label), lw=2.2 if strategy == TRADITIONAL else 1.4)
            _band(left, x, low, high, color)
            if strategy != TRADITIONAL:
                right.plot(x, 100 * c["vs_traditional"].to_numpy(float), style, marker="o", color=color, label=str(label))
                _band(right, x, 100 * c["vs_traditional_low"].to_numpy(float),
                      100 * c["vs_traditional_high"].to_numpy(float), color)
        right.axhline(0.0, color="black", lw=0.9)
        for ax in (left, right):
            ax.set_xlabel("budget (share of Traditional's full-schedule cost)")
            ax.set_xticks(sorted(g["budget"].unique()))
        left.set_ylabel("final test error (%)")
        right.set_ylabel("error − Traditional's (pp; < 0 = better)")
        left.set_title(f"{point} · {schedule}", fontsize=10)
        right.set_title(f"paired with Traditional per seed, {100 * LEVEL:.0f} % interval", fontsize=10)
        left.legend(fontsize=7)
    return fig


def write_frontier(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """frontier.csv, frontier.md and frontier.png/.pdf into ``out_dir``."""
    out = Path(out_dir)
    paths = write_texts(out, {"frontier.csv": frontier_csv(df), "frontier.md": frontier_markdown(df)})
    fig = plot_frontier(df)
    for ext in ("png", "pdf"):
        path = out / f"frontier.{ext}"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


__all__ = ["frontier_runs", "reference_runs", "budget_runs", "frontier_table", "frontier_csv", "frontier_markdown",
           "plot_frontier", "write_frontier"]

"""The regime map: where does loss-based selection pay off, and where not?

A *regime point* is one training setup that every strategy shares: the dataset (with its subset size,
augmentation and test subset), the model (with its width) and the LR schedule
(:func:`~selective_backprop.analysis.records.point_of`). Within a point every configuration is compared
with the same seed's Traditional run (:mod:`.paired`): the geometric-mean speedup to Traditional's own
final error × f on the cost axis (forward-equivalent units) and the time axis (training seconds; runs the
timing audit flags left out, :mod:`.audit`), with a 90 % interval, the seeds that reached the target and a
verdict; the final-error differences to Traditional and to the uniform control; and the uniform control's
cost to the target over the configuration's (what ranking by loss adds over a random subset of the same
size, as ``../shared/PAPER.md`` asks). Across points the map relates the speedups to how saturated
Traditional is: its final training loss (the mean training-forward loss over its last evaluation
interval, as in ``metrics.jsonl``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .audit import audit_markdown, flagged_list, flagged_runs, timing_audit
from .paired import (METHOD, METHOD_ERROR, difference_cell, paired_table, ratio_cell, reach_text, seeds_text,
                     speedup_cell)
from .pareto import strategy_color
from .records import RunSet, config_label, point_label, point_of, strategy_sort_key  # noqa: F401 (re-exported)
from .table1 import TRADITIONAL, float_columns, frame_to_csv, write_texts

REGIME_FACTORS: tuple[float, ...] = (1.1, 1.2)
REGIME_AXES: tuple[str, ...] = ("cost", "time")


def run_points(runset: RunSet) -> pd.DataFrame:
    """One row per run: ``run_dir``, ``point`` (the label) and ``setup``."""
    return runset.runs[["run_dir", "point", "setup"]].copy()


def _final_train_loss(runset: RunSet, trad_dirs: set[str]) -> float:
    """Seed mean of the Traditional runs' last recorded training loss."""
    trad = runset.evals[runset.evals["run_dir"].isin(trad_dirs)]
    if trad.empty or "train_loss" not in trad.columns:
        return math.nan
    last = trad.sort_values("eval_idx").groupby("run_dir")["train_loss"].last()
    return float(pd.to_numeric(last, errors="coerce").mean())


def regime_table(runset: RunSet, factors: Sequence[float] = REGIME_FACTORS) -> pd.DataFrame:
    """One row per (regime point, non-Traditional configuration) with :func:`.paired.paired_table`'s
    columns on the cost and time axes and ``trad_train_loss``; points ordered by Traditional's training
    loss, falling. Points without a Traditional run are left out (named in a warning). The timing audit's
    flagged runs are in ``df.attrs["flagged"]`` (and ``df.attrs["n_runs"]`` runs were audited)."""
    audit = timing_audit(runset)
    df = paired_table(runset, factors, REGIME_AXES, flagged_runs(audit))
    if df.empty:
        return df
    runs = runset.runs
    loss = {p: _final_train_loss(runset, set(g.loc[g["strategy"] == TRADITIONAL, "run_dir"]))
            for p, g in runs.groupby("point", sort=False)}
    df.insert(df.columns.get_loc("trad_seeds"), "trad_train_loss", df["point"].map(loss))
    df["_s"] = df["strategy"].map(lambda s: strategy_sort_key(str(s)))
    df = (df.sort_values(["trad_train_loss", "point", "_s", "config"], ascending=[False, True, True, True],
                         kind="stable").drop(columns="_s").reset_index(drop=True))
    df.attrs.update({"flagged": flagged_list(audit), "n_runs": len(audit)})
    return df


def regime_csv(df: pd.DataFrame) -> str:
    return frame_to_csv(df, float_columns(df))


def method_note(factors: Sequence[float]) -> str:
    """What every paired table's cells mean (one paragraph)."""
    return (f"Speedup over Traditional to its final error × {' / '.join(f'{f:g}' for f in factors)} (cost: "
            "forward-equivalent units; time: training seconds): " + METHOD + ". Error columns: " + METHOD_ERROR
            + ". ÷ uniform: the uniform control's cost to the target over the configuration's (geometric mean "
            "over the seeds where both reached it, in brackets how many of the paired seeds did; > 1: ranking "
            "by loss beat a random subset of the same size).")


def reach_lines(df: pd.DataFrame, factors: Sequence[float]) -> list[str]:
    """One bullet per point: Traditional's seeds, final error and first reach of each target."""
    lines = []
    for point, g in df.groupby("point", sort=False):
        r = g.iloc[0]
        sd = "" if math.isnan(r["trad_final_error_sd"]) else f" ± {100 * r['trad_final_error_sd']:.2f}"
        lines.append(f"- {point}: Traditional ({seeds_text(r['trad_seeds'])}, {100 * r['trad_final_error']:.2f}{sd} %) "
                     f"first reaches its own {reach_text(r, factors)}")
    return lines


def regime_markdown(df: pd.DataFrame, factors: Sequence[float] = REGIME_FACTORS) -> str:
    """A markdown table, points from least to most saturated Traditional (falling training loss), then
    Traditional's first reach per point and the timing audit."""
    head = ["point", "Trad train loss", "Trad error", "strategy", "seeds", "error", "Δ error vs Trad (pts)"]
    head += [f"{axis} ×{f:g}" for axis in REGIME_AXES for f in factors]
    head += [f"÷ uniform (cost ×{f:g})" for f in factors]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [str(r["point"]), f"{r['trad_train_loss']:.3f}", f"{100 * r['trad_final_error']:.2f} %",
                 str(r["config"]), str(r["n_seeds"]), f"{100 * r['final_error']:.2f} %",
                 difference_cell(r, "error_vs_trad")]
        cells += [speedup_cell(r, axis, f) for axis in REGIME_AXES for f in factors]
        cells += [ratio_cell(r, f"vs_uniform_cost_{f:g}") for f in factors]
        lines.append("| " + " | ".join(cells) + " |")
    reach = ["Traditional's first reach of each target (epoch, seed mean and range; share of its cost spent):", ""]
    reach += reach_lines(df, factors)
    audit = audit_markdown(df.attrs.get("flagged", []), df.attrs.get("n_runs", 0))
    return "\n\n".join([method_note(factors), "\n".join(lines), "\n".join(reach), audit.rstrip("\n")]) + "\n"


def plot_regime(df: pd.DataFrame, factors: Sequence[float] = REGIME_FACTORS, axis: str = "cost") -> Figure:
    """Speedup on ``axis`` against Traditional's final training loss, one panel per factor: a filled dot
    with its 90 % interval where every paired seed reached the target, an open ``v`` at the upper bound
    where some seed did not (:mod:`.paired`)."""
    fig = Figure(figsize=(5.2 * len(factors), 3.8), constrained_layout=True)
    axes = fig.subplots(1, len(factors), squeeze=False)[0]
    for ax, f in zip(axes, factors):
        name = f"speedup_{axis}_{f:g}"
        for (strat, label), g in df.groupby(["strategy", "config"], sort=False):
            k_n = g[f"reached_{axis}_{f:g}"].str.split("/", expand=True).astype(int)
            full = (k_n[0] == k_n[1]) & (k_n[1] > 0) & g[name].notna()
            part = (k_n[0] < k_n[1]) & g[name].notna()
            color = strategy_color(str(strat))
            y = g.loc[full, name]
            err = [(y - g.loc[full, f"{name}_low"]).fillna(0), (g.loc[full, f"{name}_high"] - y).fillna(0)]
            ax.errorbar(g.loc[full, "trad_train_loss"], y, yerr=err, fmt="o", color=color, label=str(label),
                        ms=6, capsize=3)
            ax.scatter(g.loc[part, "trad_train_loss"], g.loc[part, name], facecolors="none", edgecolors=color,
                       marker="v", s=40)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("Traditional's final training loss (log; lower = more saturated)")
        ax.set_ylabel(f"speedup to Trad error × {f:g} ({axis})")
        ax.set_title(f"×{f:g}: dot = every seed reached (90 % interval); v = upper bound", fontsize="small")
    axes[0].legend(fontsize=8)
    return fig


def write_regime(df: pd.DataFrame, out_dir: str | Path, factors: Sequence[float] = REGIME_FACTORS) -> list[Path]:
    """regime_map.csv, regime_map.md, regime_map_cost.png/.pdf and regime_map_time.png into ``out_dir``."""
    out = Path(out_dir)
    paths = write_texts(out, {"regime_map.csv": regime_csv(df), "regime_map.md": regime_markdown(df, factors)})
    for axis in REGIME_AXES:
        fig = plot_regime(df, factors, axis)
        for ext in ("png", "pdf") if axis == "cost" else ("png",):
            path = out / f"regime_map_{axis}.{ext}"
            fig.savefig(path, dpi=120)
            paths.append(path)
    return paths


__all__ = ["config_label", "point_of", "point_label", "run_points", "regime_table", "regime_markdown", "regime_csv",
           "plot_regime", "write_regime"]

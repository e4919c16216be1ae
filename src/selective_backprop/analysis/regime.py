"""The regime map: where does loss-based selection pay off, and where not?

A *regime point* is one training setup that every strategy shares: the dataset (with its subset size and
augmentation), the model (with its width) and the LR schedule. Within a point, Table 1's definitions
apply unchanged (:mod:`.table1`): Traditional's final error E is the reference, and each strategy's
speedup at factor f is Traditional's time to E·f over the strategy's, on an axis (``cost`` in
forward-equivalent units, or ``time`` = training seconds). Across points the map relates the speedups to
how saturated Traditional is: its final training loss (the mean training-forward loss over its last
evaluation interval, as in ``metrics.jsonl``).

Beside each speedup: the per-seed spread (Table 1 computed seed by seed, each seed against its own
Traditional run) and the ratio to the uniform control's time on the same axis (what ranking by loss
adds over training on a random subset of the same size), as ``../shared/PAPER.md`` asks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from .pareto import strategy_color
from .records import SUMMARY_FILE, RunSet, strategy_label, strategy_sort_key
from .table1 import TRADITIONAL, frame_to_csv, speedup_column, table1, write_texts

REGIME_FACTORS: tuple[float, ...] = (1.1, 1.2)
REGIME_AXES: tuple[str, ...] = ("cost", "time")
UNIFORM = "uniform"
# the strategy parameter that tells two configurations of a strategy apart in a label: (key, short
# name, default); a configuration at the default is labelled by the strategy alone (None: always named)
LABEL_PARAMS = {"stale_sb": ("staleness", "n", None), "sb": ("selectivity", "s", 1 / 3),
                "uniform": ("selectivity", "s", 1 / 3), "infobatch": ("prune_ratio", "r", 0.5),
                "composer_sb": ("keep", "keep", 0.5)}


def _augmented(dataset: dict[str, Any]) -> bool:
    aug = dataset.get("augment") or {}
    return bool(aug.get("crop_padding") or aug.get("hflip") or aug.get("cutout"))


def point_of(config: dict[str, Any]) -> dict[str, Any]:
    """The regime point of a run's resolved config: dataset, subset, augmentation, model, width, schedule."""
    dataset, model = config.get("dataset") or {}, config.get("model") or {}
    return {"dataset": dataset.get("name"), "n_train": dataset.get("subset"),
            "augment": _augmented(dataset), "model": model.get("name"), "width": model.get("width"),
            "lr_schedule": (config.get("lr_schedule") or {}).get("name"), "n_test": dataset.get("test_subset")}


def point_label(point: dict[str, Any]) -> str:
    """e.g. ``fashion_mnist n2000 resnet8-w16 fashion_mnist_e30 aug`` (`` test2000`` appended when the
    errors come from a test subset: such a point is not merged with a full-test-set one)."""
    n = "full" if point["n_train"] is None else f"n{point['n_train']}"
    width = "" if point["width"] is None else f"-w{point['width']}"
    test = "" if point.get("n_test") is None else f" test{point['n_test']}"
    return (f"{point['dataset']} {n} {point['model']}{width} {point['lr_schedule']} "
            f"{'aug' if point['augment'] else 'noaug'}{test}")


def run_points(runset: RunSet) -> pd.DataFrame:
    """One row per run: ``run_dir`` and its regime point's fields plus ``point`` (the label)."""
    rows = []
    for run_dir in runset.runs["run_dir"]:
        summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
        point = point_of(summary.get("config") or {})
        rows.append({"run_dir": run_dir, **point, "point": point_label(point)})
    return pd.DataFrame(rows)


def _final_train_loss(runset: RunSet) -> float:
    """Seed mean of the Traditional runs' last recorded training loss."""
    trad = runset.evals[runset.evals["strategy"] == TRADITIONAL]
    if trad.empty or "train_loss" not in trad.columns:
        return math.nan
    last = trad.sort_values("eval_idx").groupby("run_dir")["train_loss"].last()
    return float(pd.to_numeric(last, errors="coerce").mean())


def _speedups(runset: RunSet, factors: Sequence[float], axis: str) -> dict[str, dict[float, float]]:
    """{strategy: {factor: speedup}} of Table 1 on one point (NaN: target not reached)."""
    df = table1(runset, factors, axis=axis)
    return {str(r["strategy"]): {f: float(r[speedup_column(f)]) for f in factors} for _, r in df.iterrows()}


def _seed_speedups(runset: RunSet, factors: Sequence[float], axis: str) -> dict[str, dict[float, list[float]]]:
    """Per strategy and factor, the speedups of each seed taken alone (against its own Traditional run)."""
    out: dict[str, dict[float, list[float]]] = {}
    for seed in sorted(runset.runs["seed"].dropna().unique()):
        one = runset.subset(runset.runs["seed"] == seed)
        for strat, by_factor in _speedups(one, factors, axis).items():
            for f, value in by_factor.items():
                out.setdefault(strat, {}).setdefault(f, []).append(value)
    return out


def _spread(values: list[float]) -> str:
    """``min–max`` of the per-seed speedups, ``–`` for a seed that never reached the target."""
    if not values:
        return ""
    if any(math.isnan(v) for v in values):
        reached = [v for v in values if not math.isnan(v)]
        return f"{len(reached)}/{len(values)} seeds reached"
    return f"{min(values):.2f}–{max(values):.2f}"


def config_label(strategy: str, params: dict[str, Any]) -> str:
    """e.g. ``Stale-SB n=2``, ``SB s=0.5``; a configuration at the strategy's default is its plain label."""
    label = strategy_label(strategy)
    key, short, default = LABEL_PARAMS.get(strategy, (None, None, None))
    value = params.get(key) if key else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return label
    if default is not None and abs(float(value) - default) < 1e-6:
        return label
    return f"{label} {short}={value:g}" if isinstance(value, float) else f"{label} {short}={value}"


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


def _point_rows(runset: RunSet, meta: dict[str, Any], factors: Sequence[float]) -> list[dict[str, Any]]:
    """One row per non-Traditional configuration (``config_key``) at one point: each is compared with
    the point's Traditional runs alone, so two configurations of a strategy (Stale-SB n = 2 and 3) stay
    apart."""
    runs = runset.runs
    trad = runs[runs["strategy"] == TRADITIONAL]
    trad_stats = own_stats(trad)
    base = {**meta, "trad_final_error": trad_stats["final_error"], "trad_train_loss": _final_train_loss(runset),
            "trad_seeds": trad_stats["n_seeds"],
            **{f"trad_{k}": v for k, v in trad_stats.items() if k not in ("n_seeds", "final_error")}}
    rows = []
    for _, own in runs[runs["strategy"] != TRADITIONAL].groupby("config_key", sort=False):
        strat = str(own["strategy"].iloc[0])
        sub = runset.subset(runs["run_dir"].isin(set(trad["run_dir"]) | set(own["run_dir"])))
        row = {**base, "strategy": strat, "config": config_label(strat, own.iloc[0].to_dict()), **own_stats(own)}
        for axis in REGIME_AXES:
            speed, seeds = _speedups(sub, factors, axis), _seed_speedups(sub, factors, axis)
            for f in factors:
                row[f"speedup_{axis}_{f:g}"] = speed.get(strat, {}).get(f, math.nan)
                row[f"spread_{axis}_{f:g}"] = _spread(seeds.get(strat, {}).get(f, []))
        rows.append(row)
    uniform = [r for r in rows if r["strategy"] == UNIFORM]
    for row in rows:
        for axis in REGIME_AXES:
            for f in factors:
                u = uniform[0][f"speedup_{axis}_{f:g}"] if len(uniform) == 1 else math.nan
                # time(uniform) / time(config) = speedup(config) / speedup(uniform); NaN when either missed
                row[f"vs_uniform_{axis}_{f:g}"] = (row[f"speedup_{axis}_{f:g}"] / u
                                                   if row["strategy"] != UNIFORM and u > 0 else math.nan)
    return sorted(rows, key=lambda r: (strategy_sort_key(r["strategy"]), r["config"]))


def regime_table(runset: RunSet, factors: Sequence[float] = REGIME_FACTORS) -> pd.DataFrame:
    """One row per (regime point, non-Traditional strategy), points ordered by Traditional's training loss.

    Points without a Traditional run are left out (they have no reference)."""
    points = run_points(runset)
    rows: list[dict[str, Any]] = []
    for label, group in points.groupby("point", sort=False):
        sub = runset.subset(runset.runs["run_dir"].isin(set(group["run_dir"])))
        if not (sub.runs["strategy"] == TRADITIONAL).any():
            continue
        meta = {k: group[k].iloc[0] for k in ("point", "dataset", "n_train", "augment", "model", "width",
                                               "lr_schedule", "n_test")}
        rows.extend(_point_rows(sub, meta, factors))
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_s"] = df["strategy"].map(lambda s: strategy_sort_key(str(s)))
    return df.sort_values(["trad_train_loss", "point", "_s", "config"], ascending=[False, True, True, True],
                          kind="stable").drop(columns="_s").reset_index(drop=True)


def regime_csv(df: pd.DataFrame) -> str:
    floats = [c for c in df.columns if c.startswith(("speedup_", "vs_uniform_", "trad_final", "trad_train",
                                                      "trad_epochs", "trad_backpropped", "trad_cost",
                                                      "final_error", "epochs", "backpropped", "cost", "train_s"))]
    return frame_to_csv(df, floats)


def _cell(value: float, spread: str) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.2f}×" + (f" ({spread})" if spread and "–" in spread else "")


def regime_markdown(df: pd.DataFrame, factors: Sequence[float] = REGIME_FACTORS) -> str:
    """A markdown table, points from least to most saturated Traditional (falling training loss)."""
    head = ["point", "Trad train loss", "Trad error", "strategy", "seeds", "error"]
    head += [f"cost ×{f:g}" for f in factors] + [f"time ×{f:g}" for f in factors]
    head += [f"÷ uniform (cost ×{f:g})" for f in factors]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [str(r["point"]), f"{r['trad_train_loss']:.3f}", f"{100 * r['trad_final_error']:.2f} %",
                 str(r["config"]), str(r["n_seeds"]), f"{100 * r['final_error']:.2f} %"]
        for axis in REGIME_AXES:
            cells += [_cell(r[f"speedup_{axis}_{f:g}"], r[f"spread_{axis}_{f:g}"]) for f in factors]
        cells += ["" if math.isnan(r[f"vs_uniform_cost_{f:g}"]) else f"{r[f'vs_uniform_cost_{f:g}']:.2f}×"
                  for f in factors]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Speedup over Traditional to Traditional's final error × f at each point (cost: forward-equivalent "
            "units; time: training seconds on a shared 2-core machine, ±30 %). \"–\" = not reached within the "
            "equal budget; per-seed range in brackets; ÷ uniform = the uniform control's cost to the target "
            "over the strategy's (> 1: ranking by loss beat a random subset of the same size).")
    return note + "\n\n" + "\n".join(lines) + "\n"


def plot_regime(df: pd.DataFrame, factors: Sequence[float] = REGIME_FACTORS, axis: str = "cost") -> Figure:
    """Speedup on ``axis`` against Traditional's final training loss, one panel per factor; a target not
    reached is drawn as an ``x`` at 0."""
    fig = Figure(figsize=(5.2 * len(factors), 3.8), constrained_layout=True)
    axes = fig.subplots(1, len(factors), squeeze=False)[0]
    for ax, f in zip(axes, factors):
        for (strat, label), g in df.groupby(["strategy", "config"], sort=False):
            x, y = g["trad_train_loss"], g[f"speedup_{axis}_{f:g}"]
            hit = y.notna()
            color = strategy_color(str(strat))
            ax.scatter(x[hit], y[hit], color=color, label=str(label), s=36)
            ax.scatter(x[~hit], [0.0] * int((~hit).sum()), color=color, marker="x", s=36)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("Traditional's final training loss (log; lower = more saturated)")
        ax.set_ylabel(f"speedup to Trad error × {f:g} ({axis})")
        ax.set_title(f"target: Traditional's final error × {f:g}")
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


__all__ = ["point_of", "point_label", "run_points", "regime_table", "regime_markdown", "regime_csv",
           "plot_regime", "write_regime"]

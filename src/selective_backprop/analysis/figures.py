"""The paper's figures from run records (pure functions returning DataFrames / Figures).

``FIGURES`` maps a name to a builder ``f(runset) -> Figure | None``; ``None`` (with an INFO
note logged) when the input holds no runs for that figure.

* ``fig1`` (alias ``fig10``): stacked phase-time bars to reach Traditional's final error × 1.2,
  per strategy (the configuration with the best time to that target, as in Table 1; phase
  seconds at each seed's first evaluation reaching it, averaged over seeds).
* ``fig6`` / ``fig7``: test error vs backprop updates (``step``) / training time (``train_s``):
  every configuration's seed-mean curve, thin; per strategy the configuration with the lowest
  final error bold.
* ``fig11``: staleness n (``strategy_params.staleness``; SB is n = 1) vs examples forwarded
  and final error (seed means), one series per (LR schedule, selectivity).
* ``fig12``: label noise (``config.dataset.label_noise``; clean runs are noise 0): final error
  per strategy (best configuration) and ``selected_noisy_fraction`` over epochs.
* ``fig13``: SB selectivity sweep: selectivity vs training time and final error (seed means),
  one series per LR schedule, Traditional's best configuration as a dashed reference.

All but ``fig12`` use runs without label noise only. Figures are built with
``matplotlib.figure.Figure`` (no pyplot state), so any backend works.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .pareto import strategy_color
from .records import (RunSet, configurations, seed_mean_curves, strategy_label,
                      strategy_sort_key)
from .table1 import TRADITIONAL, best_times, config_times, first_reaching_eval

logger = logging.getLogger(__name__)

FIG1_FACTOR = 1.2
#: stacked segments of Fig 1/10: label -> phases summed
PHASE_GROUPS = {
    "forward (selection)": ("select_forward",),
    "forward (training)": ("train_forward",),
    "backward": ("backward",),
    "other": ("data", "select", "optimizer"),
}
PHASE_GROUP_COLORS = ["tab:cyan", "tab:blue", "tab:red", "tab:gray"]


def _strategies(values: Iterable[str]) -> list[str]:
    return sorted(set(values), key=lambda s: strategy_sort_key(str(s)))


def _grid(n_rows: int, n_cols: int, w: float = 5.0, h: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * n_cols, h * n_rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    return fig, axes


# ---------------------------------------------------------------- Fig 6 / 7

def best_final_configs(runset: RunSet) -> pd.DataFrame:
    """Per (dataset, strategy) the configuration with the lowest seed-mean final error."""
    cfg = configurations(runset)
    if cfg.empty:
        return cfg
    cfg = cfg[cfg["final_test_error"].notna()]
    if cfg.empty:
        return cfg.reset_index(drop=True)
    idx = cfg.groupby(["dataset", "strategy"])["final_test_error"].idxmin()
    return cfg.loc[idx].reset_index(drop=True)


def error_curves(runset: RunSet, x: str = "step") -> Figure | None:
    """Test error vs ``x`` (``step`` → Fig 6, ``train_s`` → Fig 7), one panel per dataset."""
    rs = runset.clean()
    curves = seed_mean_curves(rs)
    if curves.empty or x not in curves.columns:
        return None
    best = set(best_final_configs(rs)["config_key"])
    datasets = sorted(curves["dataset"].unique())
    fig, axes = _grid(1, len(datasets))
    for ax, ds in zip(axes[0], datasets):
        g = curves[curves["dataset"] == ds]
        for key, c in g.groupby("config_key", sort=False):
            strat = c["strategy"].iloc[0]
            c = c.sort_values("epoch")
            if key in best:
                ax.plot(c[x], 100 * c["test_error"], color=strategy_color(strat), linewidth=2,
                        marker="o", markersize=3,
                        label=f"{strategy_label(strat)} ({c['lr_schedule'].iloc[0]})")
            else:
                ax.plot(c[x], 100 * c["test_error"], color=strategy_color(strat), linewidth=0.8,
                        alpha=0.35)
        ax.set_title(ds)
        ax.set_xlabel("backprop updates (optimizer steps)" if x == "step"
                      else "training time (s, evaluation excluded)")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def fig6(runset: RunSet) -> Figure | None:
    return error_curves(runset, "step")


def fig7(runset: RunSet) -> Figure | None:
    return error_curves(runset, "train_s")


# ---------------------------------------------------------------- Fig 1 / 10

def phase_breakdown(runset: RunSet, factor: float = FIG1_FACTOR) -> pd.DataFrame:
    """Per (dataset, strategy) — Traditional included — the training time to reach
    Traditional's final error × ``factor``, split into phases.

    The configuration is the one with the best time to that target (Table 1's choice); per seed
    the phase seconds at its first evaluation reaching the target, averaged over seeds.
    Columns: ``dataset, setup, strategy, config_key, reached, target, train_s``, the raw ``phase_*``
    columns and one column per :data:`PHASE_GROUPS` label. Strategies that never reach the
    target get ``reached=False`` and NaN times.
    """
    rs = runset.clean()
    cfg = config_times(rs, [factor])
    if cfg.empty:
        return pd.DataFrame()
    best = best_times(cfg, [factor])
    ev_by_run = {k: g for k, g in rs.evals.groupby("run_dir")}
    phase_cols = [c for c in rs.evals.columns if c.startswith("phase_")]
    rows = []
    for _, b in best.iterrows():
        key = b[f"config_{factor:g}"]
        key = None if pd.isna(key) else key
        target = b["final_error_traditional"] * factor
        row = {"dataset": b["dataset"], "setup": b["setup"], "strategy": b["strategy"], "config_key": key,
               "reached": key is not None, "target": target}
        if key is None:
            row["train_s"] = math.nan
            rows.append(row)
            continue
        hits = []
        for rd in rs.runs.loc[rs.runs["config_key"] == key, "run_dir"]:
            hit = first_reaching_eval(ev_by_run[rd], target)
            hits.append(hit)
        hits_df = pd.DataFrame(hits)
        row["train_s"] = float(pd.to_numeric(hits_df["train_s"]).mean())
        for c in phase_cols:
            row[c] = float(pd.to_numeric(hits_df[c], errors="coerce").fillna(0.0).mean())
        for label, phases in PHASE_GROUPS.items():
            row[label] = sum(row.get(f"phase_{p}", 0.0) for p in phases)
        rows.append(row)
    out = pd.DataFrame(rows)
    out["_s"] = out["strategy"].map(lambda s: strategy_sort_key(str(s)))
    return out.sort_values(["dataset", "setup", "_s"]).drop(columns="_s").reset_index(drop=True)


def fig1(runset: RunSet, factor: float = FIG1_FACTOR) -> Figure | None:
    df = phase_breakdown(runset, factor)
    if df.empty or not df["reached"].any():
        return None
    setups = list(dict.fromkeys(df["setup"]))
    fig, axes = _grid(1, len(setups), w=4.5)
    for ax, setup in zip(axes[0], setups):
        g = df[df["setup"] == setup].reset_index(drop=True)
        ds = setup if len(setups) > 1 else g["dataset"].iloc[0]
        xs = np.arange(len(g))
        bottom = np.zeros(len(g))
        for (label, _), color in zip(PHASE_GROUPS.items(), PHASE_GROUP_COLORS):
            vals = g[label].fillna(0.0).to_numpy() if label in g else np.zeros(len(g))
            ax.bar(xs, vals, bottom=bottom, color=color, label=label, width=0.6)
            bottom += vals
        ax.set_xticks(xs, [strategy_label(s) + ("" if r else "\n(not reached)")
                           for s, r in zip(g["strategy"], g["reached"])], fontsize="small")
        ax.set_ylabel("training time to target (s)")
        ax.set_title(f"{ds}: to {100 * g['target'].iloc[0]:.2f} % error "
                     f"(Trad final × {factor:g})", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    return fig


# ---------------------------------------------------------------- Fig 11

def staleness_table(runset: RunSet) -> pd.DataFrame:
    """SB (n = 1) and Stale-SB configurations: ``dataset, strategy, staleness, lr_schedule,
    selectivity, config_key, n_seeds, examples_forwarded, final_test_error`` (seed means)."""
    cfg = configurations(runset.clean())
    if cfg.empty:
        return cfg
    cfg = cfg[cfg["strategy"].isin(["sb", "stale_sb"])].copy()
    if cfg.empty:
        return cfg
    stale = cfg["staleness"] if "staleness" in cfg else pd.Series(np.nan, index=cfg.index)
    cfg["staleness"] = np.where(cfg["strategy"] == "sb", stale.fillna(1), stale)
    if "selectivity" not in cfg:
        cfg["selectivity"] = np.nan
    cols = ["dataset", "strategy", "staleness", "lr_schedule", "selectivity", "config_key",
            "n_seeds", "examples_forwarded", "final_test_error"]
    return cfg[cols].sort_values(["dataset", "lr_schedule", "selectivity", "staleness"]
                                 ).reset_index(drop=True)


def _series_label(lr: object, sel: object) -> str:
    s = f"{lr}"
    if sel is not None and not (isinstance(sel, float) and math.isnan(sel)):
        s += f", s={float(sel):.0%}"
    return s


def fig11(runset: RunSet) -> Figure | None:
    df = staleness_table(runset)
    if df.empty or not (df["strategy"] == "stale_sb").any():
        return None
    datasets = sorted(df.loc[df["strategy"] == "stale_sb", "dataset"].unique())
    fig, axes = _grid(len(datasets), 2, w=4.5)
    for row, ds in zip(axes, datasets):
        g = df[df["dataset"] == ds]
        for (lr, sel), s in g.groupby(["lr_schedule", "selectivity"], dropna=False):
            s = s.sort_values("staleness")
            lab = _series_label(lr, sel)
            row[0].plot(s["staleness"], s["examples_forwarded"], marker="o", label=lab)
            row[1].plot(s["staleness"], 100 * s["final_test_error"], marker="o", label=lab)
        for ax, ylab in zip(row, ("examples forwarded", "final test error (%)")):
            ax.set_xlabel("staleness n (1 = SB)")
            ax.set_ylabel(ylab)
            ax.set_title(ds)
            ax.set_xticks(sorted(g["staleness"].unique()))
            ax.grid(alpha=0.3)
        row[1].legend(fontsize="small")
    return fig


# ---------------------------------------------------------------- Fig 12

def label_noise_table(runset: RunSet) -> pd.DataFrame:
    """For each (dataset, strategy) run with label noise: per label_noise level the best
    configuration's seed-mean final error (its clean runs are noise 0)."""
    noisy_ds = set(runset.runs.loc[runset.runs["label_noise"].fillna(0) > 0, "dataset"])
    if not noisy_ds:
        return pd.DataFrame()
    cfg = configurations(runset)
    cfg = cfg[cfg["dataset"].isin(noisy_ds)].copy()
    cfg["label_noise"] = cfg["label_noise"].fillna(0.0)
    # only the strategies run with label noise on that dataset (and their clean baselines)
    noisy_pairs = set(zip(cfg.loc[cfg["label_noise"] > 0, "dataset"],
                          cfg.loc[cfg["label_noise"] > 0, "strategy"]))
    cfg = cfg[[(d, s) in noisy_pairs for d, s in zip(cfg["dataset"], cfg["strategy"])]]
    cfg = cfg[cfg["final_test_error"].notna()]
    if cfg.empty:
        return pd.DataFrame()
    idx = cfg.groupby(["dataset", "strategy", "label_noise"])["final_test_error"].idxmin()
    out = cfg.loc[idx, ["dataset", "strategy", "label_noise", "config_key",
                                    "n_seeds", "final_test_error"]]
    out["_s"] = out["strategy"].map(lambda s: strategy_sort_key(str(s)))
    return out.sort_values(["dataset", "_s", "label_noise"]).drop(columns="_s").reset_index(drop=True)


def fig12(runset: RunSet) -> Figure | None:
    table = label_noise_table(runset)
    if table.empty:
        return None
    noisy = runset.subset(runset.runs["label_noise"].fillna(0) > 0)
    curves = seed_mean_curves(noisy)
    datasets = sorted(table["dataset"].unique())
    fig, axes = _grid(len(datasets), 2, w=4.5)
    for row, ds in zip(axes, datasets):
        g = table[table["dataset"] == ds]
        for strat in _strategies(g["strategy"]):
            s = g[g["strategy"] == strat].sort_values("label_noise")
            row[0].plot(100 * s["label_noise"], 100 * s["final_test_error"], marker="o",
                        color=strategy_color(strat), label=strategy_label(strat))
        row[0].set_xlabel("labels flipped (%)")
        row[0].set_ylabel("final test error (%)")
        row[0].set_title(f"{ds}: label noise")
        row[0].legend(fontsize="small")
        c = curves[curves["dataset"] == ds] if not curves.empty else curves
        if "selected_noisy_fraction" in c.columns and c["selected_noisy_fraction"].notna().any():
            for key, s in c.groupby("config_key", sort=False):
                strat, noise = s["strategy"].iloc[0], s["label_noise"].iloc[0]
                row[1].plot(s["epoch"], 100 * s["selected_noisy_fraction"], marker="o",
                            color=strategy_color(strat),
                            label=f"{strategy_label(strat)}, {100 * noise:g} % noise")
            row[1].legend(fontsize="small")
        else:
            row[1].text(0.5, 0.5, "no selected_noisy_fraction recorded", ha="center",
                        va="center", transform=row[1].transAxes)
        row[1].set_xlabel("epoch")
        row[1].set_ylabel("flipped labels among backpropped (%)")
        row[1].set_title(f"{ds}: noisy examples selected")
        for ax in row:
            ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------- Fig 13

def selectivity_table(runset: RunSet) -> pd.DataFrame:
    """SB configurations: ``dataset, selectivity, beta, lr_schedule, config_key, n_seeds,
    train_s, final_test_error`` (seed means)."""
    cfg = configurations(runset.clean())
    if cfg.empty or "selectivity" not in cfg:
        return pd.DataFrame()
    cfg = cfg[(cfg["strategy"] == "sb") & cfg["selectivity"].notna()].copy()
    if "beta" not in cfg:
        cfg["beta"] = np.nan
    cols = ["dataset", "selectivity", "beta", "lr_schedule", "config_key", "n_seeds", "train_s",
            "final_test_error"]
    return cfg[cols].sort_values(["dataset", "lr_schedule", "selectivity"]).reset_index(drop=True)


def fig13(runset: RunSet) -> Figure | None:
    df = selectivity_table(runset)
    if df.empty:
        return None
    n_sel = df.groupby("dataset")["selectivity"].nunique()
    datasets = sorted(n_sel.index[n_sel >= 2])
    if not datasets:
        return None
    trad = best_final_configs(runset.clean())
    trad = trad[trad["strategy"] == TRADITIONAL].set_index("dataset") if len(trad) else trad
    fig, axes = _grid(len(datasets), 2, w=4.5)
    for row, ds in zip(axes, datasets):
        g = df[df["dataset"] == ds]
        for lr, s in g.groupby("lr_schedule", dropna=False):
            s = s.sort_values("selectivity")
            row[0].plot(100 * s["selectivity"], s["train_s"], marker="o", label=f"SB ({lr})")
            row[1].plot(100 * s["selectivity"], 100 * s["final_test_error"], marker="o",
                        label=f"SB ({lr})")
        if len(trad) and ds in trad.index:
            t = trad.loc[ds]
            row[0].axhline(t["train_s"], color=strategy_color(TRADITIONAL), linestyle="--",
                           label="Traditional")
            row[1].axhline(100 * t["final_test_error"], color=strategy_color(TRADITIONAL),
                           linestyle="--", label="Traditional")
        for ax, ylab in zip(row, ("training time (s)", "final test error (%)")):
            ax.set_xlabel("selectivity (%)")
            ax.set_ylabel(ylab)
            ax.set_title(f"{ds}: selectivity sweep")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize="small")
    return fig


# ---------------------------------------------------------------- registry

FIGURES: dict[str, Callable[[RunSet], Figure | None]] = {
    "fig1": fig1,
    "fig6": fig6,
    "fig7": fig7,
    "fig11": fig11,
    "fig12": fig12,
    "fig13": fig13,
}
ALIASES = {"fig10": "fig1", "fig1_10": "fig1", "fig14": "pareto"}


def resolve_names(which: str | Iterable[str] | None) -> list[str]:
    """Figure names from ``"fig6,fig7"`` / a list / None (= all), aliases resolved, order kept.
    Raises ``ValueError`` for an unknown name."""
    if which is None:
        return list(FIGURES)
    items = which.split(",") if isinstance(which, str) else list(which)
    names: list[str] = []
    for raw in items:
        n = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not n:
            continue
        if n == "pareto":
            raise ValueError("the Pareto figure (Fig 14) is made by scripts/plot_pareto.py")
        if n not in FIGURES:
            raise ValueError(f"unknown figure {raw!r}; choose from "
                             f"{', '.join(list(FIGURES) + list(ALIASES))}")
        if n not in names:
            names.append(n)
    return names


def make_figure(name: str, runset: RunSet) -> Figure | None:
    """Build one figure; None (with an INFO note) when its runs are absent."""
    (name,) = resolve_names([name])
    fig = FIGURES[name](runset)
    if fig is None:
        logger.info("%s skipped: no runs for it in the input", name)
    return fig


def write_figures(runset: RunSet, out_dir: str | Path,
                  which: str | Iterable[str] | None = None) -> dict[str, list[Path]]:
    """Write ``<name>.png`` and ``<name>.pdf`` for each requested figure that has data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for name in resolve_names(which):
        fig = make_figure(name, runset)
        if fig is None:
            continue
        written[name] = []
        for ext in ("png", "pdf"):
            p = out / f"{name}.{ext}"
            fig.savefig(p, dpi=150)
            written[name].append(p)
    return written

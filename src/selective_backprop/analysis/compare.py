"""The strategy comparison: every configuration beside Traditional on the same data, budget and seeds.

One row per (point, configuration): a *point* is a regime point (:mod:`.regime`: dataset, subset,
augmentation, model, width, LR schedule) holding a Traditional reference, and a configuration is the
runs sharing ``config_key`` (so Stale-SB n = 2 and n = 3 are separate rows, unlike Table 1, which keeps
each strategy's best configuration). For each row: the seeds, the final test error (mean and standard
deviation over seeds), the backward passes (examples backpropped) and the cost spent (seed means), and
Table 1's speedup to Traditional's final error × f on the cost and time axes with the per-seed range
(each seed against its own Traditional run), and the uniform control's cost to the target over the
configuration's (> 1: ranking beat a random subset of the same size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .records import RunSet, strategy_label, strategy_sort_key
from .regime import REGIME_AXES, UNIFORM, _point_rows, run_points
from .table1 import TRADITIONAL, frame_to_csv, write_texts

COMPARE_FACTORS: tuple[float, ...] = (1.1, 1.2)
# strategy parameters that tell two configurations of one strategy apart in a label
LABEL_PARAMS = {"stale_sb": ("staleness", "n"), "sb": ("selectivity", "s"), "uniform": ("selectivity", "s"),
                "infobatch": ("prune_ratio", "r"), "composer_sb": ("keep", "keep")}


def config_label(strategy: str, params: dict[str, Any]) -> str:
    """e.g. ``Stale-SB n=2``; SB / uniform name their selectivity only when it is not the paper's 1/3."""
    label = strategy_label(strategy)
    key, short = LABEL_PARAMS.get(strategy, (None, None))
    value = params.get(key) if key else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return label
    if key == "selectivity" and abs(float(value) - 1 / 3) < 1e-6:
        return label
    return f"{label} {short}={value:g}" if isinstance(value, float) else f"{label} {short}={value}"


def _std(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def compare_table(runset: RunSet, factors: Sequence[float] = COMPARE_FACTORS) -> pd.DataFrame:
    """One row per (point, configuration), Traditional first in each point; see the module docstring."""
    points = run_points(runset)
    runs = runset.runs
    rows: list[dict[str, Any]] = []
    for label, group in points.groupby("point", sort=False):
        here = runs[runs["run_dir"].isin(set(group["run_dir"]))]
        trad = here[here["strategy"] == TRADITIONAL]
        if trad.empty:
            continue
        meta = {"point": label, "lr_schedule": group["lr_schedule"].iloc[0]}
        rows.append({**meta, "strategy": TRADITIONAL, "config": strategy_label(TRADITIONAL), **_own(trad)})
        point_rows = []
        for key, own in here[here["strategy"] != TRADITIONAL].groupby("config_key", sort=False):
            sub = runset.subset(runs["run_dir"].isin(set(trad["run_dir"]) | set(own["run_dir"])))
            (row,) = _point_rows(sub, meta, factors)
            strategy = str(own["strategy"].iloc[0])
            params = own.iloc[0].to_dict()
            point_rows.append({**meta, "strategy": strategy, "config": config_label(strategy, params),
                               **_own(own), **{k: v for k, v in row.items() if k.startswith(("speedup_", "spread_"))}})
        uniform = [r for r in point_rows if r["strategy"] == UNIFORM]
        for r in point_rows:
            for f in factors:
                u = uniform[0][f"speedup_cost_{f:g}"] if len(uniform) == 1 else math.nan
                mine = r[f"speedup_cost_{f:g}"]
                r[f"vs_uniform_cost_{f:g}"] = mine / u if r["strategy"] != UNIFORM and u > 0 else math.nan
        point_rows.sort(key=lambda r: (strategy_sort_key(r["strategy"]), r["config"]))
        rows.extend(point_rows)
    return pd.DataFrame(rows)


def _own(runs: pd.DataFrame) -> dict[str, Any]:
    return {"n_seeds": len(runs), "final_error": float(runs["final_test_error"].mean()),
            "final_error_sd": _std(runs["final_test_error"]),
            "backpropped": float(pd.to_numeric(runs["examples_backpropped"]).mean()),
            "cost": float(pd.to_numeric(runs["cost"]).mean()),
            "train_s": float(pd.to_numeric(runs["train_s"]).mean())}


def compare_csv(df: pd.DataFrame) -> str:
    floats = [c for c in df.columns if c.startswith(("speedup_", "vs_uniform_", "final_error", "backpropped",
                                                      "cost", "train_s"))]
    return frame_to_csv(df, floats)


def _speedup_cell(value: float, spread: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        some = spread and "seeds reached" in spread and not spread.startswith("0/")
        return "–" + (f" ({spread})" if some else "")
    return f"{value:.2f}×" + (f" ({spread})" if spread else "")


def compare_markdown(df: pd.DataFrame, factors: Sequence[float] = COMPARE_FACTORS) -> str:
    """A markdown table per point: error ± sd, backward passes, cost, speedups (per-seed range)."""
    head = ["strategy", "seeds", "final error", "backprops", "cost (M units)"]
    head += [f"cost ×{f:g}" for f in factors] + [f"time ×{f:g}" for f in factors]
    head += [f"÷ uniform (cost ×{f:g})" for f in factors]
    out = ["Speedup over Traditional to Traditional's final error × f (cost: forward-equivalent units; "
           "time: training seconds on a shared 2-core machine, ±30 %), seed means with the per-seed range "
           "in brackets; \"–\" = not reached within the budget (how many seeds did, when some did); "
           "÷ uniform > 1: ranking by loss beat a random subset of the same size. Final error: mean ± sd "
           "over seeds; backprops and cost: seed means.", ""]
    for point, g in df.groupby("point", sort=False):
        out += [f"**{point}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in g.iterrows():
            sd = "" if math.isnan(r["final_error_sd"]) else f" ± {100 * r['final_error_sd']:.2f}"
            cells = [str(r["config"]), str(r["n_seeds"]), f"{100 * r['final_error']:.2f}{sd} %",
                     f"{r['backpropped']:,.0f}", f"{r['cost'] / 1e6:.3f}"]
            if r["strategy"] == TRADITIONAL:
                cells += ["1.00×"] * (2 * len(factors)) + [""] * len(factors)
            else:
                for axis in REGIME_AXES:
                    cells += [_speedup_cell(r[f"speedup_{axis}_{f:g}"], r[f"spread_{axis}_{f:g}"]) for f in factors]
                cells += ["" if math.isnan(r[f"vs_uniform_cost_{f:g}"]) else f"{r[f'vs_uniform_cost_{f:g}']:.2f}×"
                          for f in factors]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_compare(df: pd.DataFrame, out_dir: str | Path, factors: Sequence[float] = COMPARE_FACTORS) -> list[Path]:
    return write_texts(out_dir, {"comparison.csv": compare_csv(df), "comparison.md": compare_markdown(df, factors)})

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

from .records import RunSet, strategy_label
from .regime import REGIME_AXES, REGIME_FACTORS, regime_table
from .table1 import TRADITIONAL, frame_to_csv, write_texts

COMPARE_FACTORS: tuple[float, ...] = REGIME_FACTORS


def compare_table(runset: RunSet, factors: Sequence[float] = COMPARE_FACTORS) -> pd.DataFrame:
    """One row per (point, configuration), Traditional first in each point; see the module docstring."""
    df = regime_table(runset, factors)
    if df.empty:
        return df
    rows: list[dict[str, Any]] = []
    for label, g in df.groupby("point", sort=False):
        first = g.iloc[0]           # every row of a point carries its Traditional reference's stats
        trad = {k: first[f"trad_{k}"] for k in ("final_error", "final_error_sd", "epochs", "backpropped",
                                                 "cost", "train_s")}
        rows.append({"point": label, "lr_schedule": first["lr_schedule"], "strategy": TRADITIONAL,
                     "config": strategy_label(TRADITIONAL), "n_seeds": first["trad_seeds"], **trad})
        rows.extend(g.to_dict("records"))
    keep = ["point", "lr_schedule", "strategy", "config", "n_seeds", "final_error", "final_error_sd",
            "backpropped", "cost", "train_s"]
    out = pd.DataFrame(rows)
    return out[keep + [c for c in out.columns if c.startswith(("speedup_", "spread_", "vs_uniform_cost"))]]


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

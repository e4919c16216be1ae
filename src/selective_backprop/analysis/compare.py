"""The strategy comparison: every configuration beside Traditional on the same data, budget and seeds.

One row per (point, configuration): a *point* is a regime point (:mod:`.regime`: dataset, subset,
augmentation, model, width, test subset, LR schedule) holding a Traditional reference, and a
configuration is the runs sharing ``config_key`` (so Stale-SB n = 2 and n = 3 are separate rows, unlike
the paper's Table 1 layout, which keeps each strategy's best configuration). For each row: the seeds, the
final test error (mean and standard deviation over seeds) and its paired differences to Traditional and
to the uniform control, the backward passes (examples backpropped) and the cost spent (seed means), and
the paired speedups to Traditional's final error × f on the cost and time axes (:mod:`.paired`: each seed
against its own Traditional run, geometric mean with a 90 % interval, seeds reached, verdict; runs the
timing audit flags left out of the time axis) and the uniform control's cost to the target over the
configuration's. Beside each point: the epoch at which Traditional first reaches each target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .audit import audit_markdown
from .paired import difference_cell, ratio_cell, reach_text, speedup_cell
from .records import strategy_label
from .regime import REGIME_AXES, REGIME_FACTORS, method_note, regime_table
from .table1 import TRADITIONAL, float_columns, frame_to_csv, write_texts

COMPARE_FACTORS: tuple[float, ...] = REGIME_FACTORS
TRAD_COLUMNS = ("final_error", "final_error_sd", "epochs", "backpropped", "cost", "train_s")


def compare_table(runset, factors: Sequence[float] = COMPARE_FACTORS) -> pd.DataFrame:
    """One row per (point, configuration), Traditional first in each point; see the module docstring."""
    df = regime_table(runset, factors)
    if df.empty:
        return df
    rows: list[dict[str, Any]] = []
    for label, g in df.groupby("point", sort=False):
        first = g.iloc[0]           # every row of a point carries its Traditional reference's stats
        reach = {k: first[k] for k in first.index if k.startswith(("trad_epoch_", "trad_cost_frac_"))}
        rows.append({"point": label, "lr_schedule": first["lr_schedule"], "strategy": TRADITIONAL,
                     "config": strategy_label(TRADITIONAL), "n_seeds": first["trad_seeds"],
                     **{k: first[f"trad_{k}"] for k in TRAD_COLUMNS}, **reach})
        rows.extend({**r, **reach} for r in g.to_dict("records"))
    keep = ["point", "lr_schedule", "strategy", "config", "n_seeds", "final_error", "final_error_sd",
            "backpropped", "cost", "train_s"]
    out = pd.DataFrame(rows)
    extra = [c for c in out.columns if c.startswith(("error_vs_", "verdict_error", "speedup_", "reached_", "verdict_",
                                                      "vs_uniform_", "trad_epoch_", "trad_cost_frac_"))]
    out = out[keep + list(dict.fromkeys(extra))]
    out.attrs.update(df.attrs)
    return out


def compare_csv(df: pd.DataFrame) -> str:
    return frame_to_csv(df, float_columns(df))


def compare_markdown(df: pd.DataFrame, factors: Sequence[float] = COMPARE_FACTORS) -> str:
    """A markdown table per point: error ± sd and its paired differences, backward passes, cost, paired
    speedups; Traditional's first reach above each table, the timing audit below."""
    head = ["strategy", "seeds", "final error", "Δ vs Trad (pts)", "Δ vs uniform (pts)", "backprops",
            "cost (M units)"]
    head += [f"{axis} ×{f:g}" for axis in REGIME_AXES for f in factors]
    head += [f"÷ uniform (cost ×{f:g})" for f in factors]
    out = [method_note(factors) + " Final error: mean ± sd over seeds; backprops and cost: seed means.", ""]
    for point, g in df.groupby("point", sort=False):
        trad = g.iloc[0]
        out += [f"**{point}** — Traditional first reaches its own {reach_text(trad, factors)}.", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in g.iterrows():
            sd = "" if math.isnan(r["final_error_sd"]) else f" ± {100 * r['final_error_sd']:.2f}"
            cells = [str(r["config"]), str(r["n_seeds"]), f"{100 * r['final_error']:.2f}{sd} %"]
            if r["strategy"] == TRADITIONAL:
                cells += ["(reference)", ""]
            else:
                cells += [difference_cell(r, "error_vs_trad"), difference_cell(r, "error_vs_uniform")]
            cells += [f"{r['backpropped']:,.0f}", f"{r['cost'] / 1e6:.3f}"]
            if r["strategy"] == TRADITIONAL:
                cells += [""] * (len(REGIME_AXES) * len(factors) + len(factors))
            else:
                cells += [speedup_cell(r, axis, f) for axis in REGIME_AXES for f in factors]
                cells += [ratio_cell(r, f"vs_uniform_cost_{f:g}") for f in factors]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(audit_markdown(df.attrs.get("flagged", []), df.attrs.get("n_runs", 0)))
    return "\n".join(out)


def write_compare(df: pd.DataFrame, out_dir: str | Path, factors: Sequence[float] = COMPARE_FACTORS) -> list[Path]:
    return write_texts(out_dir, {"comparison.csv": compare_csv(df), "comparison.md": compare_markdown(df, factors)})

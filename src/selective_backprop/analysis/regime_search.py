"""The regime search: in which setup does Traditional look like the paper's runs?

The paper's Traditional keeps improving through every LR stage (CIFAR10: 2.96 % only at the end) with a
training loss near zero. Here a setup (scripts/regime_search.sh: training-set size, width, augmentation,
schedule) is *paper-shaped* when Traditional first reaches its final test error × 1.1 only after at
least :data:`SLOW_SHARE` of its schedule and its final training loss is at most ``low_loss`` (default
:data:`LOW_LOSS`). Per setup (a configuration: runs sharing ``config_key``), over its seeds: the final
training loss (the mean training-forward loss of the last evaluation interval), the final test error, the
first epoch at or below final × 1.1 and × 1.2 (each seed against its own final error) and as a share of
the schedule, and minutes per run (training plus evaluations, and training alone; process start-up and
data loading excluded).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from .records import SUMMARY_FILE, RunSet, point_of
from .table1 import frame_to_csv, write_texts
from .targets import TRADITIONAL, first_reaching_eval

SEARCH_FACTORS: tuple[float, ...] = (1.1, 1.2)
SLOW_SHARE = 0.7
LOW_LOSS = 0.1


def augment_label(dataset: dict[str, Any]) -> str:
    """``none``, ``flip``, ``crop2``, ``crop2+flip``, ... (``+cutoutN``) from ``dataset.augment``."""
    aug = dataset.get("augment") or {}
    parts = ([f"crop{aug['crop_padding']}"] if aug.get("crop_padding") else []) + (["flip"] if aug.get("hflip") else [])
    parts += [f"cutout{aug['cutout']}"] if aug.get("cutout") else []
    return "+".join(parts) or "none"


def setup_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The knobs of a run's setup (from its summary.json): training-set size (the summary's n_train when
    the whole set is used), width, augmentation, schedule, test subset."""
    config = summary.get("config") or {}
    p = point_of(config)
    return {"n_train": p["n_train"] if p["n_train"] is not None else summary.get("n_train"), "width": p["width"],
            "augment": augment_label(config.get("dataset") or {}), "schedule": p["lr_schedule"], "n_test": p["n_test"]}


def setup_label(setup: dict[str, Any]) -> str:
    """e.g. ``n6000 w16 none fashion_mnist_e30`` (`` test2000`` when measured on a test subset)."""
    test = "" if setup["n_test"] is None else f" test{setup['n_test']}"
    return f"n{setup['n_train']} w{setup['width']} {setup['augment']} {setup['schedule']}{test}"


def _setup(run_dir: str) -> dict[str, Any]:
    return setup_of(json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8")))


def _seed_row(run: pd.Series, evals: pd.DataFrame, factors: Sequence[float]) -> dict[str, Any]:
    """One run's shape: final error and training loss, first epochs reaching final × f, minutes."""
    ev = evals.sort_values("eval_idx")
    last = ev.iloc[-1]
    final = float(last["test_error"])
    epochs = float(last["epoch"])
    train_s, eval_s = float(last.get("train_s", math.nan)), float(last.get("eval_s", math.nan))
    row = {"final_error": final, "final_train_loss": float(last.get("train_loss", math.nan)), "epochs": epochs,
           "minutes": (train_s + eval_s) / 60, "train_minutes": train_s / 60}
    for f in factors:
        hit = first_reaching_eval(ev, f * final)
        epoch = math.nan if hit is None else float(hit["epoch"])
        row[f"epoch_{f:g}"], row[f"share_{f:g}"] = epoch, epoch / epochs if epochs else math.nan
    return row


def search_table(runset: RunSet, factors: Sequence[float] = SEARCH_FACTORS, slow_share: float = SLOW_SHARE,
                 low_loss: float = LOW_LOSS) -> pd.DataFrame:
    """One row per Traditional setup: ``setup`` (label), its knobs, ``n_seeds``, the seed means of
    ``final_train_loss``, ``final_error``, ``epochs``, ``epoch_<f>`` / ``share_<f>`` for each factor,
    ``minutes`` and ``train_minutes``, and ``paper_shaped``. Paper-shaped setups first, then the latest
    reaching × factors[0]."""
    runs = runset.runs[runset.runs["strategy"] == TRADITIONAL]
    rows = []
    for _, g in runs.groupby("config_key", sort=False):
        setup = _setup(g["run_dir"].iloc[0])
        seeds = [_seed_row(r, runset.evals[runset.evals["run_dir"] == r["run_dir"]], factors)
                 for _, r in g.iterrows()]
        mean = pd.DataFrame(seeds).mean(numeric_only=True).to_dict()
        row = {"setup": setup_label(setup), **setup, "n_seeds": len(seeds), **mean}
        row["paper_shaped"] = bool(row[f"share_{factors[0]:g}"] >= slow_share - 1e-9
                                   and row["final_train_loss"] <= low_loss)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["paper_shaped", f"share_{factors[0]:g}", "setup"], ascending=[False, False, True],
                          kind="stable").reset_index(drop=True)


def search_csv(df: pd.DataFrame) -> str:
    text = ("setup", "augment", "schedule", "paper_shaped", "n_train", "width", "n_test", "n_seeds")
    return frame_to_csv(df, [c for c in df.columns if c not in text])


def _reached(r: pd.Series, f: float) -> str:
    epoch, share = r[f"epoch_{f:g}"], r[f"share_{f:g}"]
    return "–" if math.isnan(epoch) else f"{epoch:.1f} ({100 * share:.0f} %)"


def search_markdown(df: pd.DataFrame, factors: Sequence[float] = SEARCH_FACTORS, slow_share: float = SLOW_SHARE,
                    low_loss: float = LOW_LOSS) -> str:
    head = ["setup", "seeds", "epochs", "final train loss", "final test error"]
    head += [f"first ≤ final × {f:g}: epoch (share)" for f in factors] + ["min / run", "paper-shaped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [str(r["setup"]), str(r["n_seeds"]), f"{r['epochs']:g}", f"{r['final_train_loss']:.3f}",
                 f"{100 * r['final_error']:.2f} %", *[_reached(r, f) for f in factors],
                 f"{r['minutes']:.1f} ({r['train_minutes']:.1f} training)", "yes" if r["paper_shaped"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"Traditional alone, per setup (seed means). Paper-shaped: it first reaches its final test error "
            f"× {factors[0]:g} only after ≥ {100 * slow_share:.0f} % of its schedule, with a final training loss "
            f"≤ {low_loss:g}. Minutes: training + evaluation seconds per run / 60 (training alone in brackets; "
            f"start-up excluded), one thread on a shared 2-core machine.")
    return note + "\n\n" + "\n".join(lines) + "\n"


def plot_search(runset: RunSet, df: pd.DataFrame, factors: Sequence[float] = SEARCH_FACTORS,
                slow_share: float = SLOW_SHARE) -> Figure:
    """Each setup's test error over its own final error against the share of its schedule (seed 0's run,
    or the first), with the × factor lines and the slow-share line."""
    fig = Figure(figsize=(7, 4.5), constrained_layout=True)
    ax = fig.subplots()
    runs = runset.runs[runset.runs["strategy"] == TRADITIONAL]
    labels = {}
    for key, g in runs.groupby("config_key", sort=False):
        labels[key] = setup_label(_setup(g["run_dir"].iloc[0]))
        ev = runset.evals[runset.evals["run_dir"] == g.sort_values("seed")["run_dir"].iloc[0]].sort_values("eval_idx")
        err = pd.to_numeric(ev["test_error"])
        ax.plot(ev["epoch"] / ev["epoch"].iloc[-1], err / err.iloc[-1], marker=".", label=labels[key], lw=1.2)
    for f in factors:
        ax.axhline(f, color="black", lw=0.8, ls="--")
    ax.axvline(slow_share, color="black", lw=0.8, ls=":")
    ax.set_ylim(0.9, 2.0)
    ax.set_xlabel("share of the schedule (epoch / epochs)")
    ax.set_ylabel("test error / final test error")
    ax.legend(fontsize=7)
    return fig


def write_search(df: pd.DataFrame, out_dir: str | Path, runset: RunSet | None = None,
                 slow_share: float = SLOW_SHARE, low_loss: float = LOW_LOSS) -> list[Path]:
    """regime_search.csv, regime_search.md (and regime_search.png when the runs are given) into ``out_dir``."""
    out = Path(out_dir)
    md = search_markdown(df, SEARCH_FACTORS, slow_share, low_loss)
    paths = write_texts(out, {"regime_search.csv": search_csv(df), "regime_search.md": md})
    if runset is not None:
        path = out / "regime_search.png"
        plot_search(runset, df, SEARCH_FACTORS, slow_share).savefig(path, dpi=120)
        paths.append(path)
    return paths


__all__ = ["search_table", "search_csv", "search_markdown", "plot_search", "write_search", "setup_of",
           "setup_label", "augment_label"]

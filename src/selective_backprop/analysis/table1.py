"""Table 1: speedup over Traditional to reach Traditional's final error × 1.1 / 1.2 / 1.4.

Definitions (issue text, PAPER.md):

* a configuration = the runs sharing ``config_key`` (differing only in ``seed``);
* its final error = mean over its seeds of ``final_test_error``;
* Traditional's final error E = the lowest final error over the Traditional configurations;
* target = E × factor; a run's time to a target = the ``train_s`` of its first evaluation with
  ``test_error <= target`` (compared with an absolute tolerance of :data:`TARGET_TOL` so that
  e.g. 0.28 counts as reaching 0.2 × 1.4 = 0.27999999999999997);
* a configuration reaches a target only if every seed does; its time = mean over its seeds;
* for each (dataset, strategy) the best (lowest) time over its configurations; Traditional's
  time likewise over the Traditional configurations;
* speedup = Traditional's time ÷ the strategy's time; empty (NaN) when either never reached it.

"Time" is an axis (``axis``, :data:`~selective_backprop.analysis.records.AXES`): ``time``
(``train_s``, the paper's, the default), ``time_eval`` (``train_s + eval_s``) or ``cost``
(forward-equivalent units, engine/budget.py; computed from the counters for older records).
:func:`config_times` also gives every configuration's seed-mean ``train_s`` / ``train_eval_s`` /
``cost`` at its first evaluation reaching each target, whatever the axis.

Only runs without label noise enter the table (label-noise runs belong to Fig 12).
``schedules`` (e.g. ``["sched1"]``) keeps only runs whose LR schedule name ends in ``_<name>``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .records import AXES, RunSet, strategy_label, strategy_sort_key

logger = logging.getLogger(__name__)

TARGET_FACTORS: tuple[float, ...] = (1.1, 1.2, 1.4)
TARGET_TOL = 1e-9
CSV_DECIMALS = 6
TRADITIONAL = "traditional"
EMPTY = "–"  # en dash, as in the paper


def speedup_column(factor: float) -> str:
    return f"speedup_{factor:g}"


def time_to_target(evals: pd.DataFrame, target: float, column: str = "train_s") -> float:
    """``column`` (default ``train_s``) of the first evaluation (in file order) with
    ``test_error <= target``; NaN if none."""
    ev = evals.sort_values("eval_idx") if "eval_idx" in evals.columns else evals
    err = pd.to_numeric(ev["test_error"], errors="coerce")
    hit = ev[err <= target + TARGET_TOL]
    return _as_float(hit[column].iloc[0]) if len(hit) and column in hit.columns else math.nan


def _as_float(x) -> float:
    value = pd.to_numeric(x, errors="coerce")
    return math.nan if pd.isna(value) else float(value)


def axis_column(axis: str) -> str:
    """The evaluation column behind an axis name (``time`` / ``time_eval`` / ``cost``)."""
    if axis not in AXES:
        raise ValueError(f"axis {axis!r}: accepted {' | '.join(AXES)}")
    return AXES[axis]


def _seed_mean(values: list[float]) -> float:
    """Mean over seeds; NaN unless every seed has a value (reached the target)."""
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)


def first_reaching_eval(evals: pd.DataFrame, target: float) -> pd.Series | None:
    """The first evaluation row reaching ``target`` (or None)."""
    ev = evals.sort_values("eval_idx") if "eval_idx" in evals.columns else evals
    err = pd.to_numeric(ev["test_error"], errors="coerce")
    hit = ev[err <= target + TARGET_TOL]
    return hit.iloc[0] if len(hit) else None


def traditional_final_errors(runset: RunSet) -> dict[str, float]:
    """Per dataset: the lowest seed-mean final error over the Traditional configurations."""
    runs = runset.runs
    trad = runs[runs["strategy"] == TRADITIONAL]
    out: dict[str, float] = {}
    for ds, g in trad.groupby("dataset"):
        per_config = g.groupby("config_key")["final_test_error"].mean()
        if per_config.notna().any():
            out[str(ds)] = float(per_config.min())
    return out


def drop_nan_seeds(runset: RunSet) -> RunSet:
    """The runs whose final test error is a number: a seed with a NaN error is left out of its
    configuration with a warning naming it (kept in, it would make the whole configuration never
    reach a target and silently turn a speedup into "–")."""
    runs = runset.runs
    if runs.empty:
        return runset
    bad = pd.to_numeric(runs["final_test_error"], errors="coerce").isna()
    for _, r in runs[bad].iterrows():
        logger.warning("run %s (%s, seed %s): final test error is NaN; left out of Table 1 (its "
                       "configuration uses the other seeds)", r["run_dir"], r["strategy"], r["seed"])
    return runset.subset(~bad) if bad.any() else runset


def config_times(runset: RunSet, factors: Sequence[float] = TARGET_FACTORS,
                 include_noisy: bool = False, axis: str = "time",
                 schedules: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration of every dataset that has a Traditional baseline: ``dataset,
    strategy, config_key, lr_schedule, n_seeds, final_test_error`` (seed mean),
    ``final_error_traditional``, and per factor ``target_<f>``, ``time_<f>`` (seed-mean time
    to the target on ``axis``, NaN unless every seed reached it) and the seed means of
    ``train_s_<f>``, ``train_eval_s_<f>``, ``cost_<f>`` at that evaluation (every axis)."""
    column = axis_column(axis)
    rs = drop_nan_seeds((runset if include_noisy else runset.clean()).with_schedules(schedules))
    trad_err = traditional_final_errors(rs)
    missing = sorted(set(rs.datasets) - set(trad_err))
    if missing:
        logger.warning("no usable Traditional run for dataset(s) %s: left out of Table 1",
                       ", ".join(missing))
    runs = rs.runs
    ev_by_run = {k: g for k, g in rs.evals.groupby("run_dir")}
    rows = []
    for key, g in runs.groupby("config_key", sort=False):
        ds = str(g["dataset"].iloc[0])
        if ds not in trad_err:
            continue
        e = trad_err[ds]
        row = {
            "dataset": ds,
            "strategy": g["strategy"].iloc[0],
            "config_key": key,
            "lr_schedule": g["lr_schedule"].iloc[0],
            "n_seeds": len(g),
            "final_test_error": float(g["final_test_error"].mean()),
            "final_error_traditional": e,
        }
        for f in factors:
            target = e * f
            row[f"target_{f:g}"] = target
            # reached only if every seed reached it
            for name, col in (("time", column), *((c, c) for c in ("train_s", "train_eval_s", "cost"))):
                row[f"{name}_{f:g}"] = _seed_mean(
                    [math.nan if ev_by_run.get(rd) is None else time_to_target(ev_by_run[rd], target, col)
                     for rd in g["run_dir"]])
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_s"] = out["strategy"].map(lambda s: strategy_sort_key(str(s)))
    return (out.sort_values(["dataset", "_s", "config_key"], kind="stable")
            .drop(columns="_s").reset_index(drop=True))


def best_times(config_df: pd.DataFrame, factors: Sequence[float] = TARGET_FACTORS) -> pd.DataFrame:
    """Per (dataset, strategy): for each factor the best (lowest) configuration time
    ``time_<f>`` and the configuration that achieved it ``config_<f>`` (None if never)."""
    rows = []
    for (ds, strat), g in config_df.groupby(["dataset", "strategy"], sort=False):
        row = {"dataset": ds, "strategy": strat,
               "final_error_traditional": g["final_error_traditional"].iloc[0]}
        for f in factors:
            col = f"time_{f:g}"
            reached = g[g[col].notna()]
            if len(reached):
                best = reached.loc[reached[col].idxmin()]
                row[col], row[f"config_{f:g}"] = float(best[col]), best["config_key"]
            else:
                row[col], row[f"config_{f:g}"] = math.nan, None
        rows.append(row)
    return pd.DataFrame(rows)


def table1(runset: RunSet, factors: Sequence[float] = TARGET_FACTORS,
           include_noisy: bool = False, axis: str = "time",
           schedules: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1 with columns ``dataset, strategy, final_error_traditional, speedup_<f>...``:
    one row per dataset (sorted) and non-Traditional strategy (order sb, stale_sb, kath18,
    uniform, then others). Values are unrounded floats; NaN = target never reached. Speedups
    are ratios on ``axis`` (time / time_eval / cost); ``schedules`` filters LR schedules."""
    cols = ["dataset", "strategy", "final_error_traditional"] + [speedup_column(f) for f in factors]
    cfg = config_times(runset, factors, include_noisy=include_noisy, axis=axis, schedules=schedules)
    if cfg.empty:
        return pd.DataFrame(columns=cols)
    best = best_times(cfg, factors)
    rows = []
    for ds, g in best.groupby("dataset", sort=True):
        trad = g[g["strategy"] == TRADITIONAL].iloc[0]
        others = sorted((s for s in g["strategy"] if s != TRADITIONAL),
                        key=lambda s: strategy_sort_key(str(s)))
        for strat in others:
            r = g[g["strategy"] == strat].iloc[0]
            row = {"dataset": ds, "strategy": strat,
                   "final_error_traditional": float(trad["final_error_traditional"])}
            for f in factors:
                t_trad, t = trad[f"time_{f:g}"], r[f"time_{f:g}"]
                if math.isnan(t_trad) or math.isnan(t) or t <= 0:
                    row[speedup_column(f)] = math.nan
                else:
                    row[speedup_column(f)] = float(t_trad) / float(t)
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------- formatting

def format_float(x: float, decimals: int = CSV_DECIMALS) -> str:
    """CSV float: ``repr(round(x, decimals))`` (shortest round-trip text), "" for NaN/None."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(round(float(x), decimals))


def frame_to_csv(df: pd.DataFrame, float_cols: Sequence[str]) -> str:
    """CSV text with "\\n" line ends; ``float_cols`` through :func:`format_float`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(df.columns))
    for _, r in df.iterrows():
        w.writerow([format_float(r[c]) if c in float_cols else r[c] for c in df.columns])
    return buf.getvalue()


def write_texts(out_dir: str | Path, files: dict[str, str]) -> list[Path]:
    """Write each {file name: text} into ``out_dir`` (created); returns the paths in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in files]
    for path, text in zip(paths, files.values()):
        path.write_text(text, encoding="utf-8")
    return paths


def table1_csv(df: pd.DataFrame) -> str:
    return frame_to_csv(df, [c for c in df.columns if c not in ("dataset", "strategy")])


def _speedup_cells(df: pd.DataFrame, digits: int) -> dict[tuple[str, str], str]:
    sp_cols = [c for c in df.columns if c.startswith("speedup_")]
    cells = {}
    for _, r in df.iterrows():
        parts = [EMPTY if pd.isna(r[c]) else f"{r[c]:.{digits}f}" for c in sp_cols]
        cells[(r["dataset"], r["strategy"])] = " / ".join(parts) + "×"
    return cells


def _paper_layout(df: pd.DataFrame, digits: int) -> tuple[list[str], list[str], list[list[str]]]:
    """(factor labels, header, rows) in the paper's layout: one row per dataset, one column per
    strategy holding "a / b / c×" (blank where the strategy has no run for the dataset)."""
    factors = [c[len("speedup_"):] for c in df.columns if c.startswith("speedup_")]
    strategies = sorted(df["strategy"].unique(), key=lambda s: strategy_sort_key(str(s)))
    cells = _speedup_cells(df, digits)
    header = ["dataset", "Trad final error"] + [strategy_label(s) for s in strategies]
    rows = []
    for ds, g in df.groupby("dataset", sort=True):
        e = g["final_error_traditional"].iloc[0]
        rows.append([str(ds), f"{100 * e:.2f} %"] + [cells.get((ds, s), "") for s in strategies])
    return factors, header, rows


def _axis_note(axis: str) -> str:
    """Nothing for the paper's axis (training time), else which measure the speedups compare."""
    return "" if axis == "time" else {"time_eval": " in training + evaluation time",
                                      "cost": " in cost (forward-equivalent units)"}[axis]


def table1_markdown(df: pd.DataFrame, digits: int = 2, axis: str = "time") -> str:
    """Markdown in the paper's layout; "–" where the target was never reached."""
    factors, header, rows = _paper_layout(df, digits)
    lines = [
        f"Speedup{_axis_note(axis)} over Traditional to reach Traditional's final error × "
        f"{' / '.join(factors)} (\"{EMPTY}\" = target not reached; blank = strategy not run).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


def table1_latex(df: pd.DataFrame, digits: int = 2, axis: str = "time") -> str:
    """A LaTeX ``tabular`` in the paper's layout; "–" (U+2013, needs a UTF-8 input encoding,
    the default of LaTeX since 2018) where the target was never reached."""
    factors, header, rows = _paper_layout(df, digits)
    out = [
        f"% Speedup{_axis_note(axis)} over Traditional to reach Traditional's final error x "
        f"{' / '.join(factors)}",
        r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(_tex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for r in rows:
        cells = [_tex_escape(c).replace("×", r"$\times$") for c in r]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def write_table1(df: pd.DataFrame, out_dir: str | Path, axis: str = "time",
                 configs: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``table1.csv``, ``table1.md`` and ``table1.tex`` into ``out_dir`` (created), and
    ``table1_configs.csv`` (:func:`config_times`: every configuration's time, time with
    evaluation and cost to each target) when ``configs`` is given."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "table1.csv", "md": out / "table1.md", "tex": out / "table1.tex"}
    paths["csv"].write_text(table1_csv(df), encoding="utf-8")
    paths["md"].write_text(table1_markdown(df, axis=axis), encoding="utf-8")
    paths["tex"].write_text(table1_latex(df, axis=axis), encoding="utf-8")
    if configs is not None:
        paths["configs"] = out / "table1_configs.csv"
        text = frame_to_csv(configs, [c for c in configs.columns if c.startswith(
            ("final_", "target_", "time_", "train_s_", "train_eval_s_", "cost_"))])
        paths["configs"].write_text(text, encoding="utf-8")
    return paths

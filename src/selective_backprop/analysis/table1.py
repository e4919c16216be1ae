"""Table 1: speedup over Traditional to reach Traditional's final error × 1.1 / 1.2 / 1.4.

Every speedup is paired (:mod:`.paired`): each seed of a configuration against the same seed's
Traditional run at the same point (setup and LR schedule), to that Traditional run's own final error ×
f; the geometric mean over the paired seeds with a 90 % Student-t interval on the log ratios, the seeds
that reached the target and a verdict. Two views:

* :func:`table1_paired` — **the primary table**: one row per (point, configuration), within its schedule;
* :func:`table1` — the paper's layout: per setup (dataset, training subset, augmentation, model, width,
  test subset: runs of different setups are never pooled) and strategy, the best configuration (highest
  speedup among those whose every paired seed reached the target; any LR schedule, each against its own
  schedule's Traditional), per factor.

"Time" is an axis (``axis``, :data:`~selective_backprop.analysis.records.AXES`): ``time``
(``train_s``, the paper's, the default), ``time_eval`` (``train_s + eval_s``) or ``cost``
(forward-equivalent units, engine/budget.py; computed from the counters for older records). On the
time axes, runs the timing audit flags (:mod:`.audit`) are left out.

:func:`config_times` gives every configuration's seed-mean ``train_s`` / ``train_eval_s`` / ``cost``
at its first evaluation reaching a common target per setup (the lowest seed-mean Traditional final
error over the setup's schedules × f): ``table1_configs.csv`` and Fig 1's bars.

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

from .audit import audit_markdown, flagged_list, flagged_runs, timing_audit
from .paired import (METHOD, TIME_AXES, difference_cell, paired_table, reach_text, seed_rows, seeds_text,
                     speedup_cell)
from .records import RunSet, strategy_label, strategy_sort_key
from .targets import TARGET_TOL, TRADITIONAL, as_float, axis_column, first_reaching_eval, time_to_target  # noqa: F401

logger = logging.getLogger(__name__)

TARGET_FACTORS: tuple[float, ...] = (1.1, 1.2, 1.4)
CSV_DECIMALS = 6
EMPTY = "–"  # en dash, as in the paper
NO_CLEAN_TIMING = "n/a"


def speedup_column(factor: float) -> str:
    return f"speedup_{factor:g}"


def _seed_mean(values: list[float]) -> float:
    """Mean over seeds; NaN unless every seed has a value (reached the target)."""
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)


def traditional_final_errors(runset: RunSet) -> dict[str, float]:
    """Per setup: the lowest seed-mean final error over its Traditional configurations."""
    runs = runset.runs
    trad = runs[runs["strategy"] == TRADITIONAL]
    out: dict[str, float] = {}
    for setup, g in trad.groupby("setup"):
        per_config = g.groupby("config_key")["final_test_error"].mean()
        if per_config.notna().any():
            out[str(setup)] = float(per_config.min())
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
        logger.warning("run %s (%s, seed %s): final test error is NaN; left out (its configuration uses "
                       "the other seeds)", r["run_dir"], r["strategy"], r["seed"])
    return runset.subset(~bad) if bad.any() else runset


def table_runs(runset: RunSet, include_noisy: bool = False, schedules: Sequence[str] | None = None) -> RunSet:
    """The runs Table 1 reads: label-noise runs left out (unless ``include_noisy``), ``schedules``
    applied, NaN seeds dropped (with a warning)."""
    return drop_nan_seeds((runset if include_noisy else runset.clean()).with_schedules(schedules))


def config_times(runset: RunSet, factors: Sequence[float] = TARGET_FACTORS,
                 include_noisy: bool = False, axis: str = "time",
                 schedules: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration of every setup that has a Traditional baseline: ``dataset, setup,
    strategy, config_key, lr_schedule, n_seeds, final_test_error`` (seed mean),
    ``final_error_traditional`` (the setup's lowest seed-mean Traditional final error), and per factor
    ``target_<f>``, ``time_<f>`` (seed-mean time to the target on ``axis``, NaN unless every seed
    reached it) and the seed means of ``train_s_<f>``, ``train_eval_s_<f>``, ``cost_<f>`` at that
    evaluation (every axis)."""
    column = axis_column(axis)
    rs = table_runs(runset, include_noisy, schedules)
    trad_err = traditional_final_errors(rs)
    missing = sorted(set(rs.runs["setup"]) - set(trad_err)) if len(rs) else []
    if missing:
        logger.warning("no usable Traditional run for setup(s) %s: left out of Table 1", ", ".join(missing))
    runs = rs.runs
    ev_by_run = {k: g for k, g in rs.evals.groupby("run_dir")}
    rows = []
    for key, g in runs.groupby("config_key", sort=False):
        setup = str(g["setup"].iloc[0])
        if setup not in trad_err:
            continue
        e = trad_err[setup]
        row = {
            "dataset": str(g["dataset"].iloc[0]),
            "setup": setup,
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
    return (out.sort_values(["dataset", "setup", "_s", "config_key"], kind="stable")
            .drop(columns="_s").reset_index(drop=True))


def best_times(config_df: pd.DataFrame, factors: Sequence[float] = TARGET_FACTORS) -> pd.DataFrame:
    """Per (dataset, setup, strategy): for each factor the best (lowest) configuration time
    ``time_<f>`` and the configuration that achieved it ``config_<f>`` (None if never)."""
    rows = []
    for (ds, setup, strat), g in config_df.groupby(["dataset", "setup", "strategy"], sort=False):
        row = {"dataset": ds, "setup": setup, "strategy": strat,
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


def _audited(rs: RunSet, axis: str) -> tuple[frozenset[str], list[dict], int]:
    """(flagged run dirs, their records, runs audited) on a time axis; nothing on the cost axis."""
    if axis not in TIME_AXES:
        return frozenset(), [], 0
    audit = timing_audit(rs)
    return flagged_runs(audit), flagged_list(audit), len(audit)


def table1_paired(runset: RunSet, factors: Sequence[float] = TARGET_FACTORS, include_noisy: bool = False,
                  axis: str = "time", schedules: Sequence[str] | None = None) -> pd.DataFrame:
    """The primary Table 1: one row per (point, non-Traditional configuration) with
    :func:`.paired.paired_table`'s columns on ``axis``; the timing audit's flagged runs (time axes) in
    ``df.attrs["flagged"]``, the axis in ``df.attrs["axis"]``."""
    axis_column(axis)
    rs = table_runs(runset, include_noisy, schedules)
    excluded, flagged, n_runs = _audited(rs, axis)
    df = paired_table(rs, factors, [axis], excluded)
    df.attrs.update({"axis": axis, "flagged": flagged, "n_runs": n_runs})
    return df


def table1_seeds(runset: RunSet, factors: Sequence[float] = TARGET_FACTORS, include_noisy: bool = False,
                 axis: str = "time", schedules: Sequence[str] | None = None) -> pd.DataFrame:
    """Every paired seed behind :func:`table1_paired` (:func:`.paired.seed_rows`): what its intervals
    are computed from."""
    rs = table_runs(runset, include_noisy, schedules)
    return seed_rows(rs, factors, [axis], _audited(rs, axis)[0])


def _best(g: pd.DataFrame, axis: str, f: float) -> dict:
    """The factor's cells of one (setup, strategy): its best fully-reached configuration."""
    name, reached = f"speedup_{axis}_{f:g}", f"reached_{axis}_{f:g}"
    k_n = g[reached].str.split("/", expand=True).astype(int)
    full = g[(k_n[0] == k_n[1]) & (k_n[1] > 0) & g[name].notna()]
    out = {speedup_column(f): math.nan, f"speedup_{f:g}_low": math.nan, f"speedup_{f:g}_high": math.nan,
           f"verdict_{f:g}": "", f"config_{f:g}": "", f"lr_schedule_{f:g}": "", f"trad_final_error_{f:g}": math.nan}
    if full.empty:     # how far the closest configuration got ("0/0": no pair with clean timing)
        best = k_n.loc[k_n[0].idxmax()] if len(k_n) else None
        out[f"reached_{f:g}"] = "" if best is None else f"{best[0]}/{best[1]}"
        return out
    b = full.loc[full[name].idxmax()]
    out.update({speedup_column(f): b[name], f"speedup_{f:g}_low": b[f"{name}_low"],
                f"speedup_{f:g}_high": b[f"{name}_high"], f"reached_{f:g}": b[reached],
                f"verdict_{f:g}": b[f"verdict_{axis}_{f:g}"], f"config_{f:g}": b["config"],
                f"lr_schedule_{f:g}": b["lr_schedule"], f"trad_final_error_{f:g}": b["trad_final_error"]})
    return out


def table1(runset: RunSet, factors: Sequence[float] = TARGET_FACTORS,
           include_noisy: bool = False, axis: str = "time",
           schedules: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1 in the paper's layout: one row per setup (sorted by dataset) and non-Traditional strategy
    (order sb, stale_sb, kath18, uniform, then others) with ``dataset, setup, strategy``, ``n_configs``
    (the strategy's configurations in the setup, by label) and per factor
    ``speedup_<f>`` (the best configuration's paired geometric mean; NaN = no configuration had every seed
    reach the target), ``speedup_<f>_low``, ``_high`` (90 % interval), ``reached_<f>`` ("k/n"),
    ``verdict_<f>``, ``config_<f>`` (its label), ``lr_schedule_<f>`` and ``trad_final_error_<f>`` (the
    seed-mean final error of the Traditional runs it was paired with). ``axis``: time / time_eval / cost;
    ``schedules`` filters LR schedules."""
    paired = table1_paired(runset, factors, include_noisy, axis, schedules)
    cols = ["dataset", "setup", "strategy", "n_configs"] + [c for f in factors for c in (
        speedup_column(f), f"speedup_{f:g}_low", f"speedup_{f:g}_high", f"reached_{f:g}", f"verdict_{f:g}",
        f"config_{f:g}", f"lr_schedule_{f:g}", f"trad_final_error_{f:g}")]
    if paired.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (ds, setup), g in paired.groupby(["dataset", "setup"], sort=True):
        for strat in sorted(g["strategy"].unique(), key=lambda s: strategy_sort_key(str(s))):
            own = g[g["strategy"] == strat]
            row = {"dataset": ds, "setup": setup, "strategy": strat, "n_configs": own["config"].nunique()}
            for f in factors:
                row.update(_best(own, axis, f))
            rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    out.attrs.update(paired.attrs)
    out.attrs["trad_errors"] = {str(setup): {str(p["lr_schedule"]): float(p["trad_final_error"])
                                             for _, p in g.drop_duplicates("point").iterrows()}
                                for setup, g in paired.groupby("setup", sort=False)}
    return out


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


def float_columns(df: pd.DataFrame) -> list[str]:
    """The columns holding floats (written through :func:`format_float`)."""
    return [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]


def table1_csv(df: pd.DataFrame) -> str:
    return frame_to_csv(df, float_columns(df))


def _short_schedule(schedule: str, dataset: str) -> str:
    """``fashion_mnist_e30_s2`` → ``e30_s2`` (the dataset prefix dropped)."""
    return schedule[len(dataset) + 1:] if schedule.startswith(f"{dataset}_") else schedule


def _tag(r: pd.Series, f: float, schedules: int) -> str:
    """Which configuration a cell comes from, when the setup has a choice: ``(n=3, e30)``."""
    parts = []
    label, strat = str(r[f"config_{f:g}"]), strategy_label(str(r["strategy"]))
    if r["n_configs"] > 1 and label.startswith(strat + " "):
        parts.append(label[len(strat) + 1:])
    if schedules > 1:
        parts.append(_short_schedule(str(r[f"lr_schedule_{f:g}"]), str(r["dataset"])))
    return f" ({', '.join(parts)})" if parts else ""


def _factor_cell(r: pd.Series, f: float, digits: int, schedules: int) -> str:
    value = r[speedup_column(f)]
    if pd.isna(value):
        return NO_CLEAN_TIMING if str(r[f"reached_{f:g}"]).endswith("/0") else EMPTY
    return f"{value:.{digits}f}" + _tag(r, f, schedules)


def _paper_layout(df: pd.DataFrame, digits: int) -> tuple[list[str], list[str], list[list[str]]]:
    """(factor labels, header, rows) in the paper's layout: one row per setup, one column per
    strategy holding "a / b / c×" (blank where the strategy has no run in the setup)."""
    factors = [float(c[len("speedup_"):]) for c in df.columns
               if c.startswith("speedup_") and not c.endswith(("_low", "_high"))]
    strategies = sorted(df["strategy"].unique(), key=lambda s: strategy_sort_key(str(s)))
    header = ["setup", "Trad final error"] + [strategy_label(s) for s in strategies]
    rows = []
    for (ds, setup), g in df.groupby(["dataset", "setup"], sort=True):
        trad = {_short_schedule(sched, str(ds)): err
                for sched, err in df.attrs.get("trad_errors", {}).get(str(setup), {}).items()}
        for f in factors:          # a frame without attrs (e.g. read back from CSV): the cells' references
            for sched, err in zip(g[f"lr_schedule_{f:g}"], g[f"trad_final_error_{f:g}"]):
                if sched and not pd.isna(err):
                    trad.setdefault(_short_schedule(str(sched), str(ds)), err)
        schedules = len(trad)
        trad_cell = ", ".join(f"{100 * e:.2f} %" + (f" ({s})" if schedules > 1 else "")
                              for s, e in sorted(trad.items()))
        cells = {r["strategy"]: " / ".join(_factor_cell(r, f, digits, schedules) for f in factors) + "×"
                 for _, r in g.iterrows()}
        rows.append([str(setup), trad_cell or EMPTY] + [cells.get(s, "") for s in strategies])
    return [f"{f:g}" for f in factors], header, rows


def _axis_note(axis: str) -> str:
    """Nothing for the paper's axis (training time), else which measure the speedups compare."""
    return "" if axis == "time" else {"time_eval": " in training + evaluation time",
                                      "cost": " in cost (forward-equivalent units)"}[axis]


def _audit_note(df: pd.DataFrame) -> str:
    axis = df.attrs.get("axis", "time")
    if axis not in TIME_AXES:
        return "Cost axis: a deterministic function of the run counters; the timing audit does not apply.\n"
    return audit_markdown(df.attrs.get("flagged", []), df.attrs.get("n_runs", 0))


def reach_markdown(paired: pd.DataFrame, factors: Sequence[float]) -> str:
    """Traditional's first reach of each of its own targets, per point (seed mean and range)."""
    lines = ["Traditional's first reach of each target (epoch, seed mean and range; share of its cost spent):", ""]
    for point, g in paired.groupby("point", sort=False):
        r = g.iloc[0]
        lines.append(f"- {point} ({seeds_text(r['trad_seeds'])}, final error {100 * r['trad_final_error']:.2f} %): "
                     f"{reach_text(r, factors)}")
    return "\n".join(lines) + "\n"


def table1_markdown(df: pd.DataFrame, digits: int = 2, axis: str = "time",
                    paired: pd.DataFrame | None = None) -> str:
    """Markdown in the paper's layout (see :func:`table1`); with ``paired`` (:func:`table1_paired`),
    Traditional's first reach of each target per point below it, and the timing audit on a time axis."""
    factors, header, rows = _paper_layout(df, digits)
    lines = [
        f"Speedup{_axis_note(axis)} over Traditional to reach Traditional's final error × "
        f"{' / '.join(factors)}, the paper's layout: per setup, each strategy's best configuration (any LR "
        f"schedule; tagged when the setup has several), each seed compared with the same seed's Traditional "
        f"run on that configuration's own schedule: {METHOD}. Only configurations whose every paired seed "
        f"reached the target are eligible (\"{EMPTY}\" = none did; \"{NO_CLEAN_TIMING}\" = no pair with "
        f"clean timing; blank = strategy not run). Intervals, verdicts and every configuration: "
        f"table1_paired.md.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    if paired is not None and not paired.empty:
        text += "\n" + reach_markdown(paired, [float(f) for f in factors])
    if df.attrs.get("axis") in TIME_AXES:
        text += "\n" + _audit_note(df)
    return text


def table1_paired_markdown(df: pd.DataFrame, factors: Sequence[float] = TARGET_FACTORS) -> str:
    """The primary table: per point, every configuration's paired speedups with interval, seeds reached
    and verdict, its final error and the paired difference to Traditional's; Traditional's first reach
    and the timing audit."""
    axis = df.attrs.get("axis", "time")
    out = [f"Speedup{_axis_note(axis)} over Traditional to its final error × "
           f"{' / '.join(f'{f:g}' for f in factors)}, within each setup and LR schedule: {METHOD}. "
           "Δ error: the configuration's final error minus the same seed's Traditional run's, in points "
           "(mean, 90 % t interval, lower / higher only when it excludes 0).", ""]
    head = ["strategy", "seeds", "final error", "Δ error vs Trad (pts)"] + [f"×{f:g}" for f in factors]
    for point, g in df.groupby("point", sort=False):
        r0 = g.iloc[0]
        out += [f"**{point}** — Traditional: {seeds_text(r0['trad_seeds'])}, {100 * r0['trad_final_error']:.2f} %; "
                f"first reaches its own {reach_text(r0, factors)}.", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in g.iterrows():
            sd = "" if math.isnan(r["final_error_sd"]) else f" ± {100 * r['final_error_sd']:.2f}"
            cells = [str(r["config"]), str(r["n_seeds"]), f"{100 * r['final_error']:.2f}{sd} %",
                     difference_cell(r, "error_vs_trad")]
            cells += [speedup_cell(r, axis, f) for f in factors]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(_audit_note(df))
    return "\n".join(out)


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
                 configs: pd.DataFrame | None = None, paired: pd.DataFrame | None = None,
                 seeds: pd.DataFrame | None = None, audit: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``table1.csv``, ``table1.md`` and ``table1.tex`` into ``out_dir`` (created); with
    ``paired`` (:func:`table1_paired`) ``table1_paired.csv`` / ``.md``; with ``seeds``
    (:func:`table1_seeds`) ``table1_seeds.csv``; with ``configs`` (:func:`config_times`)
    ``table1_configs.csv``; with ``audit`` (:func:`.audit.timing_audit`) ``timing_audit.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    factors = [float(c[len("speedup_"):]) for c in df.columns
               if c.startswith("speedup_") and not c.endswith(("_low", "_high"))]
    paths = {"csv": out / "table1.csv", "md": out / "table1.md", "tex": out / "table1.tex"}
    paths["csv"].write_text(table1_csv(df), encoding="utf-8")
    paths["md"].write_text(table1_markdown(df, axis=axis, paired=paired), encoding="utf-8")
    paths["tex"].write_text(table1_latex(df, axis=axis), encoding="utf-8")
    if paired is not None:
        paths["paired_csv"] = out / "table1_paired.csv"
        paths["paired_csv"].write_text(frame_to_csv(paired, float_columns(paired)), encoding="utf-8")
        paths["paired_md"] = out / "table1_paired.md"
        paths["paired_md"].write_text(table1_paired_markdown(paired, factors), encoding="utf-8")
    if seeds is not None:
        paths["seeds"] = out / "table1_seeds.csv"
        paths["seeds"].write_text(frame_to_csv(seeds, float_columns(seeds)), encoding="utf-8")
    if configs is not None:
        paths["configs"] = out / "table1_configs.csv"
        text = frame_to_csv(configs, [c for c in configs.columns if c.startswith(
            ("final_", "target_", "time_", "train_s_", "train_eval_s_", "cost_"))])
        paths["configs"].write_text(text, encoding="utf-8")
    if audit is not None:
        paths["audit"] = out / "timing_audit.csv"
        paths["audit"].write_text(frame_to_csv(audit, float_columns(audit)), encoding="utf-8")
    return paths

"""Timing audit: which runs' wall-clock can be trusted for a time-axis claim.

The cost axis is a deterministic function of a run's counters; the time axis is whatever the machine
gave the run. A run is **flagged** (and left out of every time-axis cell, never out of the cost axis)
when any of these holds:

1. **Out of line.** Its training seconds per cost unit (``train_s / cost``) is above
   :data:`SLOW` × or below :data:`FAST` × the median over every run of the same setup (dataset,
   training subset, augmentation, model, width, test subset, device), all strategies, schedules and
   seeds together — judged only where the setup has at least :data:`MIN_RUNS` runs. Strategies differ
   in overhead per cost unit, but by far less than these bounds on an uncontended machine.
2. **Contended** (records with ``summary.json`` ``timing``): the machine's mean 1-minute load average
   over the run (the ``loadavg`` of its ``metrics.jsonl`` rows, else the mean of ``timing.loadavg_start``
   and ``loadavg_end``) above :data:`CONTENDED` × its ``cpu_count``: more runnable work than a core
   for each task at 1/1.25 = 0.8 of a core, the bound of rule 1. A machine whose cores are all busy
   with the runs themselves (two one-thread runs on 2 cores: load ≈ 2.05–2.1 measured, the runs plus
   the system's own noise) is not contended; the same runs beside a test suite (load 3–4) are.
3. **Starved** (CPU runs with ``timing``): process CPU seconds per wall second below :data:`STARVED` ×
   the threads it could use (``min(threads, cpu_count)``).

Older records without ``timing`` are judged by rule 1 alone.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .records import RunSet

SLOW = 1.25
FAST = 0.8
MIN_RUNS = 3
STARVED = 0.75
CONTENDED = SLOW      # load average / cores above which a run is contended (rule 2)
RULE = (f"a run is left out of the time axis when its training seconds per cost unit lie outside "
        f"{FAST:g}–{SLOW:g}× the median of its setup (≥ {MIN_RUNS} runs: every strategy, schedule and seed), "
        f"when the load average during it exceeded {CONTENDED:g}× the machine's cores, or when it got less than "
        f"{100 * STARVED:.0f} % of the CPU its threads could use")
COLUMNS = ["run_dir", "setup", "device", "strategy", "lr_schedule", "seed", "s_per_unit", "setup_median",
           "ratio", "load", "cpu_count", "cpu_use", "flagged", "reason"]


def _num(value: Any) -> float:
    v = pd.to_numeric(value, errors="coerce")
    return math.nan if pd.isna(v) else float(v)


def _mean_load(runset: RunSet) -> dict[str, float]:
    """Per run: the mean ``loadavg`` over its metrics rows (runs recorded before it: absent)."""
    ev = runset.evals
    if ev.empty or "loadavg" not in ev.columns:
        return {}
    load = pd.to_numeric(ev["loadavg"], errors="coerce")
    return {str(k): float(v) for k, v in load.groupby(ev["run_dir"]).mean().dropna().items()}


def _contention(run: pd.Series, load_by_run: dict[str, float]) -> tuple[float, float, float, list[str]]:
    """(load, cpu_count, cpu_use, reasons) from the run's ``timing`` (NaN where it has none)."""
    cores = _num(run.get("timing_cpu_count"))
    ends = [_num(run.get("timing_load_start")), _num(run.get("timing_load_end"))]
    ends = [v for v in ends if not math.isnan(v)]
    load = load_by_run.get(str(run["run_dir"]), sum(ends) / len(ends) if ends else math.nan)
    cpu_s, wall_s, threads = (_num(run.get(c)) for c in ("timing_cpu_s", "timing_wall_s", "timing_threads"))
    use = cpu_s / wall_s if wall_s > 0 else math.nan
    reasons = []
    if not math.isnan(load) and cores > 0 and load > CONTENDED * cores:
        reasons.append(f"load {load:.2f} above {CONTENDED:g} × its {cores:g} cores")
    on_cpu = str(run.get("device") or "cpu").lower() == "cpu"
    usable = min(threads, cores) if cores > 0 else threads
    if on_cpu and not math.isnan(use) and usable > 0 and use < STARVED * usable:
        reasons.append(f"{use:.2f} CPU s per wall s with {usable:g} thread(s)")
    return load, cores, use, reasons


def timing_audit(runset: RunSet) -> pd.DataFrame:
    """One row per run (:data:`COLUMNS`): its seconds per cost unit, its setup's median, the ratio,
    load / cores / CPU use where recorded, ``flagged`` and the reasons (see the module docstring)."""
    runs = runset.runs
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    spu = pd.to_numeric(runs["train_s"], errors="coerce") / pd.to_numeric(runs["cost"], errors="coerce")
    spu = spu.where(spu > 0)
    group = runs["setup"].astype(str) + " @" + runs["device"].astype(str)
    counts = spu.groupby(group).transform("count")
    median = spu.groupby(group).transform("median").where(counts >= MIN_RUNS)
    load_by_run = _mean_load(runset)
    rows = []
    for i, run in runs.iterrows():
        ratio = spu[i] / median[i] if median[i] > 0 else math.nan
        load, cores, use, reasons = _contention(run, load_by_run)
        if not math.isnan(ratio) and not FAST <= ratio <= SLOW:
            reasons.insert(0, f"{ratio:.2f}× its setup's median time per cost unit")
        rows.append({"run_dir": run["run_dir"], "setup": run["setup"], "device": run["device"],
                     "strategy": run["strategy"], "lr_schedule": run["lr_schedule"], "seed": run["seed"],
                     "s_per_unit": spu[i], "setup_median": median[i], "ratio": ratio, "load": load,
                     "cpu_count": cores, "cpu_use": use, "flagged": bool(reasons), "reason": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=COLUMNS)


def flagged_runs(audit: pd.DataFrame) -> frozenset[str]:
    return frozenset(audit.loc[audit["flagged"], "run_dir"]) if len(audit) else frozenset()


def flagged_list(audit: pd.DataFrame) -> list[dict[str, Any]]:
    """The flagged runs as plain records (run_dir, strategy, lr_schedule, seed, reason)."""
    keep = ["run_dir", "strategy", "lr_schedule", "seed", "reason"]
    return audit.loc[audit["flagged"], keep].to_dict("records") if len(audit) else []


def audit_markdown(flagged: list[dict[str, Any]], n_runs: int) -> str:
    """The report's timing paragraph: the rule and every flagged run with its reason."""
    head = f"**Timing audit** ({RULE}): "
    if not flagged:
        return head + f"none of the {n_runs} runs flagged.\n"
    lines = [head + f"{len(flagged)} of {n_runs} runs flagged, left out of the time axis "
             "(time cells count only the seeds whose runs and Traditional references are both unflagged):", ""]
    lines += [f"- `{r['run_dir']}` ({r['strategy']}, {r['lr_schedule']}, seed {r['seed']}): {r['reason']}"
              for r in flagged]
    return "\n".join(lines) + "\n"

"""Reproduction outputs (Table 1, Pareto frontiers, the paper's figures) from run records.

Everything reads run records only (``summary.json`` + ``metrics.jsonl``, docs/run_record.md)
through :func:`selective_backprop.analysis.records.load_runs`.
"""

from .records import (NoUsableRunsError, RunSet, configurations, load_runs, read_metrics,
                      require_runs, seed_mean_curves)
from .table1 import TARGET_FACTORS, config_times, table1_csv, write_table1

# ``table1`` (the function) is reached as ``analysis.table1.table1``: the name ``table1`` here
# stays the submodule.

__all__ = [
    "NoUsableRunsError",
    "RunSet",
    "TARGET_FACTORS",
    "config_times",
    "configurations",
    "load_runs",
    "read_metrics",
    "require_runs",
    "seed_mean_curves",
    "table1_csv",
    "write_table1",
]

#!/usr/bin/env python
"""The strategy comparison (issue 13): every configuration beside Traditional, per training setup.

    python scripts/compare_strategies.py RUN_DIR... --out DIR

One row per configuration (Stale-SB n = 2 and n = 3 apart): seeds, final error (mean ± sd), backward
passes, cost, and the speedup over Traditional to its final error x 1.1 / 1.2 on the cost and time axes
with the per-seed range and the ratio to the uniform control. Writes DIR/comparison.csv and
DIR/comparison.md and prints the markdown. A seed whose final error is NaN is left out of its
configuration with a warning naming it. Definitions: selective_backprop/analysis/compare.py.
"""

from __future__ import annotations

import sys

from selective_backprop.analysis.cli import report_parser, table_report
from selective_backprop.analysis.compare import compare_markdown, compare_table, write_compare
from selective_backprop.analysis.table1 import drop_nan_seeds


def comparison(runs):
    """The comparison of the runs whose final test error is a number (a NaN seed is left out, warned)."""
    return compare_table(drop_nan_seeds(runs))


def main(argv: list[str] | None = None) -> int:
    args = report_parser(__doc__, include_noisy=False).parse_args(argv)
    return table_report(args, "compare_strategies", comparison, write_compare, compare_markdown,
                        lambda df: bool((df["strategy"] != "traditional").any()) if len(df) else False,
                        "no training setup has both a usable Traditional run and another strategy's run")


if __name__ == "__main__":
    sys.exit(main())

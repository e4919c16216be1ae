#!/usr/bin/env python
"""The error-vs-budget frontier: every strategy's final test error at each budget, paired seed by seed
with Traditional's and uniform's at the same budget.

    python scripts/frontier.py RUN_DIR... --out DIR

Reads the runs of scripts/frontier.sh (any folders holding them): the reference Traditional run through
an epoch schedule sets each point's budget 1 (its cost); every budget-fitted run (lr_schedule.index:
budget) is placed at its max_cost / that cost. Writes DIR/frontier.csv, frontier.md (per budget and
strategy: final error, the paired difference vs Traditional and vs uniform with 90 % intervals and the
verdicts) and frontier.png/.pdf. Definitions: selective_backprop/analysis/frontier.py.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.cli import report_parser, table_report  # noqa: E402
from selective_backprop.analysis.frontier import frontier_markdown, frontier_table, write_frontier  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = report_parser(__doc__, include_noisy=False).parse_args(argv)
    return table_report(args, "frontier", frontier_table, write_frontier, frontier_markdown,
                        lambda df: not df.empty,
                        "no budget-fitted run (lr_schedule.index=budget with train.max_cost) at a point that also "
                        "holds a reference Traditional run through an epoch schedule")


if __name__ == "__main__":
    sys.exit(main())

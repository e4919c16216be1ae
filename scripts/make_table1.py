#!/usr/bin/env python
"""Table 1 (speedup over Traditional to Traditional's final error x 1.1 / 1.2 / 1.4) from run records.

    python scripts/make_table1.py RUN_DIR... --out DIR [--axis time|time_eval|cost] [--schedules sched1]

Writes DIR/table1.csv, DIR/table1.md and DIR/table1.tex and prints the markdown table, and
DIR/table1_configs.csv: every configuration's train_s, train_eval_s (evaluation included) and cost to
each target. --axis picks the measure the speedups compare (time = train_s, the paper's, default);
--schedules keeps only runs whose LR schedule ends in _NAME (e.g. sched1).
Definitions: selective_backprop/analysis/table1.py. Exits 1 with a one-line error when no
usable run is found.
"""

from __future__ import annotations

import logging
import sys

from selective_backprop.analysis.cli import (add_axis_arguments, fail, report_parser, setup_logging,
                                             usable_runs)
from selective_backprop.analysis.table1 import config_times, table1, table1_markdown, write_table1


def main(argv: list[str] | None = None) -> int:
    ap = report_parser(__doc__)
    add_axis_arguments(ap)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    runs = usable_runs(args.run_dirs)
    if runs is None:
        return 1
    options = {"include_noisy": args.include_noisy, "axis": args.axis, "schedules": args.schedules}
    df = table1(runs, **options)
    if df.empty:
        return fail("no dataset has both a usable Traditional run and another strategy's run")
    paths = write_table1(df, args.out, axis=args.axis, configs=config_times(runs, **options))
    print(table1_markdown(df, axis=args.axis))
    logging.getLogger("make_table1").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

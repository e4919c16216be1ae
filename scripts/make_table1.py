#!/usr/bin/env python
"""Table 1 (speedup over Traditional to Traditional's final error x 1.1 / 1.2 / 1.4) from run records.

    python scripts/make_table1.py RUN_DIR... --out DIR [--axis time|time_eval|cost] [--schedules sched1]

Every speedup pairs each seed with the same seed's Traditional run on the same setup and LR schedule
(geometric mean, 90 % t interval on log ratios, seeds reached, verdict). Writes into DIR:
table1_paired.md / .csv (the primary table: every configuration within its schedule, with Traditional's
first reach of each target), table1.md / .tex / .csv (the paper's layout: per setup, each strategy's
best configuration), table1_seeds.csv (every paired seed behind the intervals), table1_configs.csv
(every configuration's train_s, train_eval_s and cost to a common target per setup) and timing_audit.csv
(runs whose timing is out of line; left out of the time axes), and prints the paper-layout table.
--axis picks the measure the speedups compare (time = train_s, the paper's, default); --schedules keeps
only runs whose LR schedule ends in _NAME (e.g. sched1). Definitions: selective_backprop/analysis/table1.py
and paired.py. Exits 1 with a one-line error when no usable run is found (or --schedules leaves
none: the error lists the schedules found), 2 when a RUN_DIR does not exist.
"""

from __future__ import annotations

import logging
import sys

from selective_backprop.analysis.audit import timing_audit
from selective_backprop.analysis.cli import add_axis_arguments, axis_report_runs, fail, report_parser
from selective_backprop.analysis.table1 import (config_times, table1, table1_markdown, table1_paired,
                                                table1_seeds, table_runs, write_table1)


def main(argv: list[str] | None = None) -> int:
    ap = report_parser(__doc__)
    add_axis_arguments(ap)
    loaded = axis_report_runs(ap, argv)
    if loaded is None:
        return 1
    args, runs, options = loaded
    paired = table1_paired(runs, **options)
    df = table1(runs, **options)
    if df.empty:
        return fail("no setup has both a usable Traditional run and another strategy's run on the same "
                    "LR schedule")
    paths = write_table1(df, args.out, axis=args.axis, configs=config_times(runs, **options), paired=paired,
                         seeds=table1_seeds(runs, **options),
                         audit=timing_audit(table_runs(runs, args.include_noisy, args.schedules)))
    print(table1_markdown(df, axis=args.axis, paired=paired))
    logging.getLogger("make_table1").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

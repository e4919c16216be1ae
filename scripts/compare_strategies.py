#!/usr/bin/env python
"""The strategy comparison (issue 13): every configuration beside Traditional, per training setup.

    python scripts/compare_strategies.py RUN_DIR... --out DIR

One row per configuration (Stale-SB n = 2 and n = 3 apart): seeds, final error (mean ± sd), backward
passes, cost, and the speedup over Traditional to its final error x 1.1 / 1.2 on the cost and time axes
with the per-seed range and the ratio to the uniform control. Writes DIR/comparison.csv and
DIR/comparison.md and prints the markdown. Definitions: selective_backprop/analysis/compare.py.
"""

from __future__ import annotations

import logging
import sys

from selective_backprop.analysis.cli import fail, report_parser, setup_logging, usable_runs
from selective_backprop.analysis.compare import compare_markdown, compare_table, write_compare


def main(argv: list[str] | None = None) -> int:
    args = report_parser(__doc__, include_noisy=False).parse_args(argv)
    setup_logging(args.verbose)
    runs = usable_runs(args.run_dirs)
    if runs is None:
        return 1
    df = compare_table(runs.clean())
    if len(df) == 0 or (df["strategy"] == "traditional").all():
        return fail("no training setup has both a usable Traditional run and another strategy's run")
    paths = write_compare(df, args.out)
    print(compare_markdown(df), end="")
    logging.getLogger("compare_strategies").info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

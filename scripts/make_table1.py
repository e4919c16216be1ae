#!/usr/bin/env python
"""Table 1 (speedup over Traditional to Traditional's final error x 1.1 / 1.2 / 1.4) from run records.

    python scripts/make_table1.py RUN_DIR... --out DIR

Writes DIR/table1.csv, DIR/table1.md and DIR/table1.tex and prints the markdown table.
Definitions: selective_backprop/analysis/table1.py. Exits 1 with a one-line error when no
usable run is found.
"""

from __future__ import annotations

import logging
import sys

from selective_backprop.analysis.cli import fail, report_parser, setup_logging, usable_runs
from selective_backprop.analysis.table1 import table1, table1_markdown, write_table1


def main(argv: list[str] | None = None) -> int:
    args = report_parser(__doc__).parse_args(argv)
    setup_logging(args.verbose)
    runs = usable_runs(args.run_dirs)
    if runs is None:
        return 1
    df = table1(runs, include_noisy=args.include_noisy)
    if df.empty:
        return fail("no dataset has both a usable Traditional run and another strategy's run")
    paths = write_table1(df, args.out)
    print(table1_markdown(df))
    logging.getLogger("make_table1").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

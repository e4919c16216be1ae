#!/usr/bin/env python
"""Table 1 (speedup over Traditional to Traditional's final error x 1.1 / 1.2 / 1.4) from run records.

    python scripts/make_table1.py RUN_DIR... --out DIR

Writes DIR/table1.csv, DIR/table1.md and DIR/table1.tex and prints the markdown table.
Definitions: selective_backprop/analysis/table1.py. Exits 1 with a one-line error when no
usable run is found.
"""

from __future__ import annotations

import argparse
import logging
import sys

from selective_backprop.analysis.records import NoUsableRunsError, load_runs, require_runs
from selective_backprop.analysis.table1 import table1, table1_markdown, write_table1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories or folders holding them (walked recursively)")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--include-noisy", action="store_true",
                    help="also use label-noise runs (left out by default)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        runs = require_runs(load_runs(args.run_dirs), args.run_dirs)
    except NoUsableRunsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    df = table1(runs, include_noisy=args.include_noisy)
    if df.empty:
        print("error: no dataset has both a usable Traditional run and another strategy's run",
              file=sys.stderr)
        return 1
    paths = write_table1(df, args.out)
    print(table1_markdown(df))
    logging.getLogger("make_table1").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

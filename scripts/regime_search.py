#!/usr/bin/env python
"""The regime search table: per Traditional setup, its final training loss and test error, when it first
reaches its final error x 1.1 and x 1.2 (epoch, share of its schedule), minutes per run, and whether it
is paper-shaped (still improving in its last LR stage, with a low training loss).

    python scripts/regime_search.py RUN_DIR... --out DIR [--slow-share 0.7] [--low-loss 0.1]

Reads the runs of scripts/regime_search.sh (Traditional runs evaluated after every epoch; other
strategies are ignored) and writes DIR/regime_search.csv, regime_search.md and regime_search.png.
Definitions: selective_backprop/analysis/regime_search.py.
"""

from __future__ import annotations

import logging
import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.cli import fail, report_parser, setup_logging, usable_runs  # noqa: E402
from selective_backprop.analysis.regime_search import (LOW_LOSS, SEARCH_FACTORS, SLOW_SHARE,  # noqa: E402
                                                       search_markdown, search_table, write_search)


def main(argv: list[str] | None = None) -> int:
    ap = report_parser(__doc__, include_noisy=False)
    ap.add_argument("--slow-share", type=float, default=SLOW_SHARE,
                    help="paper-shaped: reaches final error x 1.1 only after this share of its schedule")
    ap.add_argument("--low-loss", type=float, default=LOW_LOSS,
                    help="paper-shaped: final training loss at most this")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    runs = usable_runs(args.run_dirs)
    if runs is None:
        return 1
    df = search_table(runs.clean(), SEARCH_FACTORS, args.slow_share, args.low_loss)
    if df.empty:
        return fail("no usable Traditional run under " + ", ".join(args.run_dirs))
    paths = write_search(df, args.out, runs.clean(), args.slow_share, args.low_loss)
    print(search_markdown(df, SEARCH_FACTORS, args.slow_share, args.low_loss), end="")
    logging.getLogger("regime_search").info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Pareto frontiers of (training time, test error) over all configurations (paper Fig 14).

    python scripts/plot_pareto.py RUN_DIR... --out DIR [--log-time]

Writes DIR/pareto_<dataset>.png and .pdf per dataset and DIR/pareto_share.csv
(dataset,strategy,points,share). Definitions: selective_backprop/analysis/pareto.py.
Exits 1 with a one-line error when no usable run is found.
"""

from __future__ import annotations

import argparse
import logging
import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.pareto import (pareto_points, pareto_share,  # noqa: E402
                                                pareto_share_csv, write_pareto)
from selective_backprop.analysis.records import (NoUsableRunsError, load_runs,  # noqa: E402
                                                 require_runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories or folders holding them (walked recursively)")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--log-time", action="store_true", help="logarithmic time axis")
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
    points = pareto_points(runs, include_noisy=args.include_noisy)
    if points.empty:
        print("error: the usable runs hold no evaluations to plot", file=sys.stderr)
        return 1
    paths = write_pareto(points, args.out, log_time=args.log_time)
    print(pareto_share_csv(pareto_share(points)), end="")
    logging.getLogger("plot_pareto").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Pareto frontiers of (training time, test error) over all configurations (paper Fig 14).

    python scripts/plot_pareto.py RUN_DIR... --out DIR [--log-time] [--axis time|time_eval|cost] [--schedules sched1]

Writes DIR/pareto_<dataset>.png and .pdf per dataset and DIR/pareto_share.csv
(dataset,strategy,points,share). --axis: the x axis (time = train_s, the paper's, default);
--schedules keeps only runs whose LR schedule ends in _NAME. Definitions: selective_backprop/analysis/pareto.py.
Exits 1 with a one-line error when no usable run is found.
"""

from __future__ import annotations

import logging
import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.pareto import (pareto_points, pareto_share,  # noqa: E402
                                                pareto_share_csv, write_pareto)
from selective_backprop.analysis.cli import (add_axis_arguments, fail, report_parser,  # noqa: E402
                                             setup_logging, usable_runs)


def main(argv: list[str] | None = None) -> int:
    ap = report_parser(__doc__)
    ap.add_argument("--log-time", action="store_true", help="logarithmic time axis")
    add_axis_arguments(ap)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    runs = usable_runs(args.run_dirs)
    if runs is None:
        return 1
    points = pareto_points(runs, include_noisy=args.include_noisy, axis=args.axis, schedules=args.schedules)
    if points.empty:
        return fail("the usable runs hold no evaluations to plot")
    paths = write_pareto(points, args.out, log_time=args.log_time, axis=args.axis)
    print(pareto_share_csv(pareto_share(points)), end="")
    logging.getLogger("plot_pareto").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

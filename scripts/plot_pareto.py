#!/usr/bin/env python
"""Pareto frontiers of (training time, test error) over all configurations (paper Fig 14).

    python scripts/plot_pareto.py RUN_DIR... --out DIR [--log-time] [--axis time|time_eval|cost] [--schedules sched1]

Writes DIR/pareto_<dataset>.png and .pdf per dataset, DIR/pareto_share.csv (dataset,strategy,points,
share: the frontier of the seed-mean curves) and DIR/pareto_share_seeds.csv (each seed's own frontier:
mean and range of the share over seeds). --axis: the x axis (time = train_s, the paper's, default); on a
time axis the runs the timing audit flags are left out (named in a warning; --keep-flagged keeps them).
--schedules keeps only runs whose LR schedule ends in _NAME. Definitions: selective_backprop/analysis/pareto.py.
Exits 1 with a one-line error when no usable run is found.
"""

from __future__ import annotations

import logging
import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.audit import flagged_list, flagged_runs, timing_audit  # noqa: E402
from selective_backprop.analysis.pareto import (pareto_points, pareto_share,  # noqa: E402
                                                pareto_share_by_seed, pareto_share_csv, write_pareto)
from selective_backprop.analysis.table1 import table_runs  # noqa: E402
from selective_backprop.analysis.cli import (add_axis_arguments, axis_report_runs, fail,  # noqa: E402
                                             report_parser)


def flagged_on_axis(runs, args) -> frozenset[str]:
    """On a time axis (unless --keep-flagged) the runs the timing audit flags, named in one warning."""
    if args.axis == "cost" or args.keep_flagged:
        return frozenset()
    audit = timing_audit(table_runs(runs, args.include_noisy, args.schedules))
    flagged = flagged_runs(audit)
    if flagged:
        logging.getLogger("plot_pareto").warning(
            "left out of the %s axis, their timing out of line or contended (--keep-flagged keeps them): %s",
            args.axis, "; ".join(f"{r['run_dir']} ({r['reason']})" for r in flagged_list(audit)))
    return flagged


def main(argv: list[str] | None = None) -> int:
    ap = report_parser(__doc__)
    ap.add_argument("--log-time", action="store_true", help="logarithmic time axis")
    ap.add_argument("--keep-flagged", action="store_true",
                    help="keep the runs the timing audit flags on a time axis (left out by default)")
    add_axis_arguments(ap)
    loaded = axis_report_runs(ap, argv)
    if loaded is None:
        return 1
    args, runs, options = loaded
    options["exclude"] = flagged_on_axis(runs, args)
    points = pareto_points(runs, **options)
    if points.empty and options["exclude"]:
        return fail(f"the timing audit flags every run on the {args.axis} axis: nothing left to plot "
                    "(--axis cost plots the cost axis; --keep-flagged plots the flagged runs anyway)")
    if points.empty:
        return fail("the usable runs hold no evaluations to plot")
    paths = write_pareto(points, args.out, log_time=args.log_time, axis=args.axis,
                         by_seed=pareto_share_by_seed(runs, **options))
    print(pareto_share_csv(pareto_share(points)), end="")
    logging.getLogger("plot_pareto").info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

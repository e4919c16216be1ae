#!/usr/bin/env python
"""The paper's figures (Fig 1/10, 6, 7, 11, 12, 13) from run records.

    python scripts/plot_figures.py RUN_DIR... --out DIR [--which fig6,fig7,...]

Writes DIR/<fig>.png and DIR/<fig>.pdf for each requested figure (default: all) whose runs
are present; a figure without runs is skipped with a logged note. Names: fig1 (alias fig10),
fig6, fig7, fig11, fig12, fig13; the Pareto figure (Fig 14) is scripts/plot_pareto.py.
Definitions: selective_backprop/analysis/figures.py. Exits 1 with a one-line error when no
usable run is found or a figure name is unknown.
"""

from __future__ import annotations

import argparse
import logging
import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.figures import resolve_names, write_figures  # noqa: E402
from selective_backprop.analysis.records import (NoUsableRunsError, load_runs,  # noqa: E402
                                                 require_runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories or folders holding them (walked recursively)")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--which", default=None,
                    help="comma-separated figures, e.g. fig6,fig7 (default: all)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        names = resolve_names(args.which)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        runs = require_runs(load_runs(args.run_dirs), args.run_dirs)
    except NoUsableRunsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    written = write_figures(runs, args.out, names)
    log = logging.getLogger("plot_figures")
    for name, paths in written.items():
        log.info("%s: %s", name, ", ".join(str(p) for p in paths))
    if not written:
        log.warning("none of %s had runs in the input; nothing written", ", ".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())

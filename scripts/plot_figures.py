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

import logging
import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.figures import resolve_names, write_figures  # noqa: E402
from selective_backprop.analysis.cli import fail, report_parser, setup_logging, usable_runs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = report_parser(__doc__, include_noisy=False)
    ap.add_argument("--which", default=None,
                    help="comma-separated figures, e.g. fig6,fig7 (default: all)")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    try:
        names = resolve_names(args.which)
    except ValueError as exc:
        return fail(str(exc))
    runs = usable_runs(args.run_dirs)
    if runs is None:
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

#!/usr/bin/env python
"""The regime map: speedups of every strategy over Traditional at each training setup, against how
saturated Traditional is (its final training loss).

    python scripts/regime_map.py RUN_DIR... --out DIR

Groups the runs by regime point (dataset + subset + augmentation, model + width, LR schedule), computes
Table 1 within each point on the cost and time axes at Traditional's final error x 1.1 / 1.2, with the
per-seed range and the ratio to the uniform control, and writes DIR/regime_map.csv, regime_map.md and
regime_map_cost.png/.pdf, regime_map_time.png. Definitions: selective_backprop/analysis/regime.py.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

from selective_backprop.analysis.cli import report_parser, table_report  # noqa: E402
from selective_backprop.analysis.regime import regime_markdown, regime_table, write_regime  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = report_parser(__doc__, include_noisy=False).parse_args(argv)
    return table_report(args, "regime_map", regime_table, write_regime, regime_markdown,
                        lambda df: not df.empty,
                        "no regime point has both a usable Traditional run and another strategy's run")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Copy the run records (summary.json, metrics.jsonl, .hydra/config.yaml) of a sweep into DEST.

Keeps the sweep's folder layout; leaves out checkpoints and TensorBoard files so the result is small
enough to commit (results/<name>/runs/). DEST must lie outside the sweep folder (and not hold it).

    python scripts/collect_runs.py multirun/fashion_mnist_cpu results/fashion_mnist_cpu/runs
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from selective_backprop.cli_errors import check_output_dir, exits_on_bad_input  # noqa: E402
from selective_backprop.errors import ConfigError  # noqa: E402
from selective_backprop.record import METRICS_FILE, SUMMARY_FILE  # noqa: E402

RECORD_FILES = (SUMMARY_FILE, METRICS_FILE, ".hydra/config.yaml", ".hydra/overrides.yaml")


def check_apart(source: Path, dest: Path) -> None:
    """Refuse (ConfigError, one line) a DEST that is SOURCE, lies inside it or holds it: the copies would
    land among the originals and every later report would read each run twice."""
    src, dst = source.resolve(), dest.resolve()
    if src == dst:
        raise ConfigError(f"DEST: '{dest}' is the sweep folder itself; accepted: a folder outside it")
    if src in dst.parents:
        raise ConfigError(f"DEST: '{dest}' lies inside the sweep folder '{source}'; accepted: a folder "
                          "outside it (copies inside it would be read as second runs)")
    if dst in src.parents:
        raise ConfigError(f"DEST: '{dest}' holds the sweep folder '{source}'; accepted: a folder outside it "
                          "(the originals would be read beside their copies)")


def collect(source: Path, dest: Path) -> int:
    """Copy every run's record files; returns the number of runs copied."""
    runs = sorted({p.parent for p in source.rglob(METRICS_FILE)})
    for run in runs:
        target = dest / run.relative_to(source)
        for name in RECORD_FILES:
            if (run / name).exists():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, target / name)
    return len(runs)


@exits_on_bad_input
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path)
    p.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: no sweep folder '{args.source}'", file=sys.stderr)
        return 1
    check_output_dir(args.dest, "DEST")
    check_apart(args.source, args.dest)
    count = collect(args.source, args.dest)
    print(f"copied the records of {count} runs into {args.dest}")
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main())

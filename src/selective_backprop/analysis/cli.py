"""The command-line preamble shared by the report scripts (make_table1, plot_pareto, plot_figures,
regime_map, compare_strategies)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selective_backprop.analysis.records import NoUsableRunsError, RunSet, load_runs, require_runs
from selective_backprop.cli_errors import check_output_dir, report_bad_input
from selective_backprop.errors import ConfigError


class ReportParser(argparse.ArgumentParser):
    """The report scripts' parser: `--out` naming a file or an unwritable place ends the script with
    one `ERROR --out: ...` line and exit 2, before any run is read."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        try:
            check_output_dir(parsed.out, "--out")
        except ConfigError as err:
            sys.exit(report_bad_input(err))
        return parsed


def report_parser(doc: str, include_noisy: bool = True) -> argparse.ArgumentParser:
    """RUN_DIR... --out DIR [-v] (and --include-noisy): the arguments every report script takes."""
    ap = ReportParser(description=doc.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories or folders holding them (walked recursively)")
    ap.add_argument("--out", required=True, help="output folder (created)")
    if include_noisy:
        ap.add_argument("--include-noisy", action="store_true",
                        help="also use label-noise runs (left out by default)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return ap


def add_axis_arguments(ap: argparse.ArgumentParser) -> None:
    """--axis time|time_eval|cost and --schedules NAME... (Table 1 and the Pareto frontier)."""
    from selective_backprop.analysis.records import AXES

    ap.add_argument("--axis", choices=list(AXES), default="time",
                    help="what 'time' means: time = train_s (the paper's), time_eval = train_s + eval_s, "
                         "cost = forward-equivalent units (engine/budget.py)")
    ap.add_argument("--schedules", nargs="+", metavar="NAME",
                    help="only runs whose lr_schedule is NAME or ends in _NAME (e.g. sched1)")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def fail(message: str) -> int:
    """Print the one-line error a report script ends with; returns its exit code (1)."""
    print(f"error: {message}", file=sys.stderr)
    return 1


def usable_runs(run_dirs: list[str], schedules: list[str] | None = None) -> RunSet | None:
    """The usable runs under `run_dirs` (those of `schedules` when given: --schedules), or None after
    printing the one-line error. A RUN_DIR that does not exist ends the script (one ERROR line, exit 2)."""
    missing = [d for d in run_dirs if not Path(d).exists()]
    if missing:
        sys.exit(report_bad_input(ConfigError(f"RUN_DIR: '{missing[0]}' does not exist; accepted: run "
                                              f"directories or folders holding them")))
    try:
        runs = require_runs(load_runs(run_dirs), run_dirs)
    except NoUsableRunsError as exc:
        fail(str(exc))
        return None
    except ConfigError as exc:      # a bad input file: one ERROR line, exit 2
        sys.exit(report_bad_input(exc))
    kept = runs.with_schedules(schedules)
    if len(kept) == 0:
        found = " ".join(sorted({str(s) for s in runs.runs["lr_schedule"]}))
        fail(f"--schedules {' '.join(schedules or [])} leaves no run: the {len(runs)} usable run(s) under "
             f"{', '.join(run_dirs)} have the LR schedule(s) {found}")
        return None
    return runs


def axis_report_runs(ap: argparse.ArgumentParser, argv: list[str] | None
                     ) -> tuple[argparse.Namespace, RunSet, dict[str, Any]] | None:
    """The start of an axis report (Table 1, the Pareto frontier): parse ``ap`` (a report_parser with
    add_axis_arguments), set up logging, load the usable runs of --schedules. Returns the arguments, the
    runs and the options every table of the report takes (include_noisy, axis, schedules), or None after
    the one-line error."""
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    runs = usable_runs(args.run_dirs, args.schedules)
    if runs is None:
        return None
    return args, runs, {"include_noisy": args.include_noisy, "axis": args.axis, "schedules": args.schedules}


def table_report(args: argparse.Namespace, name: str, build: Callable[[RunSet], Any],
                 write: Callable[[Any, str], list], render: Callable[[Any], str],
                 has_rows: Callable[[Any], bool], missing: str) -> int:
    """A report script's body: load the usable runs (label-noise runs left out), build the table, fail
    with `missing` when it has no rows, write it under args.out and print its markdown."""
    setup_logging(args.verbose)
    runs = usable_runs(args.run_dirs)
    if runs is None:
        return 1
    df = build(runs.clean())
    if not has_rows(df):
        return fail(missing)
    paths = write(df, args.out)
    print(render(df), end="")
    logging.getLogger(name).info("wrote %s", ", ".join(str(p) for p in paths))
    return 0

#!/usr/bin/env python
"""The main job on a CPU: Traditional vs SB vs the uniform control at an equal budget, on real Fashion-MNIST.

Traditional trains through its LR schedule; every other strategy then gets exactly Traditional's measured
cost (forward-equivalent units: a selection forward 1, a trained example 3) as its budget and holds the
final LR past the schedule's end, as the paper's equal-time protocol does. The demo prints, for each
strategy, the cost and training time it took to reach Traditional's final error x 1.2 and the speedup over
Traditional, with one line above the table saying whether SB paid off here, and writes a plot of test
error against cost with the target line. The setup is the regime-map point in `results/regime/` (see the
README's "When does SB pay off?").

A strategy whose run diverges (or trains nothing) is reported in the table and the verdict line with its
status; when Traditional itself does not finish there is no budget, and the others train for its schedule's
epochs. SIGTERM/SIGINT stop the run in progress as `sb-train` does (checkpointed, exit 75: re-running the
same command resumes it); a second signal aborts (exit 128 + signal).

`--budgets 0.25,0.5,1` (what `make demo` runs) shows the error-vs-budget frontier instead, at demo size:
every strategy trains to train.max_cost = f x C for each budget share f, with its LR schedule fitted to
its own budget (lr_schedule=budget_steps: LR /5 at 30/60/80 % of the budget, train.max_epochs=null) and
one evaluation, at its end (train.eval_every=1000000; the trainer always evaluates the final weights), in
OUT/b<f>/<strategy>. C is Traditional's full-schedule cost for --schedule, computed, not measured:
Traditional trains every example once per epoch, so C = train.cost.train_example (3) x training
examples x the schedule's epochs, exactly what a Traditional run through --schedule spends (the test
checks it against Traditional's f = 1 run, which stops after exactly that many epochs). Shares are any
numbers > 0 (above 1: more than Traditional's schedule). It prints one verdict line (SB against
Traditional and against uniform at each budget, one seed) above a table, and writes frontier.md,
frontier.csv and frontier.png (final error against the budget share). results/frontier/ has the same
comparison over seeds, with paired intervals.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402

from selective_backprop.analysis.records import load_runs  # noqa: E402
from selective_backprop.analysis.table1 import time_to_target  # noqa: E402
from selective_backprop.cli_errors import check_output_dir, exits_on_bad_input  # noqa: E402
from selective_backprop.conf import CONFIG_DIR  # noqa: E402
from selective_backprop.engine.budget import cost_weights  # noqa: E402
from selective_backprop.engine.control import DivergedError, NoTrainingStep, Preempted  # noqa: E402
from selective_backprop.errors import ConfigError  # noqa: E402
from selective_backprop.record import FINISHED, SUMMARY_FILE  # noqa: E402
from selective_backprop.train import EXIT_PREEMPTED, Aborted, install_preemption_handlers, run  # noqa: E402
from selective_backprop.validate import validate_config  # noqa: E402

STRATEGIES = ("traditional", "sb", "uniform")
FACTOR = 1.2
LOG = logging.getLogger("demo")
NO_AUGMENT = ("dataset.augment.crop_padding=0", "dataset.augment.hflip=false")
BUDGET_SCHEDULE = "budget_steps"       # --budgets: the LR schedule fitted to each run's own budget
EVAL_AT_END = "train.eval_every=1000000"   # --budgets: no evaluation on the way, the final one only


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/demo", help="folder for the runs, table and plot")
    p.add_argument("--subset", type=int, default=2000, help="training examples")
    p.add_argument("--test-subset", type=int, default=2000, help="test examples evaluated (fixed subset)")
    p.add_argument("--schedule", default="fashion_mnist_e10",
                   help="LR schedule (fashion_mnist_e10 / e30 / e60: Traditional's epochs)")
    p.add_argument("--width", type=int, default=16, help="resnet8 width")
    p.add_argument("--augment", action="store_true", help="crop + flip (default: none, see the regime map)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="traditional first, then the others")
    p.add_argument("--budgets", default=None,
                   help="budget shares of Traditional's full-schedule cost, e.g. 0.25,0.5,1: the error-vs-budget "
                        "frontier (budget-fitted LR schedules) instead of the equal-cost speedups")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. strategy.selectivity=0.25")
    args = p.parse_args(argv)
    args.names = [n for n in args.strategies.split(",") if n]
    if args.budgets is None and (not args.names or args.names[0] != "traditional"):
        p.error("--strategies must start with traditional (the others get its cost as their budget)")
    return args


def parse_budgets(text: str) -> list[float]:
    """--budgets: comma-separated shares > 0, sorted, each once; a one-line ConfigError otherwise."""
    shares = []
    for part in text.split(","):
        try:
            share = float(part)
        except ValueError:
            share = math.nan
        if not (math.isfinite(share) and share > 0):
            raise ConfigError(f"--budgets: {part.strip()!r} is not a budget share; accepted: comma-separated "
                              f"numbers > 0 (shares of Traditional's full-schedule cost), e.g. 0.25,0.5,1")
        shares.append(share)
    return sorted(set(shares))


def _overrides(args: argparse.Namespace, strategy: str, schedule: str | None = None) -> list[str]:
    point = ["experiment=fashion_mnist_regime", f"dataset.subset={args.subset}",
             f"dataset.test_subset={args.test_subset}", f"lr_schedule={schedule or args.schedule}",
             f"model.width={args.width}", "device=cpu", "train.progress=auto", f"strategy={strategy}"]
    if schedule == BUDGET_SCHEDULE:
        point.append(EVAL_AT_END)        # before the user's overrides, which may change it
    return point + ([] if args.augment else list(NO_AUGMENT)) + list(args.overrides)


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def train_one(args: argparse.Namespace, strategy: str, out: Path, budget: float | None,
              fitted: bool = False) -> dict:
    """Train (or resume, or find finished) one strategy's run; its summary.json. `fitted`: the LR schedule
    is fitted to the budget (BUDGET_SCHEDULE), evaluated at the end only. A run that diverges or trains
    nothing is recorded so (status diverged / failed, with the error) and reported, not raised."""
    overrides = _overrides(args, strategy, BUDGET_SCHEDULE if fitted else None)
    if budget is not None:
        overrides += ["train.max_epochs=null", f"train.max_cost={budget}"]
    cfg = _compose(overrides)
    try:
        run(cfg, str(out / strategy))
    except (DivergedError, NoTrainingStep) as err:
        LOG.warning("%s: %s", strategy, err)
    return json.loads((out / strategy / SUMMARY_FILE).read_text())


def _reason(summary: dict) -> str:
    """A non-finished run's error, up to its advice ("...; lower optimizer.lr ...")."""
    return str(summary.get("error") or f"status {summary.get('status')}").split(";")[0]


def results(out: Path, summaries: dict[str, dict]) -> list[dict]:
    """Per strategy: final error, budget spent, and cost / time to Traditional's final error x FACTOR;
    a run that did not finish (diverged, trained nothing) keeps its status and error, its numbers NaN."""
    names = list(summaries)
    usable = [n for n in names if summaries[n].get("status") in FINISHED]
    runs = load_runs([out / n for n in usable]) if usable else None
    evals = {s: g for s, g in runs.evals.groupby("strategy")} if runs is not None else {}
    finals = dict(zip(runs.runs["strategy"], runs.runs["final_test_error"])) if runs is not None else {}
    target = finals["traditional"] * FACTOR if "traditional" in finals else math.nan
    rows = []
    for name in names:
        s = summaries[name]
        row = {"strategy": name, "status": s.get("status"), "reason": _reason(s), "target": target,
               "final_error": math.nan, "cost": float(s.get("cost") or 0.0), "train_s": float(s.get("train_s") or 0.0),
               "epochs": float(s.get("epochs") or 0.0), "backpropped": int(s.get("examples_backpropped") or 0),
               "cost_to": math.nan, "time_to": math.nan}
        if name in evals:
            ev = evals[name]
            row.update(final_error=finals[name], cost=float(ev["cost"].iloc[-1]), train_s=float(ev["train_s"].iloc[-1]),
                       epochs=float(ev["epoch"].iloc[-1]), backpropped=int(ev["examples_backpropped"].iloc[-1]),
                       cost_to=time_to_target(ev, target, "cost"), time_to=time_to_target(ev, target, "train_s"))
        rows.append(row)
    base = rows[0]
    for r in rows:
        r["speedup_cost"] = base["cost_to"] / r["cost_to"] if not math.isnan(r["cost_to"]) else math.nan
        r["speedup_time"] = base["time_to"] / r["time_to"] if not math.isnan(r["time_to"]) else math.nan
    return rows


def verdict(rows: list[dict]) -> str:
    """One line: did SB reach Traditional's error x 1.2 for less than Traditional spent?"""
    by = {r["strategy"]: r for r in rows}
    trad, sb = by["traditional"], by.get("sb")
    if trad["status"] not in FINISHED:
        others = "; ".join(f"{r['strategy']} {r['status']}" for r in rows[1:] if r["status"] not in FINISHED)
        return (f"No verdict: Traditional {trad['status']} ({trad['reason']}), so there is no budget or target to "
                f"compare with" + (f"; {others} too." if others else "."))
    if sb is None:
        return "SB was not run."
    if sb["status"] not in FINISHED:
        return f"SB did NOT pay off here: it {sb['status']} ({sb['reason']})."
    target = f"Traditional's final error x {FACTOR:g} ({100 * sb['target']:.1f} %)"
    if math.isnan(sb["cost_to"]):
        return (f"SB did NOT pay off here: with Traditional's whole budget it never reached {target} "
                f"(final {100 * sb['final_error']:.1f} % vs Traditional's {100 * by['traditional']['final_error']:.1f} %).")
    if sb["speedup_cost"] <= 1.0:
        return f"SB did NOT pay off here: it reached {target} at {sb['speedup_cost']:.2f}x Traditional's speed (cost)."
    uniform = by.get("uniform")
    beside = ""
    if uniform is not None:
        beside = (f" ; the uniform control {uniform['status']}" if uniform["status"] not in FINISHED
                  else " ; the uniform control never got there" if math.isnan(uniform["cost_to"])
                  else f" ; the uniform control: {uniform['speedup_cost']:.2f}x")
    return f"SB reached {target} {sb['speedup_cost']:.2f}x sooner than Traditional in cost{beside}."


def _x(value: float, digits: int = 0) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ("| strategy | final error | epochs | backpropped | cost spent | cost to target | speedup (cost) | "
            "train s to target | speedup (time) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        final = f"{100 * r['final_error']:.2f} %" if r["status"] in FINISHED else str(r["status"])
        lines.append(f"| {r['strategy']} | {final} | {r['epochs']:.1f} | {r['backpropped']:,} | "
                     f"{r['cost']:,.0f} | {_x(r['cost_to'])} | {_x(r['speedup_cost'], 2)}x | "
                     f"{_x(r['time_to'], 1)} | {_x(r['speedup_time'], 2)}x |")
    return "\n".join(lines)


def plot(out: Path, names: list[str], target: float) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs([out / n for n in names])
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, ev in runs.evals.groupby("strategy", sort=False):
        ax.plot(ev["cost"], 100 * ev["test_error"], marker=".", label=name)
    if not math.isnan(target):
        ax.axhline(100 * target, color="black", ls="--", lw=0.9, label=f"Traditional final x {FACTOR:g}")
    ax.set(xlabel="cost (forward-equivalent units, evaluation excluded)", ylabel="test error (%)",
           title="Fashion-MNIST, resnet8, equal budget",
           ylim=(0, 100 if math.isnan(target) else min(100, 300 * target)))
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "error_vs_cost.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def train_all(args: argparse.Namespace, out: Path) -> dict[str, dict]:
    """Traditional first; the others get its measured cost as their budget (its schedule's epochs when it
    did not finish: there is no cost to give them). Each strategy's summary.json, by name."""
    summaries: dict[str, dict] = {}
    budget = None
    for name in args.names:
        summaries[name] = train_one(args, name, out, budget)
        if name == "traditional" and summaries[name].get("status") in FINISHED:
            budget = float(summaries[name]["cost"])     # Traditional's measured cost: everyone's budget
    return summaries


# ------------------------------------------------------------------------ --budgets: the frontier

def full_cost(args: argparse.Namespace) -> float:
    """C: Traditional's cost through --schedule, train.cost.train_example x training examples x the
    schedule's epochs (Traditional trains every example once per epoch, no selection forward). The
    reference config and every strategy's budget-fitted one are validated first, so a bad strategy, override
    or data root stops here, before any training."""
    from selective_backprop.data.datasets import DATASET_INFO, parse_options

    cfg = _compose(_overrides(args, "traditional"))
    validate_config(cfg)
    for name in args.names:         # every strategy's budget-fitted config too (the budget's size aside)
        validate_config(_compose(_overrides(args, name, BUDGET_SCHEDULE) + ["train.max_epochs=null",
                                                                            "train.max_cost=1"]))
    opt = parse_options(cfg.dataset)
    examples = opt.subset if opt.subset is not None else DATASET_INFO[opt.name].training_examples(opt.extra)
    return cost_weights(cfg).train_example * examples * int(cfg.lr_schedule.epochs)


def share_label(share: float) -> str:
    """0.25 -> "1/4", 1.0 -> "1", 0.3 -> "3/10"; a share no small fraction equals keeps its decimals."""
    frac = Fraction(share).limit_denominator(100)
    return str(frac) if float(frac) == share else f"{share:g}"


def train_frontier(args: argparse.Namespace, out: Path, shares: list[float], full: float) -> dict:
    """Every share and strategy (smallest budget first) to train.max_cost = share x C, its LR schedule
    fitted to that budget, in OUT/b<share>/<strategy>. Summaries by (share, strategy)."""
    summaries = {}
    for share in shares:
        for name in args.names:
            summaries[share, name] = train_one(args, name, out / f"b{share:g}", share * full, fitted=True)
    return summaries


def frontier_rows(summaries: dict, full: float) -> list[dict]:
    """One row per run: budget share, strategy, status, final error (NaN unless finished), cost, max_cost,
    optimizer steps, epochs, examples backpropped, training seconds and the reason of a run that failed."""
    rows = []
    for (share, name), s in summaries.items():
        done = s.get("status") in FINISHED
        rows.append({"budget": share, "strategy": name, "status": s.get("status"),
                     "final_test_error": float(s["final_test_error"]) if done else math.nan,
                     "cost": float(s.get("cost") or 0.0), "max_cost": share * full, "steps": int(s.get("steps") or 0),
                     "epochs": float(s.get("epochs") or 0.0),
                     "examples_backpropped": int(s.get("examples_backpropped") or 0),
                     "train_s": float(s.get("train_s") or 0.0), "reason": "" if done else _reason(s)})
    return rows


def _versus(rows: list[dict], other: str) -> str:
    """SB's final error minus `other`'s at every budget, in percentage points, or why there is none."""
    by = {(r["budget"], r["strategy"]): r for r in rows}
    parts = []
    for share in sorted({r["budget"] for r in rows}):
        sb, base, at = by[share, "sb"], by[share, other], share_label(share)
        if sb["status"] not in FINISHED:
            parts.append(f"SB {sb['status']} at {at}")
        elif base["status"] not in FINISHED:
            parts.append(f"{other} {base['status']} at {at}")
        else:
            diff = 100 * (sb["final_test_error"] - base["final_test_error"])
            word = "behind" if diff > 0 else "ahead" if diff < 0 else "level"
            parts.append(f"{word} at {at} ({diff:+.2f} pts)")
    return ", ".join(parts)


def frontier_verdict(rows: list[dict]) -> str:
    """One line: SB's final error against Traditional's and uniform's at each budget (one seed)."""
    names = {r["strategy"] for r in rows}
    if "sb" not in names:
        return "No verdict: SB was not run."
    against = [(n, "Traditional" if n == "traditional" else n) for n in ("traditional", "uniform") if n in names]
    if not against:
        return "No verdict: neither Traditional nor uniform was run."
    said = "; vs ".join(f"{title}: {_versus(rows, n)}" for n, title in against)
    return (f"SB vs {said} (final test error at equal compute, demo size, ONE seed: results/frontier/ has the "
            f"paired intervals over seeds).")


def frontier_markdown(rows: list[dict], full: float, schedule: str) -> str:
    head = "| budget | strategy | final error | cost | budget cost | optimizer steps | epochs | status |"
    lines = [f"Budget 1 = {full:,.0f} cost units: Traditional through {schedule}. Each run's LR schedule is "
             f"fitted to its own budget ({BUDGET_SCHEDULE}); one evaluation, at its end.", "", head,
             "|" + "---|" * 8]
    for r in rows:
        final = f"{100 * r['final_test_error']:.2f} %" if r["status"] in FINISHED else "–"
        status = r["status"] if r["status"] in FINISHED else f"{r['status']}: {r['reason']}"
        lines.append(f"| {share_label(r['budget'])} | {r['strategy']} | {final} | {r['cost']:,.0f} | "
                     f"{r['max_cost']:,.0f} | {r['steps']:,} | {r['epochs']:.2f} | {status} |")
    return "\n".join(lines)


def frontier_csv(rows: list[dict]) -> str:
    import pandas as pd

    from selective_backprop.analysis.table1 import frame_to_csv

    df = pd.DataFrame(rows)
    return frame_to_csv(df, ["budget", "final_test_error", "cost", "max_cost", "epochs", "train_s"])


def plot_frontier(out: Path, rows: list[dict], schedule: str) -> Path:
    """Final test error against the budget share, one line per strategy (finished runs only)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selective_backprop.analysis.pareto import strategy_color

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name in dict.fromkeys(r["strategy"] for r in rows):
        done = [r for r in rows if r["strategy"] == name and r["status"] in FINISHED]
        ax.plot([r["budget"] for r in done], [100 * r["final_test_error"] for r in done], marker="o",
                color=strategy_color(name), label=name, lw=2.2 if name == "traditional" else 1.4)
    shares = sorted({r["budget"] for r in rows})
    ax.set_xticks(shares, [share_label(b) for b in shares])
    ax.set(xlabel=f"budget (share of Traditional's full-schedule cost, {schedule})", ylabel="final test error (%)",
           title="Fashion-MNIST, resnet8, budget-fitted LR schedules, one seed")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "frontier.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier_report(out: Path, summaries: dict, full: float, schedule: str) -> None:
    rows = frontier_rows(summaries, full)
    text = frontier_verdict(rows) + "\n\n" + frontier_markdown(rows, full, schedule)
    (out / "frontier.md").write_text(text + "\n")
    (out / "frontier.csv").write_text(frontier_csv(rows))
    print(text)
    print(f"\nplot: {plot_frontier(out, rows, schedule)}\nruns: {out}/b<budget>/<strategy>/ (metrics.jsonl, "
          f"summary.json)\nequal-cost speedups to Traditional's final error x {FACTOR:g}: scripts/demo.py without --budgets")


def _trained(train: Callable[[], dict]) -> tuple[dict | None, int | None]:
    """train()'s result, or (None, exit code) when a signal stopped it (the run checkpointed)."""
    try:
        return train(), None
    except Preempted as err:
        LOG.warning("%s", err)
        return None, EXIT_PREEMPTED
    except Aborted as err:
        LOG.error("aborted by %s: summary.json status \"aborted\"; re-run the same command to resume", err)
        return None, 128 + err.signum


@exits_on_bad_input
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    shares = parse_budgets(args.budgets) if args.budgets is not None else None
    out = check_output_dir(args.out)
    if shares is not None:
        full = full_cost(args)
        out.mkdir(parents=True, exist_ok=True)
        install_preemption_handlers()
        summaries, code = _trained(lambda: train_frontier(args, out, shares, full))
        if code is None:
            frontier_report(out, summaries, full, args.schedule)
        return code or 0
    out.mkdir(parents=True, exist_ok=True)
    install_preemption_handlers()       # SIGTERM/SIGINT: the run stops at a step, checkpointed (exit 75)
    summaries, code = _trained(lambda: train_all(args, out))
    if code is not None:
        return code
    rows = results(out, summaries)
    text = verdict(rows) + "\n\n" + table(rows)
    (out / "table.md").write_text(text + "\n")
    print(text)
    finished = [n for n in args.names if summaries[n].get("status") in FINISHED]
    figure = plot(out, finished, rows[0]["target"]) if finished else "none (no run finished)"
    print(f"\nplot: {figure}\nruns: {out}/<strategy>/ (metrics.jsonl, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

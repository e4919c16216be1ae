#!/usr/bin/env python
"""The main job on a CPU: Traditional vs SB vs Stale-SB on real Fashion-MNIST (resnet8).

Trains each strategy with the same epochs and LR schedule, prints a table (training time, final
error, backward passes, phase split) and writes a plot of test error vs wall-clock time.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402

from selective_backprop.conf import CONFIG_DIR  # noqa: E402
from selective_backprop.cli_errors import check_output_dir, exits_on_bad_input  # noqa: E402

from selective_backprop.engine.records import read_metrics  # noqa: E402
from selective_backprop.engine.trainer import Trainer  # noqa: E402

STRATEGIES = ("traditional", "sb", "stale_sb")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="outputs/demo", help="folder for the runs, table and plot")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--subset", type=int, default=12000, help="training examples (0 = all 60 000)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. strategy.selectivity=0.25")
    return p.parse_args(argv)


def run_strategy(name: str, args: argparse.Namespace, out: Path, bundle=None):
    overrides = ["experiment=fashion_mnist_cpu", f"strategy={name}", f"train.max_epochs={args.epochs}",
                 "lr_schedule=fashion_mnist_sched2", "train.progress=auto", "device=cpu"]
    if args.subset:
        overrides.append(f"dataset.subset={args.subset}")
    if name == "stale_sb":
        overrides.append("strategy.staleness=2")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides + list(args.overrides))
    trainer = Trainer(cfg, str(out / name), data_bundle=bundle)
    return trainer, trainer.fit()


def table(summaries: dict[str, dict]) -> str:
    head = ("| strategy | train s | speedup | final error | backward passes | "
            "select fwd s | train fwd s | backward s | other s |")
    lines = [head, "|" + "---|" * 9]
    base = summaries.get("traditional", {}).get("train_s")
    for name, s in summaries.items():
        ph = s["phase_s"]
        other = ph["data"] + ph["select"] + ph["optimizer"]
        speed = f"{base / s['train_s']:.2f}x" if base else "–"
        lines.append(f"| {name} | {s['train_s']:.1f} | {speed} | {s['final_test_error']:.4f} | "
                     f"{s['examples_backpropped']} | {ph['select_forward']:.1f} | {ph['train_forward']:.1f} | "
                     f"{ph['backward']:.1f} | {other:.1f} |")
    return "\n".join(lines)


def plot(out: Path, names: list[str]) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        rows = read_metrics(out / name / "metrics.jsonl")
        ax.plot([r["train_s"] for r in rows], [100 * r["test_error"] for r in rows], marker="o", label=name)
    ax.set(xlabel="training time (s, evaluation excluded)", ylabel="test error (%)",
           title="Fashion-MNIST, resnet8, CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "error_vs_time.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


@exits_on_bad_input
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    out = check_output_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.strategies.split(",") if n]
    summaries, bundle = {}, None
    for name in names:
        trainer, summaries[name] = run_strategy(name, args, out, bundle)
        bundle = trainer.data
    text = table(summaries)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"\nplot: {plot(out, names)}\nruns: {out}/<strategy>/ (metrics.jsonl, summary.json, tb/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

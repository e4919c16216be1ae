#!/usr/bin/env python
"""Where an SB epoch's time goes, and how close it is to the physical limit.

    python scripts/benchmark.py                                   # resnet8, real Fashion-MNIST, CPU
    python scripts/benchmark.py --device cuda --model resnet18 --synthetic cifar

In one process, for one model, dataset and device:
1. short Traditional, SB and Stale-SB runs with the real Trainer (composed configs, a training
   subset, a few epochs), in interleaved rounds, giving each strategy's epoch time and phase split;
2. on the Traditional run's trained model: median per-batch cost of the selection forward for each
   precision x selection batch size x memory format, with its quality against the default fp32 pass
   (Spearman rank correlation of the losses, overlap of the kept sets under the same draws), and of
   the training forward, backward and optimizer step, all timed in turns so they share the load;
3. the device pipeline's throughput against the pure compute rate on a batch already on the device.

Writes OUT/NAME.json and OUT/NAME.md (a markdown table) and prints the table with the four targets:
1. SB ÷ Traditional epoch time within 5 % of the ideal ratio from the same runs' phase costs,
   ideal = (c_sel + s · c_train) / c_train per example (c_train = forward + backward + step),
   judged at equal machine speed (each run's time over its compute phases, see epoch_table);
   SB and Stale-SB run with strategy.prime_epochs=0: the priming epoch backprops every example, so
   the steady-state selection epoch is what is timed (the report says so);
2. `select` bookkeeping < 1 % of SB's training time;
3. a cheaper selection pass >= 1.5x faster than the default fp32 pass with Spearman >= 0.99;
4. (GPU) Traditional throughput with the device pipeline >= 90 % of the pure compute rate.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402

from selective_backprop.conf import CONFIG_DIR  # noqa: E402
from selective_backprop.cli_errors import check_output_dir, exits_on_bad_input  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from selective_backprop.data import DATASET_INFO, build_data  # noqa: E402
from selective_backprop.data.datasets import DataBundle, ImageArrayDataset  # noqa: E402
from selective_backprop.data.transforms import build_transforms  # noqa: E402
from selective_backprop.engine.runtime import AMP_DTYPES  # noqa: E402
from selective_backprop.engine.trainer import Trainer  # noqa: E402
from selective_backprop.selection import rules  # noqa: E402
from selective_backprop.selection.selector import LossSelector, selection_forward  # noqa: E402

log = logging.getLogger("benchmark")
STRATEGIES = ("traditional", "sb", "stale_sb")
TRAIN_PHASES = ("train_forward", "backward", "optimizer")


# ------------------------------------------------------------------------------------- setup

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--model", default="resnet8")
    p.add_argument("--dataset", default="fashion_mnist", help="dataset config (real files, see dataset.root)")
    p.add_argument("--synthetic", default=None,
                   help="random data shaped like this dataset instead of files (cifar = cifar10)")
    p.add_argument("--subset", type=int, default=None, help="training examples (default: 6000 CPU, all GPU)")
    p.add_argument("--test-subset", type=int, default=2000, help="test examples for the runs' final evaluation")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (3 covers one Stale-SB cycle)")
    p.add_argument("--rounds", type=int, default=3,
                   help="repeat the three runs, interleaved; the round with the most even machine speed is reported")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--loader", default="device", help="dataset.loader of the runs: device | torch")
    p.add_argument("--staleness", type=int, default=3)
    p.add_argument("--train-precision", default="fp32", help="train.precision of the runs")
    p.add_argument("--channels-last", action="store_true", help="train.channels_last=true for the runs")
    p.add_argument("--select-batch-sizes", default=None, help="default: 128,512 on CPU, 128,512,1024 on GPU")
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--quality-examples", type=int, default=None, help="default: 1024 CPU, 8192 GPU")
    p.add_argument("--budget-s", type=float, default=3.0, help="time cap per selection variant's quality pass")
    p.add_argument("--reps", type=int, default=5, help="round-robin timing turns (at least 2)")
    p.add_argument("--timing-budget-s", type=float, default=60.0, help="no new timing turn after this (from turn 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU intra-op threads (1: on shared cores a 2-thread pool waits for descheduled threads)")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--name", default=None, help="file stem (default: the device type)")
    p.add_argument("--work", default="outputs/bench", help="folder for the runs' records")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args(argv)
    args.device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if args.device == "auto":
        args.device = "cpu"
    gpu = args.device.startswith("cuda")
    args.select_batch_sizes = [int(v) for v in (args.select_batch_sizes or ("128,512,1024" if gpu else "128,512"))
                               .split(",")]
    args.precisions = [v for v in args.precisions.split(",") if v]
    args.quality_examples = args.quality_examples or (8192 if gpu else 1024)
    args.subset = args.subset if args.subset is not None else (None if gpu else 4000)
    if args.synthetic == "cifar":
        args.synthetic = "cifar10"
    return args


PRIMED = ("sb", "stale_sb")      # strategies with a priming epoch (every example backpropped)


def compose_cfg(args: argparse.Namespace, strategy: str, extra: list[str] = ()):
    dataset = args.synthetic or args.dataset
    overrides = [f"dataset={dataset}", f"model={args.model}", f"strategy={strategy}", f"device={args.device}",
                 f"train.batch_size={args.batch_size}", f"train.max_epochs={args.epochs}",
                 f"train.eval_every={args.epochs}", "train.progress=false", "train.tensorboard=false",
                 "train.diverge_factor=null",   # timing only; --synthetic labels are random, error stays at chance
                 "train.checkpoint_every=1000000", f"dataset.loader={args.loader}",
                 f"train.precision={args.train_precision}", f"train.channels_last={str(args.channels_last).lower()}"]
    if args.subset and not args.synthetic:
        overrides.append(f"dataset.subset={args.subset}")
    if strategy == "stale_sb":
        overrides.append(f"strategy.staleness={args.staleness}")
    if strategy in PRIMED:
        overrides.append("strategy.prime_epochs=0")    # time the steady-state selection epoch, not priming
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides + list(extra) + list(args.overrides))


def synthetic_bundle(name: str, n_train: int, n_test: int, seed: int = 0) -> DataBundle:
    """Random uint8 images and labels shaped like `name`, with its normalisation and augmentation."""
    info = DATASET_INFO[name]
    gen = torch.Generator().manual_seed(seed)
    shape = (info.in_channels, *info.image_size)
    train_x = torch.randint(0, 256, (n_train, *shape), generator=gen, dtype=torch.uint8)
    test_x = torch.randint(0, 256, (n_test, *shape), generator=gen, dtype=torch.uint8)
    train_y = torch.randint(0, info.num_classes, (n_train,), generator=gen)
    test_y = torch.randint(0, info.num_classes, (n_test,), generator=gen)
    augment = {"crop_padding": info.crop_padding, "hflip": info.hflip, "cutout": info.cutout}
    train_tf, test_tf = build_transforms(info.mean, info.std, **augment)
    return DataBundle(name=name, train=ImageArrayDataset(train_x, train_y, train_tf),
                      test=ImageArrayDataset(test_x, test_y, test_tf), num_classes=info.num_classes,
                      in_channels=info.in_channels, image_size=info.image_size, train_targets=train_y,
                      noisy=None, mean=info.mean, std=info.std, augment=augment)


def load_bundle(args: argparse.Namespace) -> DataBundle:
    if args.synthetic:
        n = args.subset or DATASET_INFO[args.synthetic].train_size
        return synthetic_bundle(args.synthetic, n, args.test_subset)
    cfg = compose_cfg(args, "traditional")
    bundle = build_data(cfg.dataset, int(cfg.seed))
    x, y = bundle.test_arrays()
    k = min(args.test_subset, x.shape[0])
    bundle.test = ImageArrayDataset(x[:k], y[:k], bundle.test.transform)
    return bundle


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------- the runs

def run_strategies(args, bundle) -> tuple[dict[str, list[dict]], Trainer]:
    """Each strategy `rounds` times, interleaved; returns the summaries and the last Traditional trainer."""
    summaries: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    trad = None
    for r in range(args.rounds):
        for name in STRATEGIES:
            trainer = Trainer(compose_cfg(args, name), str(Path(args.work) / f"{name}_{r}"), data_bundle=bundle)
            summary = trainer.fit()
            summaries[name].append(summary)
            log.info("round %d %-11s train %.1fs  %s", r, name, summary["train_s"],
                     " ".join(f"{k}={v:.2f}" for k, v in summary["phase_s"].items()))
            if name == "traditional":
                trad = trainer
    return summaries, trad


def run_costs(summary: dict) -> dict:
    """Per-example costs and counts of one run, from its summary."""
    ph = summary["phase_s"]
    considered = round(summary["epochs"] * summary["n_train"])
    back = summary["examples_backpropped"]
    if back == 0:
        raise SystemExit(f"the {summary['strategy']} run made no training step: use a larger --subset or --epochs")
    selected = summary["examples_forwarded"] - back
    compute = ph["select_forward"] + sum(ph[p] for p in TRAIN_PHASES)
    return {"train_s": summary["train_s"], "phase_s": ph, "considered": considered, "backpropped": back,
            "select_forwarded": selected, "s": back / considered, "f_sel": selected / considered,
            "c_sel": ph["select_forward"] / selected if selected else 0.0,
            "c_train": sum(ph[p] for p in TRAIN_PHASES) / back,
            "c_data": ph["data"] / considered, "select_share": ph["select"] / summary["train_s"],
            "compute_s": compute, "overhead": summary["train_s"] / compute,
            "final_test_error": summary["final_test_error"]}


def round_costs(runs: dict[str, dict]) -> dict:
    """One round's strategies against that round's Traditional run.

    ideal = (f_sel·c_sel + s·c_train) / c_train with the strategy run's own per-example costs (one
    run: one machine speed). `ratio_vs_ideal` = (strategy ÷ Traditional time) ÷ ideal compares two
    runs; `load_normalised` = the strategy's overhead factor (train time ÷ its compute phases) ÷
    Traditional's, which is what ratio_vs_ideal is when both runs see the same machine speed.
    `drift` = c_train of this run ÷ Traditional's: how much the machine's speed moved between them.
    """
    costs = {name: run_costs(summary) for name, summary in runs.items()}
    trad = costs["traditional"]
    for c in costs.values():
        c["ratio"] = c["train_s"] / trad["train_s"]
        c["ideal"] = (c["f_sel"] * c["c_sel"] + c["s"] * c["c_train"]) / c["c_train"]
        c["ratio_vs_ideal"] = c["ratio"] / c["ideal"]
        c["load_normalised"] = c["overhead"] / trad["overhead"]
        c["drift"] = c["c_train"] / trad["c_train"]
    return costs


def epoch_table(summaries: dict[str, list[dict]]) -> dict:
    """The round whose runs saw the most even machine speed (smallest worst |drift - 1|), with every
    round's figures under `rounds` and their medians under `median`."""
    rounds = [round_costs({name: runs[r] for name, runs in summaries.items()})
              for r in range(len(summaries["traditional"]))]
    best = min(range(len(rounds)), key=lambda r: max(abs(c["drift"] - 1) for c in rounds[r].values()))
    table = {name: dict(c, round=best) for name, c in rounds[best].items()}
    keys = ("train_s", "ratio", "ideal", "ratio_vs_ideal", "load_normalised", "drift", "select_share")
    for name, c in table.items():
        c["rounds"] = [{k: rc[name][k] for k in keys} for rc in rounds]
        c["median"] = {k: statistics.median(rc[name][k] for rc in rounds) for k in keys}
    return table


# ----------------------------------------------------------------------- micro-benchmarks

def sample_pool(trainer: Trainer, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` augmented training examples (epoch 0's order and draws), on the device."""
    src = trainer.source
    parts = []
    for b in src.batches(src.permutation(0)[:count], 1024, 0):
        parts.append((b.x.contiguous(), b.y))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def variant_losses(model, x, y, batch, precision, budget_s, full=False) -> torch.Tensor:
    """Selection losses on a prefix of (x, y) in batches of `batch` (all of it if `full`, else until
    `budget_s` has passed); the first call is also the variant's warm-up."""
    losses, start = [], time.perf_counter()
    for cx, cy in zip(x.split(batch), y.split(batch)):
        if losses and not full and time.perf_counter() - start > budget_s:
            break
        losses.append(selection_forward(model, cx, cy, mode="eval", precision=precision)[0])
    return torch.cat(losses).float().cpu()


def round_robin(calls: list, device: torch.device, reps: int, budget_s: float) -> list[list[float]]:
    """Seconds of each call, timed one after the other in turns (so all share the same machine load),
    for `reps` turns or until `budget_s` has passed after the second turn."""
    times: list[list[float]] = [[] for _ in calls]
    start = time.perf_counter()
    for rep in range(reps):
        if rep >= 2 and time.perf_counter() - start > budget_s:
            break
        for i, call in enumerate(calls):
            times[i].append(timed(call, device)[1])
    return times


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


def kept_mask(losses: torch.Tensor, strategy_cfg, seed: int) -> torch.Tensor:
    beta, _ = rules.resolve_beta(strategy_cfg.get("beta"), strategy_cfg.get("selectivity"))
    selector = LossSelector(beta, int(strategy_cfg.get("history") or 1024), float(strategy_cfg.get("prob_min") or 0),
                            seed)
    return torch.cat([selector.select(c)[0] for c in losses.split(128)])


def with_format(model, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return copy.deepcopy(model).to(memory_format=fmt), fmt


def selection_benchmark(args, trainer: Trainer) -> list[dict]:
    """Every (precision, selection batch, memory format): quality against the default pass, then
    per-batch cost timed round-robin across the variants."""
    device = trainer.device
    x, y = sample_pool(trainer, args.quality_examples)
    sb_cfg = compose_cfg(args, "sb").strategy
    variants = [("fp32", args.batch_size, bool(args.channels_last))]     # the default pass: the reference
    variants += [(prec, bs, cl) for cl in (False, True) for bs in args.select_batch_sizes for prec in args.precisions
                 if (prec, bs, cl) != variants[0]]
    rows, calls, reference = [], [], None
    for prec, bs, cl in variants:
        model, fmt = with_format(trainer.model, cl)
        xf = x.contiguous(memory_format=fmt)
        losses = variant_losses(model, xf, y, bs, prec, args.budget_s, full=reference is None)
        reference = losses if reference is None else reference
        k = losses.shape[0]
        ref_mask, mask = kept_mask(reference[:k], sb_cfg, 0), kept_mask(losses, sb_cfg, 0)
        union = (ref_mask | mask).sum().item()
        rows.append({"precision": prec, "batch": bs, "channels_last": cl, "examples": k,
                     "spearman": spearman(reference[:k], losses),
                     "kept_jaccard": (ref_mask & mask).sum().item() / union if union else 1.0,
                     "kept_agreement": (ref_mask == mask).float().mean().item()})
        xb, yb = xf[:bs], y[:bs]
        calls.append(lambda m=model, xb=xb, yb=yb, p=prec: selection_forward(m, xb, yb, mode="eval", precision=p))
    times = round_robin(calls, device, args.reps, args.timing_budget_s)
    for row, t in zip(rows, times):
        row.update(timed_batches=len(t), batch_s=statistics.median(t),
                   example_us=1e6 * statistics.median(t) / min(row["batch"], x.shape[0]))
    for row in rows:
        row["speedup"] = rows[0]["example_us"] / row["example_us"]
        log.info("select %s bs=%d cl=%s: %.0f us/example (%.2fx), spearman %.5f, jaccard %.3f", row["precision"],
                 row["batch"], row["channels_last"], row["example_us"], row["speedup"], row["spearman"],
                 row["kept_jaccard"])
    return rows


def train_step_benchmark(args, trainer: Trainer) -> list[dict]:
    """Training forward, backward and optimizer step at the training batch size, both memory formats
    in turns; and the pure compute rate (steps back to back on one batch, no per-phase syncs)."""
    device = trainer.device
    x, y = sample_pool(trainer, args.batch_size)
    amp = AMP_DTYPES[args.train_precision]
    setups = []
    for cl in (False, True):
        model, fmt = with_format(trainer.model, cl)
        model.train()
        opt = instantiate(trainer.cfg.optimizer)(params=model.parameters())
        setups.append((cl, model, opt, x.contiguous(memory_format=fmt)))

    def forward(model, xb):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(xb)
        return F.cross_entropy(logits.float(), y, reduction="none").mean()

    def phases(model, opt, xb):
        loss, t_f = timed(lambda: forward(model, xb), device)
        _, t_b = timed(lambda: (opt.zero_grad(set_to_none=True), loss.backward()), device)
        _, t_s = timed(opt.step, device)
        return t_f, t_b, t_s

    def loop(model, opt, xb, steps=4):
        for _ in range(steps):
            loss = forward(model, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    for _, model, opt, xb in setups:                  # warm-up
        phases(model, opt, xb)
        phases(model, opt, xb)
    split = {cl: [] for cl, *_ in setups}
    loops = {cl: [] for cl, *_ in setups}
    start = time.perf_counter()
    for rep in range(args.reps):
        if rep >= 2 and time.perf_counter() - start > args.timing_budget_s:
            break
        for cl, model, opt, xb in setups:
            split[cl].append(phases(model, opt, xb))
            loops[cl].append(timed(lambda: loop(model, opt, xb), device)[1] / 4)
    rows = []
    for cl, *_ in setups:
        fwd, bwd, opt_s = (statistics.median(v) for v in zip(*split[cl]))
        per_step = statistics.median(loops[cl])
        rows.append({"channels_last": cl, "batch": x.shape[0], "forward_s": fwd, "backward_s": bwd,
                     "optimizer_s": opt_s, "step_loop_s": per_step, "compute_rate": x.shape[0] / per_step})
        log.info("train step cl=%s: fwd %.1f ms bwd %.1f ms opt %.1f ms; loop %.1f ms/step", cl, 1e3 * fwd,
                 1e3 * bwd, 1e3 * opt_s, 1e3 * per_step)
    return rows



def loader_benchmark(trainer: Trainer) -> float:
    """Examples per second of the run's loader alone over one epoch (no model)."""
    src = trainer.source

    def epoch():
        last = None
        for b in src.batches(src.permutation(7), trainer.batch_size, 7):
            last = b
        return last

    _, sec = timed(epoch, trainer.device)
    return len(src) / sec


# ------------------------------------------------------------------------------ the report

def targets(costs: dict, selection: list[dict], steps: list[dict], pipeline: dict, gpu: bool) -> list[dict]:
    sb = costs["sb"]
    t1 = abs(sb["load_normalised"] - 1) <= 0.05 and abs(sb["median"]["load_normalised"] - 1) <= 0.05
    t2 = sb["select_share"] < 0.01 and sb["median"]["select_share"] < 0.01
    cheap = [r for r in selection[1:] if r["speedup"] >= 1.5 and r["spearman"] >= 0.99]
    best = max(selection[1:], key=lambda r: r["speedup"]) if len(selection) > 1 else None
    t3_detail = (", ".join(f"{r['precision']}/b{r['batch']}{'/cl' if r['channels_last'] else ''} "
                           f"{r['speedup']:.2f}x rho {r['spearman']:.4f}" for r in cheap) if cheap else
                 f"none; fastest {best['precision']}/b{best['batch']}{'/cl' if best['channels_last'] else ''} "
                 f"{best['speedup']:.2f}x rho {best['spearman']:.4f}" if best else "no variants")
    t4 = pipeline["run_vs_compute"] >= 0.9
    return [
        {"target": "1. SB/Trad within 5 % of ideal", "met": t1,
         "detail": f"overhead-normalised {100 * (sb['load_normalised'] - 1):+.1f} % (SB spends "
                   f"{100 * (sb['overhead'] - 1):.1f} % beyond its compute phases, Traditional "
                   f"{100 * (costs['traditional']['overhead'] - 1):.1f} %); raw: SB/Trad {sb['ratio']:.3f} vs ideal "
                   f"{sb['ideal']:.3f} ({100 * (sb['ratio_vs_ideal'] - 1):+.1f} %), with the machine's speed "
                   f"{100 * (sb['drift'] - 1):+.1f} % apart between the two runs; median over rounds: "
                   f"overhead-normalised {100 * (sb['median']['load_normalised'] - 1):+.1f} %, raw "
                   f"{100 * (sb['median']['ratio_vs_ideal'] - 1):+.1f} %"},
        {"target": "2. select bookkeeping < 1 % of training", "met": t2,
         "detail": f"{100 * sb['select_share']:.2f} % (median over rounds {100 * sb['median']['select_share']:.2f} %; "
                   f"Stale-SB {100 * costs['stale_sb']['select_share']:.2f} %)"},
        {"target": "3. selection pass >= 1.5x faster, Spearman >= 0.99", "met": bool(cheap), "detail": t3_detail},
        {"target": "4. device pipeline >= 90 % of compute (GPU)", "met": t4 if gpu else None,
         "detail": f"{100 * pipeline['run_vs_compute']:.1f} % of the pure compute rate"
                   + ("" if gpu else " (a GPU target; CPU figure for reference)")},
    ]


def markdown(res: dict) -> str:
    env, c = res["env"], res["epoch"]
    out = [f"# Benchmark: {env['model']} on {env['dataset']} ({env['device_name']})", "",
           "`" + shlex.join(["python", "scripts/benchmark.py", *env["argv"]]) + "`", "",
           f"torch {env['torch']}, {env['threads']} thread(s), {env['n_train']} training examples x "
           f"{env['epochs']} epochs, batch {env['batch_size']}, loader `{env['loader']}`, train precision "
           f"{env['train_precision']}, channels_last {env['channels_last']}, {env['rounds']} round(s); "
           f"load average {env['load_start']} at start, {env['load_end']} at the end; {env['wall_s']:.0f} s in all. "
           f"{env['note']}".rstrip(), "",
           f"Rows: round {c['traditional']['round'] + 1} of {env['rounds']}, the one with the most even machine "
           "speed across its three runs (every round in the JSON); medians over rounds below the table. "
           "SB and Stale-SB run with strategy.prime_epochs=0, so every timed epoch is a selection epoch "
           "(the priming epoch backprops every example).", "",
           "## Epoch time (real Trainer runs)", "",
           "| strategy | train s | ÷ Trad | ideal ÷ Trad | actual ÷ ideal | overhead-normalised | speed drift "
           "| kept share | select fwd s | train fwd s | backward s | optimizer s | data s | select s | select % "
           "| final error |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in c.items():
        ph = r["phase_s"]
        out.append(f"| {name} | {r['train_s']:.1f} | {r['ratio']:.3f} | {r['ideal']:.3f} | {r['ratio_vs_ideal']:.3f} "
                   f"| {r['load_normalised']:.3f} | {r['drift']:.3f} | {r['s']:.3f} | {ph['select_forward']:.2f} "
                   f"| {ph['train_forward']:.2f} | {ph['backward']:.2f} "
                   f"| {ph['optimizer']:.2f} | {ph['data']:.2f} | {ph['select']:.3f} | {100 * r['select_share']:.2f} "
                   f"| {r['final_test_error']:.4f} |")
    t, sb = c["traditional"], c["sb"]
    out += [""] + [f"Median over rounds, {name}: ÷ Trad {r['median']['ratio']:.3f}, ideal {r['median']['ideal']:.3f}, "
                   f"actual ÷ ideal {r['median']['ratio_vs_ideal']:.3f}, overhead-normalised "
                   f"{r['median']['load_normalised']:.3f}, select {100 * r['median']['select_share']:.2f} %."
                   for name, r in c.items() if name != "traditional"]
    out += ["", f"Per-example costs in the SB run: c_train (training fwd+bwd+step per backpropped example) = "
            f"{1e6 * sb['c_train']:.0f} µs, c_sel (selection forward) = {1e6 * sb['c_sel']:.0f} µs = "
            f"{sb['c_sel'] / sb['c_train']:.2f} c_train; s = {sb['s']:.3f}; Traditional: c_train = "
            f"{1e6 * t['c_train']:.0f} µs, data {1e6 * t['c_data']:.1f} µs per example.", "",
            "*ideal ÷ Trad* = (f_sel·c_sel + s·c_train) / c_train from the strategy run's own costs (f_sel: share "
            "of examples given a selection forward: 1 for SB, 1/n for Stale-SB). *actual ÷ ideal* compares two "
            "separately timed runs, so it also carries any change of machine speed between them (*speed drift* = "
            "the run's c_train ÷ Traditional's). *overhead-normalised* = (train s ÷ compute-phase s) of the "
            "run ÷ the same for Traditional: what actual ÷ ideal is at equal machine speed. Target 1 is judged "
            "on it.", "",
            "## Selection forward variants (Traditional run's model, eval mode)", "",
            "| precision | batch | channels_last | ms / batch | µs / example | speed-up | Spearman | kept Jaccard "
            "| kept agreement | examples |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["selection"]:
        out.append(f"| {r['precision']} | {r['batch']} | {r['channels_last']} | {1e3 * r['batch_s']:.1f} "
                   f"| {r['example_us']:.0f} | {r['speedup']:.2f}x | {r['spearman']:.5f} | {r['kept_jaccard']:.3f} "
                   f"| {r['kept_agreement']:.3f} | {r['examples']} |")
    out += ["", "Speed-up against the first row (the default pass); quality against its losses on the same "
            "examples, kept sets drawn with the same seed.", "", "## Training step", "",
            "| channels_last | batch | forward ms | backward ms | optimizer ms | loop ms / step | examples / s |",
            "|---|---|---|---|---|---|---|"]
    for r in res["train_step"]:
        out.append(f"| {r['channels_last']} | {r['batch']} | {1e3 * r['forward_s']:.1f} | {1e3 * r['backward_s']:.1f} "
                   f"| {1e3 * r['optimizer_s']:.1f} | {1e3 * r['step_loop_s']:.1f} | {r['compute_rate']:.0f} |")
    p = res["pipeline"]
    out += ["", "## Device pipeline", "",
            "| loader alone ex/s | pure compute ex/s | Traditional run ex/s | run ÷ compute |", "|---|---|---|---|",
            f"| {p['loader_rate']:.0f} | {p['compute_rate']:.0f} | {p['run_rate']:.0f} | {p['run_vs_compute']:.3f} |",
            "", "## Targets", ""]
    for t in res["targets"]:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        out.append(f"- **{t['target']}**: {mark} — {t['detail']}")
    return "\n".join(out) + "\n"


@exits_on_bad_input
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    check_output_dir(args.out)
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    wall = time.time()
    bundle = load_bundle(args)
    summaries, trad = run_strategies(args, bundle)
    costs = epoch_table(summaries)
    selection = selection_benchmark(args, trad)
    steps = train_step_benchmark(args, trad)
    run_step = next(r for r in steps if r["channels_last"] == bool(args.channels_last))
    run_rate = costs["traditional"]["backpropped"] / costs["traditional"]["train_s"]
    pipeline = {"loader_rate": loader_benchmark(trad), "compute_rate": run_step["compute_rate"], "run_rate": run_rate,
                "run_vs_compute": run_rate / run_step["compute_rate"]}
    gpu = trad.device.type == "cuda"
    env = {"model": args.model, "dataset": (args.synthetic + " (synthetic)") if args.synthetic else args.dataset,
           "device": str(trad.device), "device_name": torch.cuda.get_device_name(trad.device) if gpu
           else f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "n_train": len(trad.source),
           "epochs": args.epochs, "batch_size": args.batch_size, "loader": args.loader, "rounds": args.rounds,
           "train_precision": args.train_precision, "channels_last": bool(args.channels_last),
           "staleness": args.staleness, "load_start": round(load_start, 2),
           "load_end": round(os.getloadavg()[0], 2), "wall_s": round(time.time() - wall, 1), "note": args.note,
           "argv": sys.argv[1:] if argv is None else list(argv)}
    res = {"env": env, "epoch": costs, "selection": selection, "train_step": steps, "pipeline": pipeline}
    res["targets"] = targets(costs, selection, steps, pipeline, gpu)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or trad.device.type
    (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    text = markdown(res)
    (out / f"{name}.md").write_text(text)
    print(text)
    log.info("wrote %s and %s in %.0f s", out / f"{name}.json", out / f"{name}.md", env["wall_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

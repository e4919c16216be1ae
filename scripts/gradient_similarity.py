#!/usr/bin/env python
"""Fig 5: how well does a top-loss subsample's gradient match the full batch's, vs a random one?

Trains a model with plain SGD (Traditional) and, every `--every` steps, takes a fresh batch of
`--full-batch` training examples: g_full = gradient of their mean loss; g_top = gradient over the
`--fraction` with the highest losses; g_rand = gradient over a random subsample of the same size.
Records the cosine similarity to g_full and the fraction of weights whose gradient has the same sign.
Gradients are taken in eval mode so BatchNorm uses the same statistics for every subset.

    python scripts/gradient_similarity.py --epochs 3 --out results/fashion_mnist_cpu/figures
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from selective_backprop.data import build_data  # noqa: E402
from selective_backprop.cli_errors import check_output_dir, exits_on_bad_input  # noqa: E402
from selective_backprop.sources.source import TorchSource, derive_seed  # noqa: E402
from selective_backprop.timing import PhaseTimer  # noqa: E402
from selective_backprop.models import build_model  # noqa: E402

log = logging.getLogger("gradient_similarity")
FIELDS = ["step", "epoch", "cos_top", "cos_random", "sign_top", "sign_random", "loss_full"]


def flat_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean cross-entropy over (x, y), flattened over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


def similarity(sub: torch.Tensor, full: torch.Tensor) -> tuple[float, float]:
    """(cosine similarity, fraction of coordinates with the same sign)."""
    cos = F.cosine_similarity(sub, full, dim=0).item()
    same = (torch.sign(sub) == torch.sign(full)).float().mean().item()
    return cos, same


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fraction: float,
            gen: torch.Generator) -> dict[str, float]:
    """Top-loss vs random subsample gradient similarity on one full batch."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
    k = max(1, int(round(fraction * x.shape[0])))
    top = torch.topk(losses, k).indices
    rand = torch.randperm(x.shape[0], generator=gen)[:k]
    full = flat_grad(model, x, y)
    cos_top, sign_top = similarity(flat_grad(model, x[top], y[top]), full)
    cos_rand, sign_rand = similarity(flat_grad(model, x[rand], y[rand]), full)
    model.train(was_training)
    return {"cos_top": cos_top, "cos_random": cos_rand, "sign_top": sign_top,
            "sign_random": sign_rand, "loss_full": losses.mean().item()}


def run(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    data = build_data({"name": args.dataset, "root": args.root, "subset": args.subset or None}, args.seed)
    model = build_model(args.model, num_classes=data.num_classes, in_channels=data.in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    source = TorchSource(data.train, torch.device("cpu"), args.seed, PhaseTimer(torch.device("cpu")))
    gen = torch.Generator().manual_seed(args.seed)
    rows, step = [], 0
    for epoch in range(args.epochs):
        torch.manual_seed(derive_seed(args.seed, epoch, 3))
        for b in source.batches(source.permutation(epoch), args.batch_size, epoch):
            if step % args.every == 0:
                probe = torch.randint(len(source), (args.full_batch,), generator=gen)
                full = next(source.batches(probe, args.full_batch, epoch + 1000))
                row = {"step": step, "epoch": round(step * args.batch_size / len(source), 4),
                       **measure(model, full.x, full.y, args.fraction, gen)}
                rows.append(row)
                log.info("step %d: cos top %.3f random %.3f | sign top %.3f random %.3f", step,
                         row["cos_top"], row["cos_random"], row["sign_top"], row["sign_random"])
            model.train()
            loss = F.cross_entropy(model(b.x), b.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return rows


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in rows]
    for ax, key, label in ((axes[0], "cos", "cosine similarity to full batch"),
                           (axes[1], "sign", "fraction of weights with same sign")):
        ax.plot(epochs, [r[f"{key}_top"] for r in rows], label="top-loss subsample")
        ax.plot(epochs, [r[f"{key}_random"] for r in rows], label="random subsample")
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Fig 5: gradient similarity of subsampled batches")
    fig.tight_layout()
    paths = [out / "fig5_gradient_similarity.png", out / "fig5_gradient_similarity.pdf"]
    for path in paths:
        fig.savefig(path, dpi=120)
    return paths


@exits_on_bad_input
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="resnet8")
    p.add_argument("--root", default="data")
    p.add_argument("--subset", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--full-batch", type=int, default=512)
    p.add_argument("--fraction", type=float, default=1 / 3, help="subsample size as a fraction of the full batch")
    p.add_argument("--every", type=int, default=50, help="measure every this many SGD steps")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/gradient_similarity")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = check_output_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    with open(out / "gradient_similarity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print("\n".join(str(p) for p in plot(rows, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

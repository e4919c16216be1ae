#!/usr/bin/env python
"""Selective-Backprop dropped into a plain PyTorch loop (real Fashion-MNIST, CPU, ~1 minute).

    python examples/dropin_mnist.py [--epochs 2] [--subset 10000]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from selective_backprop import SelectiveBackprop
from selective_backprop.data import build_data
from selective_backprop.models import resnet8


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--root", default="data")
    args = p.parse_args()
    torch.manual_seed(0)
    data = build_data({"name": "fashion_mnist", "root": args.root, "subset": args.subset}, seed=0)
    loader = DataLoader(data.train, batch_size=128, shuffle=True)
    model = resnet8(num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    sb = SelectiveBackprop(selectivity=1 / 3, history=1024, batch_size=128, seed=0)
    for epoch in range(args.epochs):
        steps = 0
        for x, y in loader:
            for xb, yb in sb.select(model, x, y):      # zero or more full batches of 128 kept examples
                model.train()
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
        x_test, y_test = data.test_arrays()
        x_test = (x_test.float() / 255 - data.mean[0]) / data.std[0]
        model.eval()
        with torch.no_grad():
            error = (model(x_test).argmax(1) != y_test).float().mean().item()
        print(f"epoch {epoch}: {steps} backprop steps, kept {sb.kept}/{sb.seen} "
              f"({sb.kept / sb.seen:.1%}), test error {error:.4f}")


if __name__ == "__main__":
    main()

"""Fetch a dataset: ``python -m selective_backprop.data.download NAME --root DIR``.

Calls torchvision's dataset classes with ``download=True`` (CIFAR10/100: the tarball, extracted
into ``DIR/cifar-10-batches-py`` / ``DIR/cifar-100-python``; SVHN: ``DIR/{train,test,extra}_32x32.mat``).
Fashion-MNIST is copied from the Debian package ``dataset-fashion-mnist`` when it is installed,
otherwise downloaded, into ``DIR/FashionMNIST/raw``. Files already present and intact are kept.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from selective_backprop.data.datasets import DATASET_INFO, fetch
from selective_backprop.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m selective_backprop.data.download", description=__doc__.splitlines()[0]
    )
    p.add_argument("name", choices=sorted(DATASET_INFO), help="dataset to fetch")
    p.add_argument("--root", required=True, help="data folder (the config's dataset.root)")
    p.add_argument("--no-extra", action="store_true", help="svhn: skip the 531k-image 'extra' split")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fetch(args.name, args.root, extra=not args.no_extra)
    except ConfigError as exc:
        logging.getLogger(__name__).error("error: %s", exc)
        return 1
    logging.getLogger(__name__).info("%s is ready in %s", args.name, args.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Get Fashion-MNIST for `make demo` / the default config (called by `make setup`).

In order, the first that works:

1. Debian's `dataset-fashion-mnist` package files are present (or the data root already holds the
   decompressed files): nothing to do;
2. running as root with apt-get: `apt-get update` then `apt-get install -y dataset-fashion-mnist`;
3. torchvision's FashionMNIST download into the data root (`--root`, default `$SB_DATA_ROOT` or
   `data`, the config's dataset.root), where the data loader reads it (`ROOT/FashionMNIST/raw/`);
4. otherwise one line saying exactly what to run.

Always exits 0 (a machine without the data can still install and run the tests that need none);
`make demo` then stops with a one-line ERROR naming what is missing.

    python scripts/get_data.py [--root DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from selective_backprop.data import fashion_mnist_debian as fmd  # noqa: E402
from selective_backprop.errors import ConfigError  # noqa: E402

log = logging.getLogger("get_data")
PACKAGE = "dataset-fashion-mnist"


def debian_present() -> bool:
    """All four `.gz` files of the Debian package are in its folder (or $SB_FASHION_MNIST_DIR)."""
    return all((fmd.debian_dir() / f"{name}.gz").is_file() for name in fmd.IDX_FILES)


def can_apt() -> bool:
    """Running as root on a machine with apt-get."""
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install() -> bool:
    """`apt-get update` + `apt-get install -y dataset-fashion-mnist`; True when the files are then there."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGE]):
        log.info("running: %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, env=env, check=False)
        except OSError as exc:
            log.warning("%s failed: %s", cmd[0], exc)
            return False
        if done.returncode != 0:
            log.warning("'%s' exited with %d", " ".join(cmd), done.returncode)
            return False
    return debian_present()


def download(root: Path) -> bool:
    """torchvision's FashionMNIST download into `root` (validated like any copy); True on success."""
    from selective_backprop.data import fetch

    try:
        fetch("fashion_mnist", root)
    except ConfigError as exc:          # DataError: no network, a bad root, a corrupted download
        log.warning("download into %s failed: %s", root, exc)
        return False
    return fmd.raw_files_present(root)


def hint(root: Path) -> str:
    return (f"Fashion-MNIST is missing and could not be fetched here; run: sudo apt-get install {PACKAGE}  "
            f"(or, with internet: python -m selective_backprop.data.download fashion_mnist --root {root})")


def get_data(root: Path) -> str:
    """Make Fashion-MNIST available; returns how: debian | present | apt | download | missing."""
    if debian_present():
        log.info("Fashion-MNIST: Debian's %s is installed (%s); nothing to do", PACKAGE, fmd.debian_dir())
        return "debian"
    if fmd.raw_files_present(root):
        log.info("Fashion-MNIST: already in %s; nothing to do", fmd.raw_folder(root))
        return "present"
    if can_apt() and apt_install():
        log.info("Fashion-MNIST: installed Debian's %s", PACKAGE)
        return "apt"
    if download(root):
        log.info("Fashion-MNIST: downloaded into %s", fmd.raw_folder(root))
        return "download"
    print(hint(root), flush=True)
    return "missing"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path(os.environ.get("SB_DATA_ROOT") or "data"),
                   help="data folder for a download (the config's dataset.root; default $SB_DATA_ROOT or data)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    get_data(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

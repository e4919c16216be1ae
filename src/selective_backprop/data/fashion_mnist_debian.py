"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (no network needed).

The package ships ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
Debian re-compresses them, so torchvision's md5 of the upstream ``.gz`` files does not match; instead
this module checks the decompressed IDX files (magic number, count, 28×28, exact byte size) and puts
them where ``torchvision.datasets.FashionMNIST(root, download=False)`` looks: ``root/FashionMNIST/raw/``.
``SB_FASHION_MNIST_DIR`` overrides the Debian folder.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from selective_backprop.data.info import DATASET_INFO
from selective_backprop.errors import DataError

__all__ = [
    "DEBIAN_DIR",
    "ENV_VAR",
    "IDX_FILES",
    "IdxSpec",
    "debian_dir",
    "decompress_debian",
    "raw_folder",
    "raw_files_present",
    "validate_idx",
]

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "SB_FASHION_MNIST_DIR"


@dataclass(frozen=True)
class IdxSpec:
    """What a decompressed IDX file must look like."""

    magic: int
    count: int
    dims: tuple[int, ...]  # per-item dims after the count (28, 28) for images, () for labels

    @property
    def header_size(self) -> int:
        return 4 * (2 + len(self.dims))

    @property
    def size(self) -> int:
        item = 1
        for d in self.dims:
            item *= d
        return self.header_size + self.count * item


_INFO = DATASET_INFO["fashion_mnist"]          # 60 000 / 10 000 images of 28×28
IDX_FILES: dict[str, IdxSpec] = {
    "train-images-idx3-ubyte": IdxSpec(2051, _INFO.train_size, _INFO.image_size),  # 47,040,016 bytes
    "train-labels-idx1-ubyte": IdxSpec(2049, _INFO.train_size, ()),  # 60,008 bytes
    "t10k-images-idx3-ubyte": IdxSpec(2051, _INFO.test_size, _INFO.image_size),  # 7,840,016 bytes
    "t10k-labels-idx1-ubyte": IdxSpec(2049, _INFO.test_size, ()),  # 10,008 bytes
}


def debian_dir() -> Path:
    """The folder with the Debian ``.gz`` files (``$SB_FASHION_MNIST_DIR`` or the package's)."""
    return Path(os.environ.get(ENV_VAR) or DEBIAN_DIR)


def raw_folder(root: Path) -> Path:
    """Where torchvision's FashionMNIST reads the decompressed files."""
    return Path(root) / "FashionMNIST" / "raw"


def raw_files_present(root: Path) -> bool:
    """All four decompressed IDX files exist in ``root/FashionMNIST/raw``."""
    return all((raw_folder(root) / name).is_file() for name in IDX_FILES)


def validate_idx(path: Path, spec: IdxSpec, label: Path | None = None) -> None:
    """Raise DataError (naming ``label`` or ``path``) unless ``path`` is a well-formed IDX file."""
    name = label or path
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(spec.header_size)
    if len(header) < spec.header_size:
        raise DataError(
            f"dataset.root: Fashion-MNIST file '{name}' is truncated ({size} bytes, need {spec.size})"
        )
    magic, count, *dims = struct.unpack(f">{2 + len(spec.dims)}I", header)
    if (magic, count, tuple(dims)) != (spec.magic, spec.count, spec.dims):
        raise DataError(
            f"dataset.root: Fashion-MNIST file '{name}' has a bad IDX header "
            f"(magic {magic}, count {count}, dims {tuple(dims)}; expected magic {spec.magic}, "
            f"count {spec.count}, dims {spec.dims})"
        )
    if size != spec.size:
        raise DataError(
            f"dataset.root: Fashion-MNIST file '{name}' has {size} bytes, "
            f"expected {spec.size} (truncated or corrupted)"
        )


def _umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _decompress_one(src: Path, dst: Path, spec: IdxSpec) -> None:
    """Decompress ``src`` to ``dst`` atomically (temp file in dst's folder + rename), validating it."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as gz:
            shutil.copyfileobj(gz, out, length=1 << 20)
        validate_idx(tmp, spec, label=src)
        os.chmod(tmp, 0o666 & ~_umask())    # mkstemp makes 0600: a shared data root needs the umask's mode
        os.replace(tmp, dst)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"dataset.root: cannot decompress Fashion-MNIST file '{src}': {exc} (truncated or corrupted)"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def decompress_debian(root: Path, source: Path | None = None) -> bool:
    """Fill ``root/FashionMNIST/raw`` from the Debian ``.gz`` files; False if they are not there.

    Files already present in the raw folder are kept (and validated by the caller).
    """
    src_dir = source or debian_dir()
    sources = {name: src_dir / f"{name}.gz" for name in IDX_FILES}
    if not all(p.is_file() for p in sources.values()):
        return False
    dst_dir = raw_folder(root)
    dst_dir.mkdir(parents=True, exist_ok=True)
    log.info("decompressing Debian Fashion-MNIST from '%s' into '%s'", src_dir, dst_dir)
    for name, spec in IDX_FILES.items():
        if not (dst_dir / name).is_file():
            _decompress_one(sources[name], dst_dir / name, spec)
    return True

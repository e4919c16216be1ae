"""Image transforms: crop + flip + normalise + Cutout, on uint8 C×H×W tensors.

The per-example pipeline (:func:`build_transforms`) runs on the uint8 image tensors that
:class:`~selective_backprop.data.datasets.ImageArrayDataset` holds, in this order:

1. ``RandomCrop(size, padding=p)`` with zero fill (black pixels, i.e. before normalisation),
2. ``RandomHorizontalFlip()``,
3. uint8 → float32 in [0, 1] (what ``ToTensor`` does to a PIL image),
4. ``Normalize(mean, std)``,
5. :class:`Cutout` (DeVries & Taylor 2017, ``uoguelph-mlrg/Cutout`` ``util/cutout.py``):
   one length×length square, centre uniform over the whole image, clipped at the border,
   set to 0 on the normalised tensor.

Steps 1, 2 and 3+4 are light tensor re-implementations with torchvision's semantics (the tests
check the crop against torchvision's pad + crop): several times cheaper per example than
torchvision's transforms, which matters because they run once per example per epoch.

Every random draw uses torch's global RNG, so seeding torch (and DataLoader's per-worker
seeding) makes augmentation reproducible.

:func:`augment_batch` applies the same augmentation to a whole uint8 batch on any device, for a
device-resident loader that keeps ``DataBundle.train_arrays()`` on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import transforms as T

__all__ = [
    "Cutout",
    "RandomCropPad",
    "RandomHFlip",
    "ToFloatNormalize",
    "augment_batch",
    "batch_crop",
    "batch_cutout",
    "build_transforms",
    "cutout_bounds",
    "normalize_batch",
    "shift_crop",
]


class _Transform:
    """A plain callable transform (no nn.Module call overhead: this runs once per example)."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def cutout_bounds(center: int, length: int, extent: int) -> tuple[int, int]:
    """The [lo, hi) span of a Cutout square along one axis, clipped to [0, extent).

    Same arithmetic as DeVries' ``np.clip(c - length // 2, 0, h)``, ``np.clip(c + length // 2, 0, h)``.
    """
    half = length // 2
    return max(center - half, 0), min(center + half, extent)


class Cutout(_Transform):
    """Zero one length×length square (clipped at the border) of a normalised C×H×W tensor."""

    def __init__(self, length: int) -> None:
        if length < 0:
            raise ValueError(f"Cutout length must be >= 0, got {length}")
        self.length = int(length)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.length == 0:
            return img
        h, w = img.shape[-2:]
        cy, cx = divmod(int(torch.randint(h * w, (1,)).item()), w)  # centre uniform over all pixels
        y1, y2 = cutout_bounds(cy, self.length, h)
        x1, x2 = cutout_bounds(cx, self.length, w)
        out = img.clone()
        out[..., y1:y2, x1:x2] = 0
        return out

    def extra_repr(self) -> str:
        return f"length={self.length}"


class RandomCropPad(_Transform):
    """``RandomCrop(size=(H, W), padding=p)`` with zero fill, for C×H×W tensors (same output size).

    Equal to zero-padding by ``p`` on every side and cropping H×W at an offset drawn uniformly from
    [0, 2p] in each axis, in one (negative/positive) constant pad: several times cheaper than torchvision's.
    """

    def __init__(self, padding: int) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            return img
        oy, ox = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        return shift_crop(img, oy - self.padding, ox - self.padding)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"


def shift_crop(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., r, c] = img[..., r + dy, c + dx] where that pixel exists, else 0 (same size)."""
    return torch.nn.functional.pad(img, (-dx, dx, -dy, dy), mode="constant", value=0)


class RandomHFlip(_Transform):
    """Mirror left-right with probability ``p`` (torchvision's ``RandomHorizontalFlip`` rule)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.flip(-1) if torch.rand(1).item() < self.p else img

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ToFloatNormalize(_Transform):
    """``ToTensor`` + ``Normalize(mean, std)`` fused: uint8 C×H×W → (x / 255 − mean) / std, float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.to(torch.float32).mul_(self.scale).sub_(self.shift)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def build_transforms(
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int = 0,
    hflip: bool = False,
    cutout: int = 0,
) -> tuple[T.Compose, T.Compose]:
    """(train transform, test transform) for uint8 C×H×W tensors; crops keep each image's size."""
    train: list[_Transform] = []
    if crop_padding > 0:
        train.append(RandomCropPad(crop_padding))
    if hflip:
        train.append(RandomHFlip())
    train.append(ToFloatNormalize(mean, std))
    if cutout > 0:
        train.append(Cutout(cutout))
    return T.Compose(train), T.Compose([ToFloatNormalize(mean, std)])


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B,C,H,W] → normalised float32 [B,C,H,W] on the same device."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - m) / s


def _randint(high: int, n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(high, (n,), generator=generator, device=gen_device).to(device)


def batch_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Per image, a random H×W crop of the `pad`-zero-padded [B,C,H,W] batch (offsets drawn from `generator`)."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    oy = _randint(2 * pad + 1, b, images.device, generator)
    ox = _randint(2 * pad + 1, b, images.device, generator)
    rows = (oy[:, None] + torch.arange(h, device=images.device)).view(b, 1, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=images.device)).view(b, 1, 1, w)
    bi = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    ci = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[bi, ci, rows, cols]


def batch_cutout(x: torch.Tensor, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """Cutout per image of the [B,C,H,W] batch: a `length`² square around a random centre set to 0 (clipped)."""
    b, _, h, w = x.shape
    half = length // 2
    cy = _randint(h, b, x.device, generator).view(b, 1, 1, 1)
    cx = _randint(w, b, x.device, generator).view(b, 1, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)
    return x.masked_fill(inside, 0.0)


def augment_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int = 0,
    hflip: bool = False,
    cutout: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Batched version of the train transform: uint8 [B,C,H,W] → augmented, normalised float32.

    Same semantics per example as :func:`build_transforms` (independent crop offset, flip and
    Cutout square per example), but drawn from ``generator`` in a different order, so the values
    differ from the per-example pipeline for the same seed.
    """
    x = images
    if crop_padding > 0:
        x = batch_crop(x, crop_padding, generator)
    if hflip:
        gen_device = generator.device if generator is not None else x.device
        flip = (torch.rand(x.shape[0], generator=generator, device=gen_device) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    out = normalize_batch(x, mean, std)
    if cutout > 0:
        out = batch_cutout(out, cutout, generator)
    return out

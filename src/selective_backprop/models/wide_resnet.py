"""Wide ResNet (Zagoruyko & Komodakis, 2016), CIFAR variant as in Cutout / Selective-Backprop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3, dropout, BN-ReLU-conv3x3, plus shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.dropout = nn.Dropout(p=dropout)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return block(x) + shortcut(x); a projection shortcut sees the pre-activated input."""
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        skip = x if self.shortcut is None else self.shortcut(act)
        return out + skip


def _group(in_planes: int, out_planes: int, n: int, stride: int, dropout: float) -> nn.Sequential:
    """Stack ``n`` wide blocks; only the first one changes width / resolution."""
    blocks = [WideBasicBlock(in_planes, out_planes, stride, dropout)]
    blocks += [WideBasicBlock(out_planes, out_planes, 1, dropout) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem (16), three groups of widths 16k, 32k, 64k, BN-ReLU, pool, linear."""

    def __init__(
        self, depth: int, widen_factor: int, dropout: float, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(
                f"wide_resnet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}"
            )
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _group(widths[0], widths[1], n, 1, dropout)
        self.block2 = _group(widths[1], widths[2], n, 2, dropout)
        self.block3 = _group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0, linear bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N x C x H x W images to N x num_classes logits."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.fc(torch.flatten(out, 1))


def wide_resnet(
    depth: int, widen_factor: int, dropout: float, num_classes: int = 10, in_channels: int = 3
) -> WideResNet:
    """Build a WRN-``depth``-``widen_factor`` with the given dropout between the block convs."""
    return WideResNet(depth, widen_factor, dropout, num_classes, in_channels)


def wrn28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.3) -> WideResNet:
    """WRN-28-10 (about 36.5M parameters at 10 classes), the paper's CIFAR-10/100 model."""
    return wide_resnet(28, 10, dropout, num_classes, in_channels)


def wrn16_8(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.4) -> WideResNet:
    """WRN-16-8 (about 11.0M parameters at 10 classes), the paper's SVHN model."""
    return wide_resnet(16, 8, dropout, num_classes, in_channels)

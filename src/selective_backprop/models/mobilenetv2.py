"""CIFAR MobileNetV2 (Sandler et al., 2018) as in kuangliu/pytorch-cifar."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion, out_planes, num_blocks, stride); the second stage's stride is 1 (ImageNet: 2)
# because CIFAR images are 32x32 and the stem also keeps stride 1.
_CFG: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear); residual when stride is 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the projected features, plus the shortcut when the resolution is kept."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: 3x3 stride-1 stem, inverted residuals, 1x1 conv to 1280, pool, linear."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.layers = _make_layers(32)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N x C x H x W images to N x num_classes logits."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


def _make_layers(in_planes: int) -> nn.Sequential:
    """Build the inverted-residual stages from ``_CFG``."""
    blocks = []
    for expansion, out_planes, n, stride in _CFG:
        for s in [stride] + [1] * (n - 1):
            blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
            in_planes = out_planes
    return nn.Sequential(*blocks)


def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    """CIFAR MobileNetV2 (stride 1 in the stem and in the second stage)."""
    return MobileNetV2(num_classes, in_channels)

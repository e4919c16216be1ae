"""CIFAR DenseNet-121 (Huang et al., 2017) as in kuangliu/pytorch-cifar."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """DenseNet-BC layer: BN-ReLU-conv1x1 (4g), BN-ReLU-conv3x3 (g), concatenated to the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return cat([new_features, x]) along channels."""
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 compression followed by 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compress channels and halve the resolution."""
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


def _dense_block(in_planes: int, growth_rate: int, n: int) -> nn.Sequential:
    """Stack ``n`` bottleneck layers, each adding ``growth_rate`` channels."""
    return nn.Sequential(*[Bottleneck(in_planes + i * growth_rate, growth_rate) for i in range(n)])


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC: 3x3 stem (2g), dense blocks + transitions, BN-ReLU, pool, linear."""

    def __init__(
        self,
        num_blocks: list[int],
        growth_rate: int,
        reduction: float,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(num_blocks):
            stages.append(_dense_block(planes, growth_rate, n))
            planes += n * growth_rate
            if i < len(num_blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N x C x H x W images to N x num_classes logits."""
        out = self.features(self.conv1(x))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


def densenet121(num_classes: int = 10, in_channels: int = 3, growth_rate: int = 32) -> DenseNet:
    """CIFAR DenseNet-121: blocks [6, 12, 24, 16], bottleneck layers, reduction 0.5."""
    return DenseNet([6, 12, 24, 16], growth_rate, 0.5, num_classes, in_channels)

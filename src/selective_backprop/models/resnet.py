"""CIFAR ResNets (He et al., 2016): ResNet-18 as in kuangliu/pytorch-cifar and a small ResNet-8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, add shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(block(x) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, BasicBlock stages, global pool, linear."""

    def __init__(
        self,
        num_blocks: list[int],
        widths: list[int],
        strides: list[int],
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for n, width, stride in zip(num_blocks, widths, strides):
            stages.append(_stage(in_planes, width, n, stride))
            in_planes = width
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N x C x H x W images to N x num_classes logits."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
    """Stack ``n`` basic blocks; only the first one changes width / resolution."""
    blocks = [BasicBlock(in_planes, planes, stride)]
    blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-18: BasicBlock [2, 2, 2, 2], widths 64..512 (11,173,962 params, 10 classes)."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], [1, 2, 2, 2], num_classes, in_channels)


def resnet8(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> ResNet:
    """Small CPU-scale ResNet-8: stem + one BasicBlock per stage (w, 2w, 4w), pool, linear."""
    return ResNet([1, 1, 1], [width, 2 * width, 4 * width], [1, 2, 2], num_classes, in_channels)

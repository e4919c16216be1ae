"""Model zoo: CIFAR variants of the architectures used by Selective-Backprop, plus a registry."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from selective_backprop.errors import ConfigError
from selective_backprop.models.densenet import densenet121
from selective_backprop.models.mobilenetv2 import mobilenetv2
from selective_backprop.models.resnet import resnet8, resnet18
from selective_backprop.models.wide_resnet import wide_resnet, wrn16_8, wrn28_10

MODELS: dict[str, Callable[..., nn.Module]] = {
    "wrn28_10": wrn28_10,
    "wrn16_8": wrn16_8,
    "wide_resnet": wide_resnet,
    "resnet18": resnet18,
    "resnet8": resnet8,
    "densenet121": densenet121,
    "mobilenetv2": mobilenetv2,
}


def build_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; raise ConfigError naming model.name if unknown."""
    if name not in MODELS:
        accepted = ", ".join(sorted(MODELS))
        raise ConfigError(f"model.name: unknown model {name!r}; accepted: {accepted}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = [
    "MODELS",
    "build_model",
    "densenet121",
    "mobilenetv2",
    "resnet8",
    "resnet18",
    "wide_resnet",
    "wrn16_8",
    "wrn28_10",
]

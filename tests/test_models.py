"""Tests for the model zoo: shapes, parameter counts, dropout, errors and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selective_backprop.errors import ConfigError
from selective_backprop.models import (
    MODELS,
    build_model,
    resnet8,
    resnet18,
    wide_resnet,
    wrn16_8,
    wrn28_10,
)

# Small extra kwargs so the generic factory is buildable from the registry.
_EXTRA: dict[str, dict[str, object]] = {
    "wide_resnet": {"depth": 10, "widen_factor": 2, "dropout": 0.0}
}


def _num_params(model: nn.Module) -> int:
    """Count all trainable parameters."""
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    ("channels", "size", "num_classes"), [(3, 32, 10), (3, 32, 100), (1, 28, 10)]
)
def test_forward_shape(name: str, channels: int, size: int, num_classes: int) -> None:
    """Every registry model maps 2 x C x H x W to 2 x num_classes finite logits."""
    torch.manual_seed(0)
    model = build_model(name, num_classes, channels, **_EXTRA.get(name, {})).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_resnet18_param_count() -> None:
    """The CIFAR ResNet-18 has the well-known 11,173,962 parameters."""
    assert _num_params(resnet18(num_classes=10, in_channels=3)) == 11_173_962


def test_wrn28_10_param_count() -> None:
    """WRN-28-10 matches the hand count (n = 4 blocks per group, widths 16/160/320/640)."""
    # stem conv 3*16*9                                                    =        432
    # group1: first block  bn(16)=32 + 16*160*9=23,040 + bn(160)=320
    #                      + 160*160*9=230,400 + shortcut 16*160=2,560    =    256,352
    #         3 x [bn 320 + 230,400 + bn 320 + 230,400] = 3 x 461,440     =  1,384,320
    # group2: first block  bn 320 + 160*320*9=460,800 + bn 640
    #                      + 320*320*9=921,600 + shortcut 160*320=51,200  =  1,434,560
    #         3 x [640 + 921,600 + 640 + 921,600] = 3 x 1,844,480         =  5,533,440
    # group3: first block  bn 640 + 320*640*9=1,843,200 + bn 1,280
    #                      + 640*640*9=3,686,400 + shortcut 320*640=204,800 = 5,736,320
    #         3 x [1,280 + 3,686,400 + 1,280 + 3,686,400] = 3 x 7,375,360 = 22,126,080
    # final bn(640) = 1,280; fc 640*10 + 10 = 6,410
    # total = 36,479,194
    expected = 36_479_194
    assert abs(_num_params(wrn28_10()) - expected) <= 0.01 * expected


def test_wrn16_8_param_count() -> None:
    """WRN-16-8 matches the hand count (n = 2 blocks per group, widths 16/128/256/512)."""
    # stem conv 3*16*9                                                     =       432
    # group1: first  32 + 16*128*9=18,432 + 256 + 128*128*9=147,456
    #                + shortcut 16*128=2,048                               =   168,224
    #         second 256 + 147,456 + 256 + 147,456                         =   295,424
    # group2: first  256 + 128*256*9=294,912 + 512 + 256*256*9=589,824
    #                + shortcut 128*256=32,768                             =   918,272
    #         second 512 + 589,824 + 512 + 589,824                         = 1,180,672
    # group3: first  512 + 256*512*9=1,179,648 + 1,024 + 512*512*9=2,359,296
    #                + shortcut 256*512=131,072                            = 3,671,552
    #         second 1,024 + 2,359,296 + 1,024 + 2,359,296                 = 4,720,640
    # final bn(512) = 1,024; fc 512*10 + 10 = 5,130
    # total = 10,961,370
    expected = 10_961_370
    assert abs(_num_params(wrn16_8()) - expected) <= 0.01 * expected


def test_resnet8_is_small() -> None:
    """ResNet-8 at width 16 stays under 100k parameters."""
    assert _num_params(resnet8(num_classes=10, in_channels=1, width=16)) < 100_000


@pytest.mark.parametrize(("factory", "p"), [(wrn28_10, 0.3), (wrn16_8, 0.4)])
def test_wrn_dropout(factory, p: float) -> None:
    """WRN dropout has the paper's rate, is stochastic in train mode and off in eval mode."""
    torch.manual_seed(0)
    model = factory()
    rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    assert rates == {p}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_wide_resnet_bad_depth() -> None:
    """A depth that is not 6n+4 raises a ValueError naming the depth."""
    with pytest.raises(ValueError, match="27"):
        wide_resnet(depth=27, widen_factor=2, dropout=0.0)


def test_build_model_unknown_name() -> None:
    """An unknown name raises ConfigError naming the field and the accepted names."""
    with pytest.raises(ConfigError) as info:
        build_model("nope", num_classes=10, in_channels=3)
    message = str(info.value)
    assert "model.name" in message and "nope" in message and "resnet8" in message
    assert "\n" not in message


def test_build_model_passes_kwargs() -> None:
    """Extra kwargs reach the factory."""
    model = build_model("resnet8", num_classes=7, in_channels=1, width=8)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert _num_params(model) < _num_params(resnet8(num_classes=7, in_channels=1))


def test_resnet8_backward_finite() -> None:
    """A backward pass through ResNet-8 gives finite gradients for every parameter."""
    torch.manual_seed(0)
    model = resnet8(num_classes=10, in_channels=1).train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name

"""Building blocks shared by the op families (conv-bn-act, squeeze-excitation, shortcuts)."""

from __future__ import annotations

import torch
from torch import nn

from lana.spec import OpSpec


def hidden_width(channels: int, ratio: float, divisor: int = 1) -> int:
    """``channels * ratio`` rounded to a multiple of ``divisor``, at least ``divisor``."""
    value = max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)
    return value


def same_shape(spec: OpSpec) -> bool:
    return spec.in_shape == spec.out_shape and spec.stride == 1


class ConvBnAct(nn.Sequential):
    """Conv2d (padding keeps the size up to the stride) + BatchNorm + optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act is not None:
            self.act = act()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with ``reduced`` bottleneck channels."""

    def __init__(self, channels: int, reduced: int, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(s))))


class Residual(nn.Module):
    """``body(x) + shortcut(x)``, then an optional activation.

    The shortcut is the identity when the shapes match and absent otherwise (``project=False``), or a
    strided 1x1 conv-bn projection (``project=True``), so a downsampling op still maps in to out.
    """

    def __init__(self, body: nn.Module, spec: OpSpec, *, project: bool = False,
                 act: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.body = body
        cin, cout = spec.in_shape[0], spec.out_shape[0]
        if spec.in_shape == spec.out_shape and spec.stride == 1:
            self.shortcut: nn.Module | None = nn.Identity()
        elif project:
            self.shortcut = ConvBnAct(cin, cout, 1, spec.stride, act=None)
        else:
            self.shortcut = None
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


class Resize(nn.Module):
    """Nearest-neighbour resize to a fixed spatial size (exports to ONNX ``Resize``)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return nn.functional.interpolate(x, size=self.size, mode="nearest")


def spatial_pool(stride: int) -> nn.Module:
    """Average pooling by ``stride`` (ceil mode, so odd sizes map like a padded strided conv)."""
    if stride == 1:
        return nn.Identity()
    return nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)

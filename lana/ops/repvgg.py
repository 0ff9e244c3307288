"""RepVGG blocks: kxk + 1x1 + identity branches while training, one fused kxk conv when deployed.

Width ``w`` sets the hidden channels (relative to the output channels); when they differ from the
output a 1x1 conv-bn projects back.  Ranges as the dense blocks (k, w).  Exports and latency are taken
on the fused (deploy) form, the form a user ships; :func:`lana.ops.deploy` performs the fusion.
"""

from __future__ import annotations

import torch
from torch import nn

from lana.ops._blocks import ConvBnAct, hidden_width
from lana.ops._registry import register_family
from lana.ops.dense import dense_variants
from lana.spec import OpSpec


def _fuse_conv_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGUnit(nn.Module):
    """One RepVGG unit (cin -> cout, kxk, stride) with a :meth:`fuse` to a single conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.dense = ConvBnAct(cin, cout, kernel, stride, act=None)
        self.point = ConvBnAct(cin, cout, 1, stride, act=None) if kernel > 1 else None
        self.skip = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.fused: nn.Conv2d | None = None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.dense(x)
        if self.point is not None:
            y = y + self.point(x)
        if self.skip is not None:
            y = y + self.skip(x)
        return self.act(y)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the branches into one kxk conv (exact in eval mode)."""
        conv = self.dense.conv
        weight, bias = _fuse_conv_bn(conv.weight, self.dense.bn)
        pad = self.kernel // 2
        if self.point is not None:
            w1, b1 = _fuse_conv_bn(self.point.conv.weight, self.point.bn)
            weight = weight + nn.functional.pad(w1, [pad, pad, pad, pad])
            bias = bias + b1
        if self.skip is not None:
            ident = torch.zeros_like(conv.weight)
            for c in range(ident.shape[0]):
                ident[c, c, pad, pad] = 1.0
            wi, bi = _fuse_conv_bn(ident, self.skip)
            weight, bias = weight + wi, bias + bi
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, self.kernel, self.stride, pad)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.fused = fused
        del self.dense, self.point, self.skip
        self.dense = self.point = self.skip = None  # type: ignore[assignment]


class RepVGGOp(nn.Sequential):
    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        cin, cout = spec.in_shape[0], spec.out_shape[0]
        k = int(spec.param("k"))
        mid = hidden_width(cout, float(spec.param("w")))
        self.unit = RepVGGUnit(cin, mid, k, spec.stride)
        if mid != cout:
            self.project = ConvBnAct(mid, cout, 1, act=None)


register_family("repvgg", variants=dense_variants, paper_name="RepVGG",
                description="RepVGG unit (kxk+1x1+identity, fused for deployment)")(RepVGGOp)

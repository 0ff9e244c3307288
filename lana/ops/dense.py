"""Dense convolution blocks: ``cb_stack``, ``cb_bottle``, ``cb_res`` and ``conv_cs``.

C = conv, B = batch norm, R = ReLU.  Width ``w`` scales the hidden channels relative to the layer's
output channels; kernel ``k`` is the spatial kernel.  Paper ranges: k in {1, 3, 5, 7},
w in {1/16, 1/10, 1/8, 1/5, 1/4, 1/2, 1, 2, 3, 4}.  The full pool takes every width at k = 3 and
w in {1/4, 1/2, 1, 2} at the other kernels, keeping the pool near the paper's 197 ops per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from lana.ops._blocks import ConvBnAct, Residual, hidden_width
from lana.ops._registry import register_family
from lana.spec import OpSpec, Shape

KERNELS = (1, 3, 5, 7)
WIDTHS = (1 / 16, 1 / 10, 1 / 8, 1 / 5, 1 / 4, 1 / 2, 1, 2, 3, 4)
SIDE_WIDTHS = (1 / 4, 1 / 2, 1, 2)


def dense_variants(in_shape: Shape, out_shape: Shape, stride: int):
    for k in KERNELS:
        for w in WIDTHS if k == 3 else SIDE_WIDTHS:
            yield {"k": k, "w": w}


def _kw(spec: OpSpec) -> tuple[int, int, int, int]:
    cin, cout = spec.in_shape[0], spec.out_shape[0]
    return cin, cout, int(spec.param("k")), hidden_width(cout, float(spec.param("w")))


def build_cb_stack(spec: OpSpec) -> nn.Module:
    """CBR-CB: two stacked kxk convolutions, residual when shapes match."""
    cin, cout, k, mid = _kw(spec)
    body = nn.Sequential(ConvBnAct(cin, mid, k, spec.stride), ConvBnAct(mid, cout, k, act=None))
    return Residual(body, spec)


def build_cb_bottle(spec: OpSpec) -> nn.Module:
    """CBR-CBR-CB bottleneck: 1x1 reduce, kxk, 1x1 expand."""
    cin, cout, k, mid = _kw(spec)
    body = nn.Sequential(ConvBnAct(cin, mid, 1), ConvBnAct(mid, mid, k, spec.stride),
                         ConvBnAct(mid, cout, 1, act=None))
    return Residual(body, spec)


def build_cb_res(spec: OpSpec) -> nn.Module:
    """CB pair with a (projected when needed) shortcut and ReLU after the sum: a residual unit."""
    cin, cout, k, mid = _kw(spec)
    body = nn.Sequential(ConvBnAct(cin, mid, k, spec.stride, act=None),
                         ConvBnAct(mid, cout, 1, act=None))
    return Residual(body, spec, project=True, act=nn.ReLU)


class CrossStage(nn.Module):
    """Channel-split CBR pairs: a kxk CBR pair on one path, a 1x1 CBR on the other, 1x1 CB fuse."""

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        cin, cout, k, mid = _kw(spec)
        half = max(1, mid // 2)
        self.main = nn.Sequential(ConvBnAct(cin, half, k, spec.stride), ConvBnAct(half, half, k))
        self.side = ConvBnAct(cin, half, 1, spec.stride)
        self.fuse = ConvBnAct(2 * half, cout, 1, act=None)
        self.residual = spec.in_shape == spec.out_shape and spec.stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fuse(torch.cat([self.main(x), self.side(x)], dim=1))
        return y + x if self.residual else y


register_family("cb_stack", variants=dense_variants, description="CBR-CB stacked kxk convs",
                paper_name="cb_stack")(build_cb_stack)
register_family("cb_bottle", variants=dense_variants, description="CBR-CBR-CB bottleneck",
                paper_name="cb_bottle")(build_cb_bottle)
register_family("cb_res", variants=dense_variants, description="CB pair + shortcut, ReLU",
                paper_name="cb_res")(build_cb_res)
register_family("conv_cs", variants=dense_variants,
                description="channel-split CBR pairs fused by 1x1 CB",
                paper_name="conv_cs")(CrossStage)

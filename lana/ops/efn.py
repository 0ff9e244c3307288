"""Inverted residual blocks: ``efn`` (MBConv, depthwise) and ``efnv2`` (FusedMBConv).

Paper ranges: expansion e in {1, 3, 6}, squeeze-excitation ratio se in {none, 0.04, 0.025} (relative to
the expanded width), kernel k in {1, 3, 5}.
"""

from __future__ import annotations

import itertools

from torch import nn

from lana.ops._blocks import ConvBnAct, Residual, SqueezeExcite, hidden_width
from lana.ops._registry import register_family
from lana.spec import OpSpec, Shape

EXPANSIONS = (1, 3, 6)
SE_RATIOS = (None, 0.04, 0.025)
KERNELS = (1, 3, 5)


def _se(channels: int, ratio: float | None) -> nn.Module:
    if ratio is None:
        return nn.Identity()
    return SqueezeExcite(channels, hidden_width(channels, ratio))


def build_mbconv(spec: OpSpec) -> nn.Module:
    cin, cout = spec.in_shape[0], spec.out_shape[0]
    e, k = int(spec.param("e")), int(spec.param("k"))
    mid = cin * e
    layers: list[nn.Module] = []
    if e != 1:
        layers.append(ConvBnAct(cin, mid, 1, act=nn.SiLU))
    layers += [ConvBnAct(mid, mid, k, spec.stride, groups=mid, act=nn.SiLU),
               _se(mid, spec.param("se")),
               ConvBnAct(mid, cout, 1, act=None)]
    return Residual(nn.Sequential(*layers), spec)


def build_fused_mbconv(spec: OpSpec) -> nn.Module:
    cin, cout = spec.in_shape[0], spec.out_shape[0]
    e, k = int(spec.param("e")), int(spec.param("k"))
    if e == 1:
        body = nn.Sequential(ConvBnAct(cin, cout, k, spec.stride, act=nn.SiLU),
                             _se(cout, spec.param("se")))
    else:
        mid = cin * e
        body = nn.Sequential(ConvBnAct(cin, mid, k, spec.stride, act=nn.SiLU),
                             _se(mid, spec.param("se")),
                             ConvBnAct(mid, cout, 1, act=None))
    return Residual(body, spec)


def inverted_residual_variants(in_shape: Shape, out_shape: Shape, stride: int):
    for e, se, k in itertools.product(EXPANSIONS, SE_RATIOS, KERNELS):
        yield {"e": e, "se": se, "k": k}


register_family("efn", variants=inverted_residual_variants, paper_name="efn",
                description="MBConv: 1x1 expand, depthwise kxk, SE, 1x1 project")(build_mbconv)
register_family("efnv2", variants=inverted_residual_variants, paper_name="efnv2",
                description="FusedMBConv: kxk expand, SE, 1x1 project")(build_fused_mbconv)

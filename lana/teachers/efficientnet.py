"""EfficientNet (V1) teachers B0-B6, and the blocks every EfficientNet-style teacher is built from.

The blocks (depthwise-separable ``ds``, inverted residual / MBConv ``ir``, edge residual /
FusedMBConv ``er``, conv-bn-act ``cn``) and the network skeleton (``conv_stem``/``bn1`` ->
``blocks.{stage}.{index}`` -> ``conv_head``/``bn2`` -> pool -> ``classifier``) use timm's module
and parameter names, and the compound scaling reproduces timm's ``round_channels`` and
``decode_arch_def`` rounding, so a timm state_dict of the same model loads with
``load_state_dict(strict=True)``.

Order in this file: helpers, blocks, the network, the scaling rules, the registered variants.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lana.teachers import register_teacher

# ---------------------------------------------------------------------------------------------
# Helpers


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10 % below it."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding (asymmetric for even-sized strided inputs).

    Used by the ``tf_`` ports so their weights give the outputs they were trained with.  The pad
    is computed from the input size on every call, which ONNX tracing turns into constants.
    """

    def _pads(self, ih: int, iw: int) -> list[int]:
        pads = []
        for size, k, s, d in zip((iw, ih), self.kernel_size[::-1], self.stride[::-1],
                                 self.dilation[::-1]):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # An exported graph has a fixed input size, so baking the pad in is intended.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                pads = [int(p) for p in self._pads(*x.shape[-2:])]
        else:
            pads = self._pads(*x.shape[-2:])
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def create_conv2d(in_chs: int, out_chs: int, kernel_size: int, *, stride: int = 1,
                  groups: int = 1, bias: bool = False, tf_same: bool = False) -> nn.Conv2d:
    """A conv with PyTorch-style symmetric padding, or TF ``SAME`` padding where it differs."""
    if tf_same and (stride > 1 or (kernel_size - 1) % 2):
        return Conv2dSame(in_chs, out_chs, kernel_size, stride, 0, groups=groups, bias=bias)
    padding = ((stride - 1) + (kernel_size - 1)) // 2
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=bias)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an activation; its state_dict keys are plain BatchNorm2d's."""

    def __init__(self, num_features: int, act: bool = True, eps: float = 1e-5,
                 act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__(num_features, eps=eps)
        self.act = act_layer(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


# ---------------------------------------------------------------------------------------------
# Blocks


@dataclass(frozen=True)
class BlockCfg:
    """One block of an EfficientNet-style network, after scaling."""

    kind: str  # "ds" depthwise-separable, "ir" MBConv, "er" FusedMBConv, "cn" conv-bn-act
    in_chs: int  # input channels
    out_chs: int  # output channels
    kernel: int  # kernel of the spatial conv
    stride: int  # 1 or 2
    exp_ratio: float = 1.0  # expansion of the hidden width (ir, er)
    se_ratio: float = 0.0  # squeeze-excite width relative to the block input (0: no SE)
    skip: bool = True  # residual connection where shapes allow (``cn`` only when asked)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation on ``chs`` channels with a ``rd_chs`` bottleneck."""

    def __init__(self, chs: int, rd_chs: int, act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(s))))


def _se(chs: int, cfg: BlockCfg, act_layer: type[nn.Module]) -> nn.Module:
    # timm sizes the SE bottleneck from the block input: round(hidden * se_ratio / exp_ratio).
    if not cfg.se_ratio:
        return nn.Identity()
    return SqueezeExcite(chs, round(chs * cfg.se_ratio / cfg.exp_ratio), act_layer)


class DepthwiseSeparableConv(nn.Module):
    """``ds``: depthwise conv, SE, pointwise projection (EfficientNet's first stage)."""

    def __init__(self, cfg: BlockCfg, act_layer: type[nn.Module] = nn.SiLU, eps: float = 1e-5,
                 tf_same: bool = False) -> None:
        super().__init__()
        c = cfg.in_chs
        self.has_skip = cfg.skip and cfg.stride == 1 and cfg.in_chs == cfg.out_chs
        self.conv_dw = create_conv2d(c, c, cfg.kernel, stride=cfg.stride, groups=c, tf_same=tf_same)
        self.bn1 = BatchNormAct2d(c, eps=eps, act_layer=act_layer)
        self.se = _se(c, cfg, act_layer)
        self.conv_pw = create_conv2d(c, cfg.out_chs, 1, tf_same=tf_same)
        self.bn2 = BatchNormAct2d(cfg.out_chs, act=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """``ir`` (MBConv): pointwise expansion, depthwise conv, SE, pointwise linear projection."""

    def __init__(self, cfg: BlockCfg, act_layer: type[nn.Module] = nn.SiLU, eps: float = 1e-5,
                 tf_same: bool = False) -> None:
        super().__init__()
        mid = make_divisible(cfg.in_chs * cfg.exp_ratio)
        self.has_skip = cfg.skip and cfg.stride == 1 and cfg.in_chs == cfg.out_chs
        self.conv_pw = create_conv2d(cfg.in_chs, mid, 1, tf_same=tf_same)
        self.bn1 = BatchNormAct2d(mid, eps=eps, act_layer=act_layer)
        self.conv_dw = create_conv2d(mid, mid, cfg.kernel, stride=cfg.stride, groups=mid,
                                     tf_same=tf_same)
        self.bn2 = BatchNormAct2d(mid, eps=eps, act_layer=act_layer)
        self.se = _se(mid, cfg, act_layer)
        self.conv_pwl = create_conv2d(mid, cfg.out_chs, 1, tf_same=tf_same)
        self.bn3 = BatchNormAct2d(cfg.out_chs, act=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        out = self.bn3(self.conv_pwl(self.se(out)))
        return out + x if self.has_skip else out


class EdgeResidual(nn.Module):
    """``er`` (FusedMBConv): full k x k expansion conv, SE, pointwise linear projection."""

    def __init__(self, cfg: BlockCfg, act_layer: type[nn.Module] = nn.SiLU, eps: float = 1e-5,
                 tf_same: bool = False) -> None:
        super().__init__()
        mid = make_divisible(cfg.in_chs * cfg.exp_ratio)
        self.has_skip = cfg.skip and cfg.stride == 1 and cfg.in_chs == cfg.out_chs
        self.conv_exp = create_conv2d(cfg.in_chs, mid, cfg.kernel, stride=cfg.stride,
                                      tf_same=tf_same)
        self.bn1 = BatchNormAct2d(mid, eps=eps, act_layer=act_layer)
        self.se = _se(mid, cfg, act_layer)
        self.conv_pwl = create_conv2d(mid, cfg.out_chs, 1, tf_same=tf_same)
        self.bn2 = BatchNormAct2d(cfg.out_chs, act=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pwl(self.se(self.bn1(self.conv_exp(x)))))
        return out + x if self.has_skip else out


class ConvBnAct(nn.Module):
    """``cn``: a single k x k conv, BN, activation; residual only when the config asks for it."""

    def __init__(self, cfg: BlockCfg, act_layer: type[nn.Module] = nn.SiLU, eps: float = 1e-5,
                 tf_same: bool = False) -> None:
        super().__init__()
        self.has_skip = cfg.skip and cfg.stride == 1 and cfg.in_chs == cfg.out_chs
        self.conv = create_conv2d(cfg.in_chs, cfg.out_chs, cfg.kernel, stride=cfg.stride,
                                  tf_same=tf_same)
        self.bn1 = BatchNormAct2d(cfg.out_chs, eps=eps, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv(x))
        return out + x if self.has_skip else out


BLOCKS = {"ds": DepthwiseSeparableConv, "ir": InvertedResidual, "er": EdgeResidual,
          "cn": ConvBnAct}


# ---------------------------------------------------------------------------------------------
# Network


class EfficientNet(nn.Module):
    """Stem, stages of blocks, 1x1 head conv, global average pool, linear classifier."""

    def __init__(self, stages: Sequence[Sequence[BlockCfg]], *, stem_size: int,
                 num_features: int, num_classes: int = 1000, in_chans: int = 3,
                 stem_stride: int = 2, act_layer: type[nn.Module] = nn.SiLU, eps: float = 1e-5,
                 tf_same: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_stem = create_conv2d(in_chans, stem_size, 3, stride=stem_stride, tf_same=tf_same)
        self.bn1 = BatchNormAct2d(stem_size, eps=eps, act_layer=act_layer)
        self.blocks = nn.Sequential(*[
            nn.Sequential(*[BLOCKS[c.kind](c, act_layer, eps, tf_same) for c in stage])
            for stage in stages])
        head_in = stages[-1][-1].out_chs
        self.conv_head = create_conv2d(head_in, num_features, 1, tf_same=tf_same)
        self.bn2 = BatchNormAct2d(num_features, eps=eps, act_layer=act_layer)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_features, num_classes)
        init_weights_goog(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pool(self.forward_features(x)).flatten(1))


def init_weights_goog(model: nn.Module) -> None:
    """TF-style init as in the reference EfficientNet: normal(0, sqrt(2 / fan_out)) convs."""
    if any(p.is_meta for p in model.parameters()):
        return  # shapes only (e.g. listing teachers): there is nothing to initialise
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.size(0))
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Scaling


@dataclass(frozen=True)
class StageDef:
    """One stage of a base architecture before compound scaling."""

    kind: str  # block kind, see BlockCfg
    repeats: int  # blocks in the stage at depth multiplier 1
    kernel: int
    stride: int  # stride of the first block; the others use 1
    exp_ratio: float
    out_chs: int  # output channels at width multiplier 1
    se_ratio: float = 0.0
    skip: bool = True


def build_stages(defs: Sequence[StageDef], stem_chs: int, width: float, depth: float,
                 round_limit: float = 0.9) -> list[list[BlockCfg]]:
    """Compound-scale a base architecture (timm's ``round_channels``, ``ceil`` of the depth)."""
    stages = []
    in_chs = stem_chs
    for d in defs:
        out_chs = make_divisible(d.out_chs * width, 8, round_limit=round_limit)
        blocks = []
        for i in range(int(math.ceil(d.repeats * depth))):
            blocks.append(BlockCfg(d.kind, in_chs, out_chs, d.kernel, d.stride if i == 0 else 1,
                                   d.exp_ratio, d.se_ratio, d.skip))
            in_chs = out_chs
        stages.append(blocks)
    return stages


V1_BASE = (
    StageDef("ds", 1, 3, 1, 1, 16, 0.25),
    StageDef("ir", 2, 3, 2, 6, 24, 0.25),
    StageDef("ir", 2, 5, 2, 6, 40, 0.25),
    StageDef("ir", 3, 3, 2, 6, 80, 0.25),
    StageDef("ir", 3, 5, 1, 6, 112, 0.25),
    StageDef("ir", 4, 5, 2, 6, 192, 0.25),
    StageDef("ir", 1, 3, 1, 6, 320, 0.25),
)


def efficientnet(width: float, depth: float, num_classes: int = 1000, in_chans: int = 3,
                 tf_same: bool = False) -> EfficientNet:
    """EfficientNet-V1 at the given compound-scaling multipliers.

    ``tf_same=True`` gives the ``tf_efficientnet_b*`` variant (TF ``SAME`` padding, BN eps 1e-3)
    for weights ported from TensorFlow; the parameter names and shapes are the same.
    """
    stem = make_divisible(32 * width)
    return EfficientNet(build_stages(V1_BASE, stem, width, depth), stem_size=stem,
                        num_features=make_divisible(1280 * width), num_classes=num_classes,
                        in_chans=in_chans, act_layer=nn.SiLU, eps=1e-3 if tf_same else 1e-5,
                        tf_same=tf_same)


# ---------------------------------------------------------------------------------------------
# Registered variants: (width, depth, resolution) as in the EfficientNet paper


def _v1(width: float, depth: float, res: int) -> dict:
    return dict(input_shape=(3, res, res), num_classes=1000, selector="blocks.*.*",
                timm_compatible=True,
                description=f"EfficientNet {res}px, MBConv+SE blocks "
                            f"(width x{width}, depth x{depth})")


@register_teacher("efficientnet_b0", timm_name="efficientnet_b0", **_v1(1.0, 1.0, 224))
def efficientnet_b0(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet(1.0, 1.0, num_classes, **kwargs)


@register_teacher("efficientnet_b1", timm_name="efficientnet_b1", **_v1(1.0, 1.1, 240))
def efficientnet_b1(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet(1.0, 1.1, num_classes, **kwargs)


@register_teacher("efficientnet_b2", timm_name="efficientnet_b2", **_v1(1.1, 1.2, 260))
def efficientnet_b2(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet(1.1, 1.2, num_classes, **kwargs)


@register_teacher("efficientnet_b3", timm_name="efficientnet_b3", **_v1(1.2, 1.4, 300))
def efficientnet_b3(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet(1.2, 1.4, num_classes, **kwargs)


@register_teacher("efficientnet_b4", timm_name="efficientnet_b4", **_v1(1.4, 1.8, 380))
def efficientnet_b4(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet(1.4, 1.8, num_classes, **kwargs)


@register_teacher("efficientnet_b5", timm_name="efficientnet_b5", **_v1(1.6, 2.2, 456))
def efficientnet_b5(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet(1.6, 2.2, num_classes, **kwargs)


@register_teacher("efficientnet_b6", timm_name="efficientnet_b6", **_v1(1.8, 2.6, 528))
def efficientnet_b6(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet(1.8, 2.6, num_classes, **kwargs)

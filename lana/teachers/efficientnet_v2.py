"""EfficientNetV2 teachers B0-B3: FusedMBConv (``er``) early stages, MBConv (``ir``) later.

The B-series configuration of the EfficientNetV2 paper, built as timm's ``tf_efficientnetv2_b*``:
TensorFlow ``SAME`` padding and BN eps 1e-3, so the TensorFlow-trained weights that timm ships
under those names load strictly (same parameter names and shapes) and give the outputs they were
trained with.  Channels are rounded with ``round_limit=0`` as in timm's V2 builder.
"""

from __future__ import annotations

from torch import nn

from lana.teachers import register_teacher
from lana.teachers.efficientnet import EfficientNet, StageDef, build_stages, make_divisible

V2_BASE = (
    StageDef("cn", 1, 3, 1, 1, 16, 0.0, skip=True),
    StageDef("er", 2, 3, 2, 4, 32),
    StageDef("er", 2, 3, 2, 4, 48),
    StageDef("ir", 3, 3, 2, 4, 96, 0.25),
    StageDef("ir", 5, 3, 1, 6, 112, 0.25),
    StageDef("ir", 8, 3, 2, 6, 192, 0.25),
)


def efficientnet_v2(width: float, depth: float, num_classes: int = 1000, in_chans: int = 3,
                    tf_same: bool = True) -> EfficientNet:
    """EfficientNetV2 B-series at the given multipliers (``tf_same=False``: PyTorch padding)."""
    stem = make_divisible(32 * width, round_limit=0.0)
    return EfficientNet(build_stages(V2_BASE, stem, width, depth, round_limit=0.0),
                        stem_size=stem, num_features=make_divisible(1280 * width, round_limit=0.0),
                        num_classes=num_classes, in_chans=in_chans, act_layer=nn.SiLU,
                        eps=1e-3 if tf_same else 1e-5, tf_same=tf_same)


# ---------------------------------------------------------------------------------------------
# Registered variants: (width, depth) from the EfficientNetV2 B-series, evaluation resolution


def _v2(width: float, depth: float, res: int) -> dict:
    return dict(input_shape=(3, res, res), num_classes=1000, selector="blocks.*.*",
                timm_compatible=True,
                description=f"EfficientNetV2 {res}px, FusedMBConv then MBConv+SE "
                            f"(width x{width}, depth x{depth}, TF padding)")


@register_teacher("efficientnetv2_b0", timm_name="tf_efficientnetv2_b0", **_v2(1.0, 1.0, 224))
def efficientnetv2_b0(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet_v2(1.0, 1.0, num_classes, **kwargs)


@register_teacher("efficientnetv2_b1", timm_name="tf_efficientnetv2_b1", **_v2(1.0, 1.1, 240))
def efficientnetv2_b1(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet_v2(1.0, 1.1, num_classes, **kwargs)


@register_teacher("efficientnetv2_b2", timm_name="tf_efficientnetv2_b2", **_v2(1.1, 1.2, 260))
def efficientnetv2_b2(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet_v2(1.1, 1.2, num_classes, **kwargs)


@register_teacher("efficientnetv2_b3", timm_name="tf_efficientnetv2_b3", **_v2(1.2, 1.4, 300))
def efficientnetv2_b3(num_classes: int = 1000, **kwargs) -> EfficientNet:
    return efficientnet_v2(1.2, 1.4, num_classes, **kwargs)

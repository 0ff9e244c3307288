"""``identity``: skip the layer (only where input and output shapes agree)."""

from __future__ import annotations

from torch import nn

from lana.ops._registry import register_family
from lana.spec import OpSpec, Shape


def identity_variants(in_shape: Shape, out_shape: Shape, stride: int):
    if in_shape == out_shape and stride == 1:
        yield {}


def build_identity(spec: OpSpec) -> nn.Module:
    if spec.in_shape != spec.out_shape or spec.stride != 1:
        raise ValueError("identity needs equal input and output shapes and stride 1")
    return nn.Identity()


register_family("identity", variants=identity_variants, paper_name="Identity",
                description="skip the layer")(build_identity)

"""Candidate operations: the op-family registry, the named pools, and deployment transforms.

``list_families`` and ``create_op`` are the only ways in, as timm's model registry.  Families live one
per file and register themselves when this package is imported.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from lana.errors import UnknownNameError
from lana.ops import dense, efn, identity, repvgg, transformer  # noqa: F401  (registers families)
from lana.ops._registry import (
    Family, OpBuildError, create_op, get_family, list_families, ops_fingerprint, register_family,
)
from lana.spec import OpSpec, Shape

POOLS = ("full", "small", "single-shot")

# The `small` pool: a fixed cross-section of every convolutional family for fast runs and CI.
SMALL_POOL: tuple[tuple[str, dict], ...] = (
    ("identity", {}),
    ("efn", {"e": 1, "se": None, "k": 3}),
    ("efn", {"e": 3, "se": None, "k": 3}),
    ("efn", {"e": 3, "se": 0.04, "k": 5}),
    ("efn", {"e": 6, "se": 0.025, "k": 3}),
    ("efnv2", {"e": 1, "se": None, "k": 3}),
    ("efnv2", {"e": 3, "se": None, "k": 3}),
    ("cb_stack", {"k": 3, "w": 1 / 4}),
    ("cb_stack", {"k": 3, "w": 1 / 2}),
    ("cb_stack", {"k": 3, "w": 1}),
    ("cb_bottle", {"k": 3, "w": 1 / 2}),
    ("cb_res", {"k": 3, "w": 1 / 2}),
    ("repvgg", {"k": 3, "w": 1 / 2}),
    ("conv_cs", {"k": 3, "w": 1 / 4}),
    ("conv_cs", {"k": 1, "w": 1 / 2}),
    ("vit", {"d": 1, "w": 64, "h": 4}),
)


def _family_variants(name: str, in_shape: Shape, out_shape: Shape, stride: int) -> Iterable[dict]:
    return get_family(name).variants(in_shape, out_shape, stride)


def candidate_specs(in_shape: Shape, out_shape: Shape, stride: int, pool: str,
                    teacher_signature: str | None = None) -> list[OpSpec]:
    """The candidate specs of ``pool`` for one layer geometry, teacher op first when given.

    Identity appears only where the shapes allow it; every family adapts to stride and channel changes.
    """
    if pool not in POOLS:
        raise UnknownNameError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
    specs: list[OpSpec] = []
    if teacher_signature is not None:
        specs.append(OpSpec.make("teacher", in_shape, out_shape, stride, sig=teacher_signature))
    if pool == "full":
        for name in list_families():
            for params in _family_variants(name, in_shape, out_shape, stride):
                specs.append(OpSpec.make(name, in_shape, out_shape, stride, **params))
    else:
        allowed = {"identity"} if pool == "single-shot" else None
        for name, params in SMALL_POOL:
            if allowed is not None and name not in allowed:
                continue
            if params in list(_family_variants(name, in_shape, out_shape, stride)):
                specs.append(OpSpec.make(name, in_shape, out_shape, stride, **params))
    return specs


def deploy(module: nn.Module) -> nn.Module:
    """Put ``module`` in the form that is shipped and timed: eval mode, re-parameterisable blocks fused."""
    module.eval()
    for sub in list(module.modules()):
        fuse = getattr(sub, "fuse", None)
        if callable(fuse) and getattr(sub, "fused", "absent") is None:
            fuse()
    return module


__all__ = [
    "POOLS", "SMALL_POOL", "Family", "OpBuildError", "candidate_specs", "create_op", "deploy",
    "get_family", "list_families", "ops_fingerprint", "register_family",
]

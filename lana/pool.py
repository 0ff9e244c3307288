"""The grid LANA works on: the teacher's layers x the candidate ops valid at each layer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from lana.ops import OpBuildError, candidate_specs, create_op, deploy
from lana.spec import OpSpec, Shape

if TYPE_CHECKING:
    from lana.teachers import Layer, Teacher


@dataclass(frozen=True)
class LayerPool:
    """The candidates of one layer; ``failed`` holds ops that could not be built, with the reason."""

    layer: "Layer"
    specs: tuple[OpSpec, ...]
    failed: tuple[tuple[OpSpec, str], ...] = field(default=())

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.specs]


def check_spec(spec: OpSpec) -> str | None:
    """Build ``spec`` on the meta device and trace its output shape; the reason it fails, or None."""
    if spec.family == "teacher":
        return None
    try:
        with torch.device("meta"):
            module = create_op(spec)
            y = module.eval()(torch.empty(2, *spec.in_shape))
    except OpBuildError as exc:
        return str(exc)
    except Exception as exc:  # a forward that fails for this geometry: record it, keep the layer
        return f"{type(exc).__name__}: {exc}"
    if tuple(y.shape[1:]) != spec.out_shape:
        return f"produces {tuple(y.shape[1:])}, layer needs {spec.out_shape}"
    return None


def layer_candidates(in_shape: Shape, out_shape: Shape, stride: int, pool: str,
                     teacher_signature: str | None = None
                     ) -> tuple[list[OpSpec], list[tuple[OpSpec, str]]]:
    specs, failed = [], []
    for spec in candidate_specs(in_shape, out_shape, stride, pool, teacher_signature):
        reason = check_spec(spec)
        if reason is None:
            specs.append(spec)
        else:
            failed.append((spec, reason))
    return specs, failed


def build_pool(teacher: "Teacher", pool: str) -> list[LayerPool]:
    """Per layer: the teacher op, identity where shapes allow, and the pool's families.

    An op that cannot be built for a layer geometry is reported (a warning naming its key and why) and
    left out of that layer only; layers with the same geometry are checked once.
    """
    cache: dict[tuple, tuple[list[OpSpec], list[tuple[OpSpec, str]]]] = {}
    result = []
    for i, layer in enumerate(teacher.layers):
        geo = (layer.in_shape, layer.out_shape, layer.stride)
        if geo not in cache:
            cache[geo] = layer_candidates(*geo, pool)
            for spec, reason in cache[geo][1]:
                warnings.warn(f"left out of layers shaped {geo}: {spec.key}: {reason}",
                              stacklevel=2)
        specs, failed = cache[geo]
        result.append(LayerPool(layer, (teacher.teacher_spec(i), *specs), tuple(failed)))
    return result


def _meta_op(spec: OpSpec, teacher_layer: torch.nn.Module | None) -> torch.nn.Module:
    """The op built on the meta device (no weights allocated), in eval mode."""
    with torch.device("meta"):
        module = create_op(spec, teacher_layer)
    if spec.family == "teacher":
        module = module.to("meta")
    return module.eval()


def op_params(spec: OpSpec, teacher_layer: torch.nn.Module | None = None) -> int:
    """Parameters of one op, counted without running it (faster than :func:`op_stats`)."""
    return sum(p.numel() for p in _meta_op(spec, teacher_layer).parameters())


def op_stats(spec: OpSpec, teacher_layer: torch.nn.Module | None = None) -> tuple[int, int]:
    """(parameters, FLOPs) of one op at batch 1, as deployed; FLOPs counted by torch's flop counter."""
    module = _meta_op(spec, teacher_layer)
    params = sum(p.numel() for p in module.parameters())
    return params, count_flops(module, torch.empty(1, *spec.in_shape, device="meta"))


def count_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``x``, by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())


__all__ = ["LayerPool", "build_pool", "check_spec", "count_flops", "deploy", "layer_candidates",
           "op_params", "op_stats"]

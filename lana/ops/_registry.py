"""The op-family registry: ``register_family`` records a builder; ``create_op`` is the only way to build."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from lana.errors import LanaError, UnknownNameError
from lana.spec import OpSpec, ParamValue, Shape

Variants = Callable[[Shape, Shape, int], Iterable[dict[str, ParamValue]]]


@dataclass(frozen=True)
class Family:
    """A registered op family: how to build one op and which variants the full pool holds."""

    name: str
    build: Callable[[OpSpec], nn.Module]  # spec -> freshly initialised module
    variants: Variants  # (in_shape, out_shape, stride) -> parameter dicts of the full pool
    description: str  # one line for `lana ops`
    paper_name: str  # the name the LANA paper uses


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, *, variants: Variants, description: str,
                    paper_name: str | None = None) -> Callable:
    """Decorator recording ``build(spec) -> nn.Module`` as op family ``name``."""

    def wrap(build: Callable[[OpSpec], nn.Module]) -> Callable[[OpSpec], nn.Module]:
        if name in _FAMILIES:
            raise ValueError(f"op family {name!r} is registered twice")
        _FAMILIES[name] = Family(name, build, variants, description, paper_name or name)
        return build

    return wrap


def list_families(pattern: str = "*") -> list[str]:
    """Registered family names matching a glob, in registration order."""
    return [n for n in _FAMILIES if fnmatch.fnmatchcase(n, pattern)]


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown op family {name!r}; valid families: {', '.join(_FAMILIES)}") from None


class OpBuildError(LanaError):
    """An op could not be built for a geometry."""


def create_op(spec: OpSpec, teacher_layer: nn.Module | None = None) -> nn.Module:
    """Build the module for ``spec``; the ``teacher`` family copies ``teacher_layer``."""
    if spec.family == "teacher":
        if teacher_layer is None:
            raise OpBuildError(f"op {spec.key} is the teacher's own layer: pass teacher_layer=")
        return copy.deepcopy(teacher_layer)
    family = get_family(spec.family)
    try:
        return family.build(spec)
    except LanaError:
        raise
    except Exception as exc:  # a family bug for one geometry must name the spec, not crash blindly
        raise OpBuildError(f"cannot build {spec.key}: {type(exc).__name__}: {exc}") from exc


def ops_fingerprint() -> str:
    """Hash of the op implementation sources: a LUT measured with other op code is stale."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]

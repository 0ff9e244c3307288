"""Backend registry: names map to ``module:Class`` strings, imported only when asked for.

``get_backend("ort")`` imports :mod:`profilers.backends.ort` on first use, so listing backends or
presets never imports onnxruntime, torch or TensorRT.  ``register_backend`` adds another one
(a native harness, a vendor runtime) without touching this file.
"""

from __future__ import annotations

import importlib

from profilers.backends.base import Backend, BackendConfig
from profilers.errors import ProfilerError

__all__ = ["Backend", "BackendConfig", "get_backend", "list_backends", "register_backend"]

_BACKENDS: dict[str, str] = {
    "ort": "profilers.backends.ort:OrtBackend",
    "torch": "profilers.backends.torch_eager:TorchBackend",
    "trt": "profilers.backends.trt:TrtBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:Class"``, a :class:`Backend` subclass) as ``name``."""
    if ":" not in target:
        raise ProfilerError(f"backend target must look like 'package.module:Class', got {target!r}")
    _BACKENDS[name] = target


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (imports its module now)."""
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise ProfilerError(f"unknown backend {name!r}; valid: {', '.join(list_backends())}") from None
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)

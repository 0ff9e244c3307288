"""The small interface every backend implements (in the spirit of Polygraphy's runners).

A backend wraps one model (an ONNX file or an ``nn.Module``, per :attr:`Backend.accepts`) at one
input shape.  It is a context manager: entering *activates* it (builds the session or engine,
allocates inputs once), :meth:`Backend.measure` times it with the shared :class:`~profilers.timing.Timer`,
leaving *deactivates* it (frees what activation made).  Heavy libraries are imported inside
``activate``/``check``, never at module import.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from profilers.errors import ProfilerError
from profilers.timing import Clock, Measurement, Protocol, Timer

PRECISIONS = ("fp32", "fp16")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class BackendConfig:
    """What a preset fixes for a backend."""

    device: str = "cpu"  # "cpu" or "cuda"
    precision: str = "fp32"  # "fp32" or "fp16"
    threads: int | None = None  # CPU threads (intra-op); None leaves the library default
    options: tuple[tuple[str, Any], ...] = field(default=())  # backend-specific, sorted pairs

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ProfilerError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ProfilerError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.threads is not None and int(self.threads) < 1:
            raise ProfilerError(f"threads must be >= 1, got {self.threads}")
        opts = self.options.items() if isinstance(self.options, Mapping) else self.options
        object.__setattr__(self, "options", tuple(sorted((str(k), _freeze(v)) for k, v in opts)))

    def option(self, name: str, default: Any = None) -> Any:
        for key, value in self.options:
            if key == name:
                return value
        return default


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


class Backend(abc.ABC):
    """One model on one backend; use as ``with Backend(model, shape, config) as b: b.measure()``."""

    name: ClassVar[str]  # registry name, e.g. "ort"
    accepts: ClassVar[str]  # "onnx" (a path) or "module" (a torch nn.Module)

    def __init__(self, model: Any, input_shape: tuple[int, ...],
                 config: BackendConfig | None = None) -> None:
        if self.accepts == "onnx":
            model = Path(model)
        self.model = model
        self.input_shape = tuple(int(v) for v in input_shape)  # batch included
        self.config = config if config is not None else BackendConfig()
        self.active = False
        self.activate_s = 0.0  # seconds spent building the session/engine

    @classmethod
    @abc.abstractmethod
    def check(cls, config: BackendConfig) -> str | None:
        """Why this backend cannot run ``config`` on this machine (one line), or None if it can."""

    @abc.abstractmethod
    def _activate(self) -> None:
        """Build the session/engine and allocate inputs and outputs, once."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Release what :meth:`_activate` made."""

    @abc.abstractmethod
    def run(self) -> None:
        """One inference on the prepared inputs; no allocations or host-device copies."""

    def timer(self, protocol: Protocol | None = None, *, clock: Clock = time.perf_counter) -> Timer:
        """The :class:`Timer` for this backend (device backends pass an ``interval``)."""
        return Timer(self.run, protocol=protocol, clock=clock, label=str(self.model))

    def info(self) -> dict[str, Any]:
        """Settings the backend actually used (providers, threads, optimisation level, ...)."""
        return {"backend": self.name, "device": self.config.device,
                "precision": self.config.precision, "threads": self.config.threads}

    def activate(self) -> None:
        if not self.active:
            start = time.perf_counter()
            self._activate()
            self.activate_s = time.perf_counter() - start
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self.active = False
            self._deactivate()

    def measure(self, protocol: Protocol | None = None, *,
                clock: Clock = time.perf_counter) -> Measurement:
        """Activate if needed and time :meth:`run` under ``protocol``."""
        self.activate()
        return self.timer(protocol, clock=clock).measure()

    def __enter__(self) -> "Backend":
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

"""PyTorch eager backend: an ``nn.Module`` timed on CPU (explicit threads) or CUDA (CUDA events).

On CPU the intra-op thread count is set explicitly for the measurement and restored afterwards,
and every call runs under ``torch.inference_mode``.  On CUDA the module and a pre-allocated input
live on the device in the preset's precision (fp32/fp16); each timed iteration is bracketed by
CUDA events recorded on the current stream, so the time is the device's, and nothing is copied
between host and device inside the timed region.
"""

from __future__ import annotations

import time
from typing import Any

from profilers.backends.base import Backend, BackendConfig
from profilers.errors import BuildError
from profilers.system import library_version, physical_cores
from profilers.timing import Clock, Protocol, Timer


class TorchBackend(Backend):
    """``torch`` eager mode; the module is moved to the device and precision in place."""

    name = "torch"
    accepts = "module"

    @classmethod
    def check(cls, config: BackendConfig) -> str | None:
        try:
            import torch
        except ImportError:
            return "torch is not installed (pip install torch)"
        if config.device == "cuda":
            if not torch.cuda.is_available():
                return "no CUDA device visible to torch (CPU-only build or no GPU)"
        elif config.precision != "fp32":
            return "fp16 on CPU is not a deployment setting; use precision = \"fp32\" for device = \"cpu\""
        return None

    def _activate(self) -> None:
        import torch

        self._torch = torch
        cuda = self.config.device == "cuda"
        dtype = torch.float16 if self.config.precision == "fp16" else torch.float32
        device = torch.device("cuda", int(self.config.option("device_index", 0))) if cuda else torch.device("cpu")
        self._previous_threads = torch.get_num_threads()
        if not cuda:
            self._threads = int(self.config.threads or physical_cores())
            torch.set_num_threads(self._threads)
        try:
            self._module = self.model.eval().to(device=device, dtype=dtype)
        except (RuntimeError, TypeError) as exc:
            raise BuildError(f"cannot move the module to {device}/{self.config.precision}: {exc}") from exc
        gen = torch.Generator(device="cpu").manual_seed(0)
        self._input = torch.randn(self.input_shape, generator=gen).to(device=device, dtype=dtype)
        self._mode = torch.inference_mode()
        self._mode.__enter__()
        try:
            self._module(self._input)  # untimed: fails early on a broken module
        except RuntimeError as exc:
            self._mode.__exit__(None, None, None)
            raise BuildError(f"module fails on input {tuple(self.input_shape)}: {exc}") from exc
        if cuda:
            self._stream = torch.cuda.current_stream(device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)

    def run(self) -> None:
        self._module(self._input)

    def _sync(self) -> None:
        self._stream.synchronize()

    def _cuda_interval(self) -> float:
        """One iteration timed by CUDA events on the stream; milliseconds of device time."""
        self._start.record(self._stream)
        self._module(self._input)
        self._end.record(self._stream)
        self._end.synchronize()
        return self._start.elapsed_time(self._end)

    def timer(self, protocol: Protocol | None = None, *, clock: Clock = time.perf_counter) -> Timer:
        if self.config.device == "cuda":
            return Timer(self.run, protocol=protocol, clock=clock, sync=self._sync,
                         interval=self._cuda_interval, label=type(self.model).__name__)
        return Timer(self.run, protocol=protocol, clock=clock, label=type(self.model).__name__)

    def _deactivate(self) -> None:
        self._mode.__exit__(None, None, None)
        self._torch.set_num_threads(self._previous_threads)
        del self._module, self._input

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["torch"] = library_version("torch")
        out["threads"] = getattr(self, "_threads", self.config.threads)
        out["timer"] = "cuda-events" if self.config.device == "cuda" else "perf_counter"
        return out

"""Device memory, a stream and CUDA-event timing for backends that drive CUDA themselves (TensorRT).

Two interchangeable runtimes: pycuda on the device's primary context (what ``lana[trt]`` installs),
and torch.cuda where pycuda is absent; only the torch one captures CUDA graphs.  Both upload inputs
once (outside any timed region) and time a launch with a pair of events on their stream.
"""

from __future__ import annotations

from typing import Any

from profilers.errors import BackendUnavailableError


class _PyCudaRuntime:
    """Device memory, a stream and timing events through pycuda, on the primary context."""

    def __init__(self, index: int) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._context = cuda.Device(index).retain_primary_context()
        self._context.push()
        self.stream = cuda.Stream()
        self.handle = self.stream.handle
        self._start, self._end = cuda.Event(), cuda.Event()
        self._buffers: list[Any] = []

    def upload(self, array: Any) -> int:
        buf = self._cuda.mem_alloc(max(1, array.nbytes))
        self._cuda.memcpy_htod(buf, array)
        self._buffers.append(buf)
        return int(buf)

    def empty(self, nbytes: int) -> int:
        buf = self._cuda.mem_alloc(max(1, nbytes))
        self._buffers.append(buf)
        return int(buf)

    def time_ms(self, launch: Any) -> float:
        self._start.record(self.stream)
        launch()
        self._end.record(self.stream)
        self._end.synchronize()
        return self._start.time_till(self._end)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        for buf in self._buffers:
            buf.free()
        self._buffers.clear()
        self._context.pop()


class _TorchCudaRuntime:
    """The same through torch.cuda; also captures and replays CUDA graphs."""

    def __init__(self, index: int) -> None:
        import torch

        self._torch = torch
        self.device = torch.device("cuda", index)
        self.stream = torch.cuda.Stream(self.device)
        self.handle = self.stream.cuda_stream
        self._previous = torch.cuda.current_stream(self.device)
        torch.cuda.set_stream(self.stream)  # graph replays launch on the current stream
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._buffers: list[Any] = []

    def upload(self, array: Any) -> int:
        tensor = self._torch.from_numpy(array).to(self.device)
        self._buffers.append(tensor)
        return tensor.data_ptr()

    def empty(self, nbytes: int) -> int:
        tensor = self._torch.empty(max(1, nbytes), dtype=self._torch.uint8, device=self.device)
        self._buffers.append(tensor)
        return tensor.data_ptr()

    def capture(self, launch: Any) -> Any:
        graph = self._torch.cuda.CUDAGraph()
        with self._torch.cuda.graph(graph, stream=self.stream):
            launch()
        return graph.replay

    def time_ms(self, launch: Any) -> float:
        self._start.record(self.stream)
        launch()
        self._end.record(self.stream)
        self._end.synchronize()
        return self._start.elapsed_time(self._end)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self._torch.cuda.set_stream(self._previous)
        self._buffers.clear()


def cuda_runtime(index: int, need_graphs: bool) -> Any:
    if not need_graphs:
        try:
            return _PyCudaRuntime(index)
        except ImportError:
            pass
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(
            "TensorRT timing needs pycuda (install lana[trt]) or torch with CUDA") from None
    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA device visible (torch.cuda.is_available() is False)")
    return _TorchCudaRuntime(index)

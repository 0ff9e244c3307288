"""TensorRT backend: build an engine from the op's ONNX file, time ``execute_async_v3`` with CUDA events.

The engine is built with the TensorRT Python API (8.6 or 10.x) at the preset's precision (fp16 sets
``BuilderFlag.FP16`` and fp16 network I/O, as inside a deployed fp16 network) and batch size
(dynamic input dims get a one-shape optimisation profile).  Input and output buffers are allocated
and filled on the device once; the timed region is one ``execute_async_v3`` bracketed by CUDA events
on the backend's stream, so no host-device copy is timed.  With the ``cuda_graph`` option the
enqueue is captured once and each iteration replays the graph.

CUDA memory, streams and events come from pycuda (``lana[trt]``) or, where pycuda is absent, from
torch's CUDA runtime (:mod:`profilers.backends._cuda`); CUDA-graph replay uses torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from profilers.backends._cuda import cuda_runtime
from profilers.backends.base import Backend, BackendConfig
from profilers.errors import BackendUnavailableError, BuildError
from profilers.system import cache_root, library_version
from profilers.timing import Clock, Protocol, Timer

INSTALL_HINT = "TensorRT is not installed: install lana[trt] (pip install 'lana[trt]') on a machine with an NVIDIA GPU"


def timing_cache_path(option: Any) -> Path:
    """The ``timing_cache`` option as a file: a relative path lies in lana's cache
    (``$LANA_CACHE_DIR``, see :func:`profilers.system.cache_root`), where ``lana cache`` shows and
    clears it; an absolute one (``~`` expanded) is taken as it is."""
    path = Path(str(option)).expanduser()
    return path if path.is_absolute() else cache_root() / path


class TrtBackend(Backend):
    """TensorRT engine built from an ONNX file.

    Options: ``workspace_mb``, ``cuda_graph`` (replay a captured graph), ``fp16_io`` (fp16 network
    I/O at fp16), ``timing_cache`` (a file of tactic timings reused across builds; see
    :func:`timing_cache_path`), ``device_index``.
    """

    name = "trt"
    accepts = "onnx"

    @classmethod
    def check(cls, config: BackendConfig) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return INSTALL_HINT
        if config.device != "cuda":
            return "TensorRT runs on a GPU; set device = \"cuda\" in the preset"
        try:
            import pycuda.driver as cuda

            cuda.init()
            if cuda.Device.count() > 0 and not config.option("cuda_graph", False):
                return None
        except ImportError:
            pass
        except Exception as exc:  # pycuda raises its own driver errors
            return f"pycuda cannot see a CUDA device: {exc}"
        try:
            import torch
        except ImportError:
            return "TensorRT timing needs pycuda (install lana[trt]) or torch with CUDA"
        if not torch.cuda.is_available():
            return "no CUDA device visible to pycuda or torch"
        return None

    def _activate(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailableError(INSTALL_HINT) from None
        import numpy as np

        cfg = self.config
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.model)):
            errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
            raise BuildError(f"TensorRT cannot parse {self.model.name}: {errors or 'unknown error'}")
        build_config = builder.create_builder_config()
        build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                           int(cfg.option("workspace_mb", 1024)) << 20)
        fp16 = cfg.precision == "fp16"
        if fp16:
            build_config.set_flag(trt.BuilderFlag.FP16)
        profile = None
        io = [network.get_input(i) for i in range(network.num_inputs)]
        io += [network.get_output(i) for i in range(network.num_outputs)]
        for tensor in io[:network.num_inputs]:
            if any(d < 0 for d in tensor.shape):
                profile = profile or builder.create_optimization_profile()
                shape = self.input_shape if network.num_inputs == 1 else \
                    (self.input_shape[0], *tuple(tensor.shape)[1:])
                profile.set_shape(tensor.name, shape, shape, shape)
        if profile is not None:
            build_config.add_optimization_profile(profile)
        if fp16 and cfg.option("fp16_io", True):
            for tensor in io:
                if tensor.dtype == trt.float32:
                    tensor.dtype = trt.float16
        cache_file = cfg.option("timing_cache")
        if cache_file:  # tactic timings shared between builds (like trtexec --timingCacheFile)
            cache_path = timing_cache_path(cache_file)
            data = cache_path.read_bytes() if cache_path.is_file() else b""
            build_config.set_timing_cache(build_config.create_timing_cache(data), False)
        plan = builder.build_serialized_network(network, build_config)
        if cache_file and plan is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(bytes(memoryview(build_config.get_timing_cache().serialize())))
            os.replace(tmp, cache_path)
        if plan is None:
            raise BuildError(f"TensorRT could not build an engine for {self.model.name} "
                             f"at {cfg.precision} (see the TensorRT log above)")
        self._logger = logger  # the logger and runtime must outlive the engine
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BuildError(f"TensorRT could not deserialise the engine built for {self.model.name}")
        self._context = self._engine.create_execution_context()

        use_graph = bool(cfg.option("cuda_graph", False))
        self._cuda = cuda_runtime(int(cfg.option("device_index", 0)), use_graph)
        try:
            self._bind_and_capture(trt, np, use_graph)
        except BaseException:
            self._cuda.close()
            raise
        self._trt_version = trt.__version__

    def _bind_and_capture(self, trt: Any, np: Any, use_graph: bool) -> None:
        """Allocate and fill device inputs, allocate outputs, bind them; capture a graph if asked."""
        rng = np.random.default_rng(0)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                shape = self.input_shape if len(inputs) == 1 else (self.input_shape[0], *shape[1:])
                self._context.set_input_shape(name, shape)
            dtype = trt.nptype(self._engine.get_tensor_dtype(name))
            host = rng.standard_normal(shape).astype(dtype)
            self._context.set_tensor_address(name, self._cuda.upload(host))
        for name in names:
            if name in inputs:
                continue
            shape = tuple(self._context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).itemsize
            self._context.set_tensor_address(name, self._cuda.empty(nbytes))
        self._launch = self._enqueue
        self._enqueue()  # untimed; also required once before a CUDA-graph capture
        self._cuda.synchronize()
        if use_graph:
            self._launch = self._cuda.capture(self._enqueue)

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._cuda.handle):
            raise BuildError(f"TensorRT execute_async_v3 failed for {self.model.name}")

    def run(self) -> None:
        self._launch()

    def _interval(self) -> float:
        return self._cuda.time_ms(self._launch)

    def timer(self, protocol: Protocol | None = None, *, clock: Clock = time.perf_counter) -> Timer:
        return Timer(self.run, protocol=protocol, clock=clock, sync=self._cuda.synchronize,
                     interval=self._interval, label=self.model.name)

    def _deactivate(self) -> None:
        self._cuda.synchronize()
        del self._launch, self._context, self._engine, self._runtime
        self._cuda.close()

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update({"tensorrt": library_version("tensorrt"), "timer": "cuda-events",
                    "cuda_graph": bool(self.config.option("cuda_graph", False)),
                    "fp16_io": self.config.precision == "fp16" and bool(self.config.option("fp16_io", True)),
                    "workspace_mb": int(self.config.option("workspace_mb", 1024))})
        return out

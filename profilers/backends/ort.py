"""ONNX Runtime backend: one ``InferenceSession`` per ONNX file, timed through an IO binding.

Thread counts are set explicitly (intra-op = the preset's threads, inter-op = 1) and execution is
sequential, so two runs on one machine use the same parallelism.  Inputs and outputs are bound once
as ``OrtValue``s on the provider's device, so a timed ``run_with_iobinding`` does no allocation and no
host-device copy.  The graph optimisation level is a preset option (``graph_optimization_level``:
``disable``/``basic``/``extended``/``all``) and is recorded with the providers actually used.
"""

from __future__ import annotations

from typing import Any

from profilers.backends.base import Backend, BackendConfig
from profilers.errors import BuildError
from profilers.system import library_version, physical_cores

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}
_LEVELS = ("disable", "basic", "extended", "all")


def _providers(config: BackendConfig) -> list[str]:
    providers = config.option("providers")
    if providers:
        return list(providers)
    if config.device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtBackend(Backend):
    """ONNX Runtime on the preset's execution providers (CPU by default)."""

    name = "ort"
    accepts = "onnx"

    @classmethod
    def check(cls, config: BackendConfig) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        if config.precision != "fp32":
            return "the ort backend times the exported fp32 graph; set precision = \"fp32\""
        level = config.option("graph_optimization_level", "all")
        if level not in _LEVELS:
            return f"graph_optimization_level must be one of {_LEVELS}, got {level!r}"
        available = ort.get_available_providers()
        missing = [p for p in _providers(config) if p not in available]
        if missing:
            return (f"ONNX Runtime execution provider(s) {', '.join(missing)} not available here "
                    f"(have {', '.join(available)}); install an onnxruntime build that has them")
        return None

    def _activate(self) -> None:
        import numpy as np
        import onnxruntime as ort

        config = self.config
        self._threads = int(config.threads or physical_cores())
        level = config.option("graph_optimization_level", "all")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self._threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        so.log_severity_level = 3
        self._session_config = dict(config.option("session_config", ()))
        for key, value in self._session_config.items():
            so.add_session_config_entry(str(key), str(value))
        try:
            self._session = ort.InferenceSession(str(self.model), sess_options=so,
                                                 providers=_providers(config))
        except Exception as exc:  # ORT raises its own pybind exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BuildError(f"ONNX Runtime cannot load {self.model.name}: {first}") from exc

        rng = np.random.default_rng(0)
        feeds: dict[str, Any] = {}
        inputs = self._session.get_inputs()
        for meta in inputs:
            shape = [d if isinstance(d, int) else None for d in meta.shape]
            if len(inputs) == 1 and len(shape) == len(self.input_shape):
                shape = list(self.input_shape)
            elif shape and shape[0] is None:
                shape[0] = self.input_shape[0]
            if any(d is None for d in shape):
                raise BuildError(f"{self.model.name}: input {meta.name} has unknown dims {meta.shape}")
            dtype = np.dtype(_DTYPES.get(meta.type, "float32"))
            feeds[meta.name] = rng.standard_normal(shape).astype(dtype)
        outputs = self._session.run(None, feeds)  # untimed: gives the output shapes

        device = "cuda" if config.device == "cuda" else "cpu"
        self._binding = self._session.io_binding()
        self._values = []  # keep the OrtValues alive while bound
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(array, device, 0)
            self._binding.bind_ortvalue_input(name, value)
            self._values.append(value)
        for meta, array in zip(self._session.get_outputs(), outputs):
            value = ort.OrtValue.ortvalue_from_numpy(np.empty_like(array), device, 0)
            self._binding.bind_ortvalue_output(meta.name, value)
            self._values.append(value)
        self._level = level

    def run(self) -> None:
        # Run() synchronises the provider's stream before returning, so the clock sees finished work.
        # No RunOptions object: with one, onnxruntime 1.31's run_with_iobinding probes it for a
        # graph-capture id by raising and catching an exception, ~30 us on every call.
        self._session.run_with_iobinding(self._binding)

    def _deactivate(self) -> None:
        del self._binding, self._values, self._session

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update({
            "onnxruntime": library_version("onnxruntime"),
            "providers": list(self._session.get_providers()) if self.active else _providers(self.config),
            "intra_op_threads": getattr(self, "_threads", self.config.threads),
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": self.config.option("graph_optimization_level", "all"),
        })
        if self.config.option("session_config"):
            out["session_config"] = dict(self.config.option("session_config"))
        return out

"""Device-specific latency measurement: one timing core, several backends, device presets.

``profilers`` knows nothing about LANA: it times a model (an ONNX file or a torch module) on a
backend under a protocol and returns a :class:`Measurement` with the raw samples.  ``lana``
imports it; it never imports ``lana``.

    from profilers import load_preset, get_backend
    preset = load_preset("cpu-ort")
    backend = get_backend(preset.backend)
    with backend("op.onnx", (1, 16, 32, 32), preset.backend_config()) as b:
        m = b.measure(preset.protocol)          # m.median, m.iqr, m.samples_ms, m.to_dict()
"""

from profilers.backends import Backend, BackendConfig, get_backend, list_backends, register_backend
from profilers.device import Preset, list_presets, load_preset, preset_names
from profilers.errors import (BackendUnavailableError, BuildError, PresetError, ProfilerError,
                              UnknownPresetError)
from profilers.timing import Measurement, Protocol, Timer, quantile

__all__ = [
    "Backend", "BackendConfig", "BackendUnavailableError", "BuildError", "Measurement", "Preset",
    "PresetError", "ProfilerError", "Protocol", "Timer", "UnknownPresetError", "get_backend",
    "list_backends", "list_presets", "load_preset", "preset_names", "quantile", "register_backend",
]

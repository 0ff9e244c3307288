"""Device presets: TOML files that fix backend, device, precision, batch size, threads and protocol.

Built-in presets live in ``profilers/presets/*.toml``.  Users add their own as TOML files, either
passed by path (``--device path/to/preset.toml``) or placed in a directory listed in
``LANA_PRESET_PATH`` (``os.pathsep``-separated); a user preset of the same name wins over a
built-in one.  A preset may start from another with ``extends = "cpu-ort"`` and override fields.

Format (every field but ``backend`` optional)::

    description = "Intel Xeon, ONNX Runtime CPU EP"
    backend = "ort"              # ort | torch | trt | any registered backend
    device = "cpu"               # cpu | cuda
    precision = "fp32"           # fp32 | fp16
    batch_size = 1
    threads = "physical"         # an int, or "physical": the usable physical cores, recorded
    hardware = ["Xeon"]          # substrings of the CPU/GPU model this preset describes
    [protocol]                   # fields of profilers.timing.Protocol
    min_iters = 20
    [options]                    # backend-specific, e.g. graph_optimization_level = "all"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from profilers.backends import BackendConfig, get_backend
from profilers.backends.base import _freeze
from profilers.errors import PresetError, ProfilerError, UnknownPresetError
from profilers.system import cpu_model, gpu_info, physical_cores
from profilers.timing import Protocol

ENV_VAR = "LANA_PRESET_PATH"
_FIELDS = ("name", "description", "backend", "device", "precision", "batch_size", "threads",
           "hardware", "protocol", "options", "extends")


@dataclass(frozen=True)
class Preset:
    """One named measurement setting; see the module docstring for the TOML format."""

    name: str  # "cpu-ort", or the file stem of a user TOML
    backend: str  # registered backend name
    device: str = "cpu"  # "cpu" or "cuda"
    precision: str = "fp32"  # "fp32" or "fp16"
    batch_size: int = 1
    threads: int | str | None = "physical"  # int, "physical", or None for GPU presets
    hardware: tuple[str, ...] = ()  # substrings of the CPU/GPU model the preset was made for
    description: str = ""
    protocol: Protocol = field(default_factory=Protocol)
    options: tuple[tuple[str, Any], ...] = ()  # backend-specific settings
    source: str = "builtin"  # "builtin" or the TOML path

    def resolved_threads(self) -> int | None:
        """Threads the backend will use: ``"physical"`` becomes the usable physical cores here."""
        if self.threads == "physical":
            return physical_cores()
        return None if self.threads is None else int(self.threads)

    def backend_config(self) -> BackendConfig:
        return BackendConfig(device=self.device, precision=self.precision,
                             threads=self.resolved_threads() if self.device == "cpu" else None,
                             options=self.options)

    def unusable_reason(self) -> str | None:
        """Why this preset cannot run on this machine (one line), or None when it can."""
        try:
            backend = get_backend(self.backend)
        except ProfilerError as exc:
            return str(exc)
        except ImportError as exc:
            return f"backend {self.backend!r} cannot be imported: {exc}"
        return backend.check(self.backend_config())

    def hardware_warning(self, seen: Mapping[str, Any] | None = None) -> str | None:
        """A one-line warning when the preset names hardware this machine does not have."""
        if not self.hardware:
            return None
        if seen is None:
            seen = {"cpu": cpu_model(), **gpu_info()} if self.device == "cuda" else {"cpu": cpu_model()}
        actual = seen.get("gpu") if self.device == "cuda" else seen.get("cpu")
        actual = str(actual) if actual else ("no GPU" if self.device == "cuda" else "an unknown CPU")
        if any(h.lower() in actual.lower() for h in self.hardware):
            return None
        return (f"preset {self.name!r} describes {' / '.join(self.hardware)} but this machine has "
                f"{actual}; the LUT will record what it actually ran on")

    def to_dict(self) -> dict[str, Any]:
        """The preset part of a LUT's ``device`` block (threads resolved)."""
        return {"preset": self.name, "backend": self.backend, "device": self.device,
                "precision": self.precision, "batch_size": self.batch_size,
                "threads": self.resolved_threads() if self.device == "cpu" else None,
                "threads_spec": self.threads, "hardware": list(self.hardware),
                "options": {k: _thaw(v) for k, v in self.options}}


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: _thaw(v) for k, v in value}
        return [_thaw(v) for v in value]
    return value


def _builtin_files() -> dict[str, Any]:
    root = resources.files("profilers") / "presets"
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".toml")}


def _user_dirs() -> list[Path]:
    return [Path(d) for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d.strip()]


def _user_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in reversed(_user_dirs()):  # earlier directories win
        if directory.is_dir():
            found.update({p.stem: p for p in sorted(directory.glob("*.toml"))})
    return found


def _all_files() -> dict[str, Any]:
    return {**_builtin_files(), **_user_files()}


def _read(path: Any) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(f"preset file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise PresetError(f"cannot read preset file {path}: {exc.strerror}") from None


def _raw(name: str, path: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    data = _read(path)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise PresetError(f"preset {path}: unknown field(s) {unknown}; valid: {list(_FIELDS)}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if parent in seen or parent == name:
        raise PresetError(f"preset {path}: 'extends' forms a cycle through {parent!r}")
    files = _all_files()
    if parent not in files:
        raise UnknownPresetError(f"preset {path} extends unknown preset {parent!r}; "
                                 f"valid: {', '.join(sorted(files))}")
    base = _raw(parent, files[parent], seen + (name,))
    merged = {**base, **{k: v for k, v in data.items() if k not in ("protocol", "options")}}
    merged["protocol"] = {**base.get("protocol", {}), **data.get("protocol", {})}
    merged["options"] = {**base.get("options", {}), **data.get("options", {})}
    return merged


def _build(name: str, data: dict[str, Any], source: str) -> Preset:
    where = f"preset {source if source != 'builtin' else name}"
    if "backend" not in data:
        raise PresetError(f"{where}: missing required field 'backend' (e.g. backend = \"ort\")")
    threads = data.get("threads", "physical" if data.get("device", "cpu") == "cpu" else None)
    if threads is not None and threads != "physical" and (not isinstance(threads, int) or threads < 1):
        raise PresetError(f"{where}: threads must be a positive int or \"physical\", got {threads!r}")
    hardware = data.get("hardware", ())
    hardware = (hardware,) if isinstance(hardware, str) else tuple(hardware)
    batch = data.get("batch_size", 1)
    if not isinstance(batch, int) or batch < 1:
        raise PresetError(f"{where}: batch_size must be a positive int, got {batch!r}")
    try:
        protocol = Protocol.from_dict(data.get("protocol", {}))
        BackendConfig(device=data.get("device", "cpu"), precision=data.get("precision", "fp32"))
    except ProfilerError as exc:
        raise PresetError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise PresetError(f"{where}: bad [protocol] value ({exc})") from None
    return Preset(name=str(data.get("name", name)), backend=str(data["backend"]),
                  device=data.get("device", "cpu"), precision=data.get("precision", "fp32"),
                  batch_size=batch, threads=threads, hardware=hardware,
                  description=str(data.get("description", "")), protocol=protocol,
                  options=tuple(sorted((k, _freeze(v)) for k, v in data.get("options", {}).items())),
                  source=source)


def list_presets() -> list[Preset]:
    """Every preset this process can see: built-in ones and those in ``LANA_PRESET_PATH``."""
    user = _user_files()
    out = []
    for name, path in sorted(_all_files().items()):
        out.append(_build(name, _raw(name, path), str(path) if name in user else "builtin"))
    return out


def preset_names() -> list[str]:
    return sorted(_all_files())


def load_preset(name_or_path: str | os.PathLike[str]) -> Preset:
    """The preset called ``name_or_path``, or the one in that TOML file."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise PresetError(f"preset file {text} does not exist")
        return _build(path.stem, _raw(path.stem, path), str(path))
    files = _all_files()
    if text not in files:
        raise UnknownPresetError(f"unknown device {text!r}; valid: {', '.join(sorted(files))} "
                                 f"(or a path to a preset .toml)")
    return _build(text, _raw(text, files[text]), "builtin" if text not in _user_files() else str(files[text]))

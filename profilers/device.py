"""Device presets: TOML files that fix backend, device, precision, batch size, threads and protocol.

Built-in presets live in ``profilers/presets/*.toml``.  Users add their own as TOML files, either
passed by path (``--device path/to/preset.toml``) or placed in a directory listed in
``LANA_PRESET_PATH`` (``os.pathsep``-separated); a user preset of the same name wins over a
built-in one (on purpose, with a :class:`PresetWarning` naming both files, since LUTs made with it
are recorded under the built-in's name).  A preset may start from another with
``extends = "cpu-ort"`` and override fields.

Every value is checked when the file is read, so a mistake in it is a one-line
:class:`~profilers.errors.PresetError` naming the file, the key, what it holds and what it should
hold, never a traceback from deep inside a backend.  ``[options]`` are checked against the options
the preset's backend reads (:data:`BACKEND_OPTIONS`); a backend registered elsewhere gets its
options unchecked.  One broken user file does not hide the others: :func:`list_presets` leaves it
out and :func:`scan_presets` says why.

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
    [options]                    # backend-specific, see BACKEND_OPTIONS
    graph_optimization_level = "all"
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from profilers.backends import BackendConfig, get_backend, list_backends
from profilers.backends.base import _freeze
from profilers.errors import PresetError, ProfilerError, UnknownPresetError
from profilers.system import cpu_model, gpu_info, physical_cores, usable_cpus
from profilers.timing import Protocol

ENV_VAR = "LANA_PRESET_PATH"
_FIELDS = ("name", "description", "backend", "device", "precision", "batch_size", "threads",
           "hardware", "protocol", "options", "extends")


class PresetWarning(UserWarning):
    """A preset that loads but may not be what its author meant (it takes a built-in's name)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML true is not a count


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


# The [options] each built-in backend reads (``config.option(...)`` in profilers/backends/*.py),
# with what each must hold.  Kept here, not in the backends, so that reading a preset imports no
# backend; a test keeps it in step with the backends' sources.  ONNX Runtime's session config
# entries are an open, version-dependent set of keys (``add_session_config_entry``), so the keys of
# ``session_config`` pass through unchecked: only its values' types are.
_ORT_LEVELS = ("disable", "basic", "extended", "all")
BACKEND_OPTIONS: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "ort": {
        "graph_optimization_level": (f"one of {', '.join(map(json.dumps, _ORT_LEVELS))}",
                                     lambda v: isinstance(v, str) and v in _ORT_LEVELS),
        "providers": ('an array of execution provider names, e.g. ["CPUExecutionProvider"]',
                      _is_strings),
        "session_config": ("a table of ONNX Runtime session config entries with string or number "
                           "values", lambda v: isinstance(v, dict) and all(
                               isinstance(x, str) or _is_number(x) for x in v.values())),
    },
    "torch": {
        "device_index": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    },
    "trt": {
        "workspace_mb": ("a whole number >= 1", lambda v: _is_int(v) and v >= 1),
        "cuda_graph": ("true or false", lambda v: isinstance(v, bool)),
        "fp16_io": ("true or false", lambda v: isinstance(v, bool)),
        "timing_cache": ("a file path (a string)", lambda v: isinstance(v, str)),
        "device_index": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    },
}
_PROTOCOL_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("a whole number", _is_int), "float": ("a number", _is_number),
    "str": ("a string", lambda v: isinstance(v, str))}


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
        """A one-line warning when the preset does not fit this machine: it names hardware this
        machine does not have, or asks for more CPU threads than this process may run on (the
        threads then wait for each other and every latency is inflated, consistently enough that
        the noise check does not catch it).  ``seen``: ``cpu``, ``gpu`` and ``logical_cpus`` as
        :func:`profilers.system.seen` records them; read from this machine when missing."""
        seen = dict(seen) if seen is not None else {}
        problems = []
        if self.hardware:
            if "cpu" not in seen:
                seen["cpu"] = cpu_model()
            if self.device == "cuda" and "gpu" not in seen:
                seen.update({k: v for k, v in gpu_info().items() if k not in seen})
            actual = seen.get("gpu") if self.device == "cuda" else seen.get("cpu")
            actual = str(actual) if actual else ("no GPU" if self.device == "cuda"
                                                 else "an unknown CPU")
            if not any(h.lower() in actual.lower() for h in self.hardware):
                problems.append(f"preset {self.name!r} describes {' / '.join(self.hardware)} but "
                                f"this machine has {actual}; the LUT will record what it actually "
                                f"ran on")
        if self.device == "cpu" and _is_int(self.threads):
            cpus = seen.get("logical_cpus") or len(usable_cpus())
            if self.threads > cpus:
                problems.append(
                    f"preset {self.name!r} asks for {self.threads} threads but this process may "
                    f"run on {cpus} CPU{'s' if cpus != 1 else ''}: the extra threads wait for each "
                    f"other and inflate every latency; set threads = {cpus} or \"physical\" in "
                    f"{self.source if self.source != 'builtin' else 'the preset'}")
        return "; ".join(problems) or None

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


def _found(value: Any) -> str:
    """``value`` as the TOML file spells it, with its TOML type: what a message says was found."""
    if isinstance(value, dict):
        return "a table"
    kind = ("a boolean" if isinstance(value, bool) else "an integer" if isinstance(value, int)
            else "a float" if isinstance(value, float) else "a string" if isinstance(value, str)
            else "an array" if isinstance(value, list) else "a date/time")
    text = json.dumps(value, default=str)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def _expect(where: str, key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise PresetError(f"{where}: {key} must be {expected}, got {_found(value)}")


def _check_types(where: str, data: Mapping[str, Any]) -> None:
    """Refuse a value of the wrong type in one preset file, before files are merged, so that the
    message names the file that holds it; ranges are checked once the preset is complete."""
    for key in ("name", "backend", "extends"):
        if key in data:
            _expect(where, key, data[key], isinstance(data[key], str) and bool(data[key]),
                    "a non-empty string")
    for key in ("description", "device", "precision"):
        if key in data:
            _expect(where, key, data[key], isinstance(data[key], str), "a string")
    if "batch_size" in data:
        batch = data["batch_size"]
        _expect(where, "batch_size", batch, _is_int(batch) and batch >= 1,
                "a positive whole number (e.g. batch_size = 1)")
    if "threads" in data:
        threads = data["threads"]
        ok = threads == "physical" or (_is_int(threads) and threads >= 1)
        _expect(where, "threads", threads, ok, 'a positive whole number or "physical"')
    if "hardware" in data:
        hardware = data["hardware"]
        _expect(where, "hardware", hardware, (isinstance(hardware, str) and bool(hardware))
                or _is_strings(hardware),
                'a string or an array of strings (e.g. hardware = ["Xeon"])')
    for table in ("protocol", "options"):
        if table in data:
            _expect(where, table, data[table], isinstance(data[table], dict),
                    f"a table (a [{table}] section of key = value lines)")
    fields = {f.name: f.type for f in dataclasses.fields(Protocol)}
    protocol = data.get("protocol", {})
    unknown = sorted(set(protocol) - set(fields))
    if unknown:
        raise PresetError(f"{where}: unknown field(s) {unknown} in [protocol]; "
                          f"valid: {sorted(fields)}")
    for key, value in protocol.items():
        expected, ok = _PROTOCOL_TYPES.get(str(fields[key]), ("", lambda v: True))
        _expect(where, f"[protocol] {key}", value, ok(value), expected)


def _raw(name: str, path: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    data = _read(path)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise PresetError(f"preset {path}: unknown field(s) {unknown}; valid: {list(_FIELDS)}")
    _check_types(f"preset {path}", data)
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


def _check_options(where: str, backend: str, options: Mapping[str, Any]) -> None:
    """Refuse options the backend does not read (a misspelt one would be ignored in silence) and
    values it cannot use; a backend without an entry in :data:`BACKEND_OPTIONS` is not checked."""
    known = BACKEND_OPTIONS.get(backend)
    if known is None:
        return
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PresetError(f"{where}: unknown option(s) {unknown} in [options] for backend "
                          f"{backend!r}; known: {', '.join(sorted(known)) or 'none'}")
    for key, value in options.items():
        expected, ok = known[key]
        _expect(where, f"[options] {key}", value, ok(value), expected)


def _warn_if_builtin_name(preset: Preset) -> None:
    """Warn when a user preset takes a built-in preset's name: LUTs record the preset by name, so
    its LUTs could not be told from the built-in's.  A file in ``LANA_PRESET_PATH`` named like a
    built-in replaces it on purpose (the module docstring), so that one is only warned about."""
    builtin = _builtin_files().get(preset.name)
    if preset.source == "builtin" or builtin is None:
        return
    if str(_all_files().get(preset.name)) == preset.source:
        message = (f"user preset {preset.source} replaces the built-in preset {preset.name!r} "
                   f"({builtin}) in {ENV_VAR}: --device {preset.name} now means the user file; "
                   f"rename the file unless that is meant")
    else:
        message = (f"preset {preset.source} is named {preset.name!r} like the built-in preset "
                   f"({builtin}): its LUTs would be recorded as {preset.name!r} and could not be "
                   f"told from the built-in's; give it another name (name = \"...\" or the file "
                   f"name)")
    warnings.warn(message, PresetWarning, stacklevel=4)


def _build(name: str, data: dict[str, Any], source: str) -> Preset:
    where = f"preset {source if source != 'builtin' else name}"
    if "backend" not in data:
        raise PresetError(f"{where}: missing required field 'backend' (e.g. backend = \"ort\")")
    backend = data["backend"]
    if backend not in list_backends():
        raise PresetError(f"{where}: backend {backend!r} is not a known backend; set backend to "
                          f"one of {', '.join(list_backends())}")
    options = data.get("options", {})
    _check_options(where, backend, options)
    threads = data.get("threads", "physical" if data.get("device", "cpu") == "cpu" else None)
    try:
        protocol = Protocol.from_dict(data.get("protocol", {}))
        BackendConfig(device=data.get("device", "cpu"), precision=data.get("precision", "fp32"))
    except ProfilerError as exc:
        raise PresetError(f"{where}: {exc}") from None
    hardware = data.get("hardware", ())
    preset = Preset(name=data.get("name", name), backend=backend,
                    device=data.get("device", "cpu"), precision=data.get("precision", "fp32"),
                    batch_size=data.get("batch_size", 1), threads=threads,
                    hardware=(hardware,) if isinstance(hardware, str) else tuple(hardware),
                    description=data.get("description", ""), protocol=protocol,
                    options=tuple(sorted((k, _freeze(v)) for k, v in options.items())),
                    source=source)
    _warn_if_builtin_name(preset)
    return preset


@dataclass(frozen=True)
class BrokenPreset:
    """A preset file that cannot be loaded, and why (the one-line error loading it raises)."""

    name: str  # the name it would be loaded by (its file stem)
    source: str  # "builtin" or the TOML path
    reason: str


def scan_presets() -> tuple[list[Preset], list[BrokenPreset]]:
    """Every preset this process can see that loads, and every one that does not with the reason:
    one broken file in ``LANA_PRESET_PATH`` must not hide the others."""
    user = _user_files()
    good: list[Preset] = []
    broken: list[BrokenPreset] = []
    for name, path in sorted(_all_files().items()):
        source = str(path) if name in user else "builtin"
        try:
            good.append(_build(name, _raw(name, path), source))
        except PresetError as exc:
            broken.append(BrokenPreset(name, source, str(exc)))
    return good, broken


def list_presets() -> list[Preset]:
    """Every preset this process can see: built-in ones and those in ``LANA_PRESET_PATH``.  Files
    that do not load are left out (:func:`scan_presets` says why; loading one by name raises)."""
    return scan_presets()[0]


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
    user = _user_files()
    return _build(text, _raw(text, files[text]), str(files[text]) if text in user else "builtin")

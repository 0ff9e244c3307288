"""Native timers: build the C++ harness with CMake and time modules with no Python in the loop.

A ``*-torch`` LUT is measured from Python, so every entry includes the interpreter's per-call
cost. ``lana_torch_bench`` (``profilers/native/torch_bench.cpp``) times the same module, saved
with ``torch.jit.save``, from C++ against the libtorch inside the installed torch wheel, under the
same protocol as :mod:`profilers.timing`; the difference between the two is that overhead.
``lana_trt_bench`` builds a TensorRT engine from an ONNX file and times ``enqueueV3`` with CUDA
events; it is built only where TensorRT and the CUDA toolkit are found.

    from profilers.native import build_native, time_torchscript
    build_native()                                    # once; later calls reuse the build
    r = time_torchscript("op.pt", (1, 32, 56, 56), threads=1)
    r["median"], r["p10"], r["p90"], r["iqr"], r["n"], r["samples_ms"]

The build goes to ``$LANA_CACHE_DIR/native/<torch-version>`` (default ``~/.cache/lana/...``) and
is reused while the sources, the torch install and the build options are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from profilers.errors import BackendUnavailableError, ProfilerError

__all__ = [
    "NativeBuildError", "NativeRunError", "NativeToolMissingError", "TARGETS", "build_info",
    "build_native", "default_build_dir", "native_binary", "save_torchscript", "source_dir",
    "time_torchscript", "time_trt_engine",
]

TARGETS = ("lana_torch_bench", "lana_trt_bench")
_INFO_FILE = "lana_build.json"  # written after a successful build; its fingerprint decides reuse
_SKIPPED_FILE = "lana_skipped.txt"  # written by CMakeLists.txt: "target: reason" per line
_PROTOCOL_FIELDS = ("warmup_s", "warmup_iters", "min_iters", "min_time_s", "max_iters",
                    "noise_threshold", "retries")


class NativeBuildError(ProfilerError):
    """Configuring or compiling the native timers failed; the message points at the log."""


class NativeToolMissingError(NativeBuildError, BackendUnavailableError):
    """cmake or a C++ compiler is not installed; the message says how to install it."""


class NativeRunError(ProfilerError):
    """A native timer exited with an error (missing file, wrong shapes, no GPU)."""


# --- building -----------------------------------------------------------------------------------

def source_dir() -> Path:
    """The directory holding ``CMakeLists.txt`` (the repository root of a source checkout)."""
    root = Path(os.environ.get("LANA_NATIVE_SOURCE_DIR") or Path(__file__).resolve().parent.parent)
    if not (root / "CMakeLists.txt").is_file() or not (root / "profilers" / "native").is_dir():
        raise NativeBuildError(
            f"no CMakeLists.txt with profilers/native/ under {root}; run from a source checkout of "
            "lana or set LANA_NATIVE_SOURCE_DIR to one")
    return root


def default_build_dir() -> Path:
    """``$LANA_NATIVE_BUILD_DIR``, else ``$LANA_CACHE_DIR/native/<torch-version>`` (``~/.cache/lana``)."""
    if os.environ.get("LANA_NATIVE_BUILD_DIR"):
        return Path(os.environ["LANA_NATIVE_BUILD_DIR"]).expanduser().resolve()
    import torch

    from profilers.system import cache_root

    return (cache_root() / "native" / torch.__version__).resolve()


def _find_tools() -> tuple[str, str]:
    """Paths of cmake and a C++ compiler, or an error saying how to install the missing one."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeToolMissingError(
            "cmake not found on PATH; install it (apt-get install cmake, or pip install cmake) "
            "to build the native timers")
    candidates = [os.environ["CXX"].split()[0]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return cmake, found
    raise NativeToolMissingError(
        f"no C++ compiler found (tried {', '.join(candidates)}); install one (apt-get install g++) "
        "or point CXX at it")


def _fingerprint(src: Path, compiler: str, cmake_args: Sequence[str]) -> str:
    """Hash of everything a build depends on: sources, torch install, compiler and options."""
    import torch
    import torch.utils

    h = hashlib.sha256()
    files = [src / "CMakeLists.txt", *sorted((src / "profilers" / "native").iterdir())]
    for path in files:
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (torch.__version__, torch.utils.cmake_prefix_path, compiler,
                 os.environ.get("TENSORRT_ROOT", ""), os.environ.get("CUDAToolkit_ROOT", ""),
                 *cmake_args):
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()


class _BuildLock:
    """An exclusive lock on the build directory, so parallel test workers build once."""

    def __init__(self, build_dir: Path) -> None:
        self.path = build_dir / ".lock"
        self._fh: Any = None

    def __enter__(self) -> "_BuildLock":
        self._fh = open(self.path, "w")
        try:
            import fcntl
        except ImportError:  # not POSIX: builds are not serialised
            return self
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()  # closing releases the lock


def _summary(output: str, marker: str) -> str:
    """The first line of a tool's output that contains ``marker`` (or its last line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if marker in line:
            nxt = lines[i + 1] if i + 1 < len(lines) and marker == "CMake Error" else ""
            return f"{line} {nxt}".strip()
    return lines[-1] if lines else "no output"


def _run_logged(cmd: Sequence[str], cwd: Path, log: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    return proc


def _binary_path(build_dir: Path, name: str) -> Path | None:
    for candidate in (build_dir / name, build_dir / "Release" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def build_info(build_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What the last build in ``build_dir`` produced: ``built`` {target: path}, ``skipped``
    {target: reason}, ``build_s``, ``fingerprint``; empty when it was never built."""
    path = Path(build_dir) if build_dir is not None else default_build_dir()
    try:
        return json.loads((path / _INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}


def build_native(build_dir: str | os.PathLike | None = None, *, force: bool = False,
                 jobs: int | None = None, cmake_args: Sequence[str] = ()) -> Path:
    """Configure and build the native timers; returns the build directory.

    Reuses a previous build in ``build_dir`` when its fingerprint (sources, torch version and
    install, compiler, TENSORRT_ROOT, ``cmake_args``) matches, so only the first call pays for
    compiling against libtorch (a minute or two). ``lana_trt_bench`` is built when CMake finds
    TensorRT and CUDA; otherwise, or when it does not compile, the reason is recorded under
    ``skipped`` in :func:`build_info` and the torch timer is still usable.
    """
    build = Path(build_dir) if build_dir is not None else default_build_dir()
    src = source_dir()
    cmake, compiler = _find_tools()
    fingerprint = _fingerprint(src, compiler, cmake_args)
    build.mkdir(parents=True, exist_ok=True)
    with _BuildLock(build):
        info = build_info(build)
        if (not force and info.get("fingerprint") == fingerprint
                and all(_binary_path(build, name) for name in info.get("built", {}))):
            return build
        _configure_and_build(build, src, cmake, compiler, fingerprint, jobs, cmake_args)
    return build


def _configure_and_build(build: Path, src: Path, cmake: str, compiler: str, fingerprint: str,
                         jobs: int | None, cmake_args: Sequence[str]) -> None:
    import torch.utils

    log = build / "lana_build.log"
    log.write_text("")
    (build / _INFO_FILE).unlink(missing_ok=True)
    start = time.perf_counter()
    configure = [cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 f"-DCMAKE_CXX_COMPILER={compiler}", *cmake_args]
    if not (build / "CMakeCache.txt").exists() and shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    proc = _run_logged(configure, build, log)
    if proc.returncode != 0:
        if ("No CMAKE_CXX_COMPILER could be found" in proc.stdout
                or "is not able to compile a simple test program" in proc.stdout):
            raise NativeToolMissingError(
                f"CMake found no working C++ compiler ({compiler}); install g++ (apt-get install g++) "
                f"or point CXX at one; log: {log}")
        raise NativeBuildError(
            f"configuring the native timers failed: {_summary(proc.stdout, 'CMake Error')}; "
            f"full log: {log}")

    skipped: dict[str, str] = {}
    skipped_file = build / _SKIPPED_FILE
    if skipped_file.exists():
        for line in skipped_file.read_text().splitlines():
            target, sep, reason = line.partition(": ")
            if sep:
                skipped[target.strip()] = reason.strip()

    parallel = ["--parallel", str(jobs or os.cpu_count() or 1)]
    built: dict[str, str] = {}
    for target in TARGETS:
        if target in skipped:
            continue
        proc = _run_logged([cmake, "--build", str(build), "--config", "Release", "--target", target,
                            *parallel], build, log)
        if proc.returncode != 0:
            reason = f"compiling failed: {_summary(proc.stdout, 'error:')}; full log: {log}"
            if target == "lana_torch_bench":
                raise NativeBuildError(f"building lana_torch_bench failed: {reason}")
            skipped[target] = reason  # an optional timer that does not compile must not block the rest
            continue
        binary = _binary_path(build, target)
        if binary is None:
            raise NativeBuildError(f"{target} built but no executable appeared in {build}; see {log}")
        built[target] = str(binary)

    info = {"fingerprint": fingerprint, "built": built, "skipped": skipped,
            "build_s": round(time.perf_counter() - start, 3), "source_dir": str(src),
            "compiler": compiler, "python": sys.executable}
    tmp = build / (_INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, build / _INFO_FILE)


def native_binary(name: str = "lana_torch_bench", build_dir: str | os.PathLike | None = None) -> Path:
    """Path of a native timer, building (or reusing) the harness first.

    Raises :class:`profilers.errors.BackendUnavailableError` with CMake's reason when the timer
    was skipped on this machine (e.g. TensorRT not found).
    """
    if name not in TARGETS:
        raise ProfilerError(f"unknown native timer {name!r}; valid: {', '.join(TARGETS)}")
    build = build_native(build_dir)
    binary = _binary_path(build, name)
    if binary is None:
        reason = build_info(build).get("skipped", {}).get(name, "it was not built")
        raise BackendUnavailableError(f"{name} is not available on this machine: {reason}")
    return binary


# --- running ------------------------------------------------------------------------------------

def _protocol_args(protocol: Any, overrides: Mapping[str, Any]) -> list[str]:
    """Command-line flags for a :class:`profilers.timing.Protocol` (or a mapping) plus overrides."""
    values: dict[str, Any] = {}
    if protocol is not None:
        data = protocol if isinstance(protocol, Mapping) else protocol.to_dict()
        values.update({k: data[k] for k in _PROTOCOL_FIELDS if k in data})
    values.update({k: v for k, v in overrides.items() if v is not None})
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _shapes(input_shape: Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """One shape ``(1, 3, 32, 32)`` or several ``[(1, 3, 32, 32), (1, 10)]``, validated."""
    shapes = list(input_shape)
    if not shapes:
        raise ProfilerError("input_shape is empty; pass a shape like (1, 3, 224, 224)")
    if all(isinstance(d, int) for d in shapes):
        shapes = [tuple(shapes)]
    out = []
    for shape in shapes:
        if isinstance(shape, (str, bytes)) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProfilerError(
                f"bad input shape {shape!r}; pass non-negative ints like (1, 3, 224, 224), or a list "
                "of such shapes for a module with several inputs")
        out.append(tuple(shape))
    return out


def _run(cmd: list[str], timeout_s: float | None) -> dict[str, Any]:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise NativeRunError(f"{Path(cmd[0]).name} did not finish in {timeout_s} s; lower "
                             "min_time_s/max_s or raise timeout_s") from None
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        message = errors[-1][len("error: "):] if errors else (proc.stderr.strip().splitlines() or
                                                              [f"exit code {proc.returncode}"])[-1]
        raise NativeRunError(f"{Path(cmd[0]).name}: {message}")
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise NativeRunError(f"{Path(cmd[0]).name} printed no JSON result; rebuild with "
                             "build_native(force=True)") from None
    if proc.stderr.strip():
        result["stderr"] = proc.stderr.strip()
    return result


def time_torchscript(path: str | os.PathLike, input_shape: Sequence[int] | Sequence[Sequence[int]],
                     threads: int = 1, *, interop_threads: int = 1, device: str = "cpu",
                     dtype: str = "float32", protocol: Any = None, warmup_s: float | None = None,
                     warmup_iters: int | None = None, min_iters: int | None = None,
                     min_time_s: float | None = None, max_iters: int | None = None,
                     noise_threshold: float | None = None, retries: int | None = None,
                     max_s: float | None = None, jit_optimize: bool = True,
                     malloc: str = "warm", build_dir: str | os.PathLike | None = None,
                     timeout_s: float | None = 600.0) -> dict[str, Any]:
    """Time a ``torch.jit.save``-d module with ``lana_torch_bench``; returns its JSON result.

    The result holds ``median``, ``p10``, ``p90``, ``iqr``, ``n``, ``samples_ms`` (ms), ``threads``,
    ``device``, ``noisy`` and the protocol actually used. ``protocol`` is a
    :class:`profilers.timing.Protocol` (or a mapping of its fields); keyword arguments override
    single fields, and the binary's defaults equal ``Protocol()``'s. Inputs are random tensors
    of ``input_shape`` created on ``device`` before timing. ``malloc="warm"`` keeps freed memory
    in the process (glibc no longer trims or mmaps activations) as in a long-running process;
    ``"default"`` leaves glibc alone, and then a fresh process page-faults its activations in on
    every call.
    """
    module = Path(path)
    if not module.is_file():
        raise NativeRunError(f"TorchScript module not found: {module}; save one with "
                             "torch.jit.save(torch.jit.script(module), path)")
    if threads < 1 or interop_threads < 1:
        raise ProfilerError("threads and interop_threads must be at least 1")
    binary = native_binary("lana_torch_bench", build_dir)
    cmd = [str(binary), "--module", str(module), "--threads", str(threads),
           "--interop-threads", str(interop_threads), "--device", device, "--dtype", dtype,
           "--jit-optimize", "1" if jit_optimize else "0", "--malloc", malloc]
    for shape in _shapes(input_shape):
        cmd += ["--input", "x".join(str(d) for d in shape)]
    cmd += _protocol_args(protocol, {
        "warmup_s": warmup_s, "warmup_iters": warmup_iters, "min_iters": min_iters,
        "min_time_s": min_time_s, "max_iters": max_iters, "noise_threshold": noise_threshold,
        "retries": retries, "max_s": max_s})
    return _run(cmd, timeout_s)


def time_trt_engine(onnx_path: str | os.PathLike, precision: str = "fp32", *,
                    shapes: Mapping[str, Sequence[int]] | None = None, workspace_mb: int = 1024,
                    device: int = 0, save_engine: str | os.PathLike | None = None,
                    protocol: Any = None, warmup_s: float | None = None,
                    warmup_iters: int | None = None, min_iters: int | None = None,
                    min_time_s: float | None = None, max_iters: int | None = None,
                    noise_threshold: float | None = None, retries: int | None = None,
                    max_s: float | None = None, build_dir: str | os.PathLike | None = None,
                    timeout_s: float | None = 1800.0) -> dict[str, Any]:
    """Build a TensorRT engine from ``onnx_path`` at ``precision`` (fp32/fp16) and time enqueueV3.

    Each sample is the CUDA-event time of one enqueueV3 on a stream, buffers already on the
    device. ``shapes`` fixes dynamic inputs ({name: shape}). Raises
    :class:`profilers.errors.BackendUnavailableError` where ``lana_trt_bench`` was not built.
    """
    onnx_file = Path(onnx_path)
    if not onnx_file.is_file():
        raise NativeRunError(f"ONNX file not found: {onnx_file}; export one with "
                             "torch.onnx.export(module, x, path)")
    if precision not in ("fp32", "fp16"):
        raise ProfilerError(f"unknown precision {precision!r}; use fp32 or fp16")
    binary = native_binary("lana_trt_bench", build_dir)
    cmd = [str(binary), "--onnx", str(onnx_file), "--precision", precision,
           "--workspace-mb", str(workspace_mb), "--device", str(device)]
    for name, shape in (shapes or {}).items():
        (dims,) = _shapes(shape)
        cmd += ["--shape", f"{name}={'x'.join(str(d) for d in dims)}"]
    if save_engine is not None:
        cmd += ["--save-engine", str(save_engine)]
    cmd += _protocol_args(protocol, {
        "warmup_s": warmup_s, "warmup_iters": warmup_iters, "min_iters": min_iters,
        "min_time_s": min_time_s, "max_iters": max_iters, "noise_threshold": noise_threshold,
        "retries": retries, "max_s": max_s})
    return _run(cmd, timeout_s)


def save_torchscript(module: Any, input_shape: Sequence[int] | Sequence[Sequence[int]],
                     path: str | os.PathLike) -> Path:
    """Script ``module`` (tracing it on random inputs where scripting fails) and save it.

    The module is put in eval mode first: a LUT times inference.
    """
    import torch

    module = module.eval()
    try:
        scripted = torch.jit.script(module)
    except Exception as script_error:  # TorchScript rejects many Python constructs; trace instead
        example = tuple(torch.randn(s) for s in _shapes(input_shape))
        try:
            with torch.no_grad():
                scripted = torch.jit.trace(module, example)
        except Exception as trace_error:
            raise ProfilerError(
                f"could not script ({str(script_error).splitlines()[0]}) or trace "
                f"({str(trace_error).splitlines()[0]}) {type(module).__name__}; make its forward "
                "TorchScript-compatible") from trace_error
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(out))
    return out


"""What a measurement actually ran on: CPU model, usable physical cores, GPU, driver, library versions.

A LUT records this next to the preset it was asked for, so a LUT measured on the wrong machine is
recognisable afterwards.  Everything here is read without importing heavy libraries (versions
come from package metadata), except the GPU name on machines without ``nvidia-smi``, which asks
torch only when torch is already imported.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "onnx", "onnxruntime", "tensorrt", "pycuda")


def cache_root() -> Path:
    """Where lana keeps what it can make again (exports, the native build, benchmark LUTs):
    ``$LANA_CACHE_DIR``, else ``$XDG_CACHE_HOME/lana``, else ``~/.cache/lana``."""
    root = os.environ.get("LANA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lana")
    # absolute: a relative $LANA_CACHE_DIR would name another folder after a change of directory
    return Path(root).expanduser().absolute()


_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def cpu_model() -> str:
    """The CPU model string (``model name`` in /proc/cpuinfo, else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> list[int]:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the usable logical CPUs (hyper-threads of one core count once)."""
    cores: set[tuple[str, str]] = set()
    cpus = usable_cpus()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def _nvidia_smi() -> dict[str, str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    first = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in first:
        return {}
    name, driver = (part.strip() for part in first.split(",", 1))
    return {"gpu": name, "driver": driver}


def gpu_info() -> dict[str, str | None]:
    """GPU name and driver version, or ``None`` for each where there is no GPU to be seen."""
    info: dict[str, str | None] = {"gpu": None, "driver": None}
    info.update(_nvidia_smi())
    if info["gpu"] is None and "torch" in sys.modules:
        torch = sys.modules["torch"]
        try:
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except (RuntimeError, AssertionError):
            pass
    return info


def library_version(name: str) -> str | None:
    """Installed version of a library, from package metadata (no import)."""
    names = _ORT_DISTRIBUTIONS if name == "onnxruntime" else (name,)
    for dist in names:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def seen(*, gpu: bool = True) -> dict[str, Any]:
    """The ``device.seen`` block of a LUT: what this process actually runs on."""
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": len(usable_cpus()),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    out.update(gpu_info() if gpu else {"gpu": None, "driver": None})
    for lib in LIBRARIES:
        out[lib] = library_version(lib)
    return out

"""The native timers: a real CMake build against the installed libtorch, real timed runs.

The build is session-scoped and cached (``$LANA_CACHE_DIR/native/<torch-version>``), so only the
first run on a machine compiles. Tests skip with the reason when cmake or a C++ compiler is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from profilers import native
from profilers.errors import BackendUnavailableError, ProfilerError
from profilers.timing import Protocol

# Short runs: these tests check the harness, not the speed of the machine.
QUICK = {"warmup_s": 0.01, "warmup_iters": 2, "min_iters": 20, "min_time_s": 0.05}


@pytest.fixture(scope="session")
def build_dir() -> Path:
    try:
        return native.build_native()
    except native.NativeToolMissingError as e:
        pytest.skip(f"native timers cannot be built here: {e}")


class TinyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


@pytest.fixture(scope="session")
def tiny_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("native") / "tiny.pt"
    return native.save_torchscript(TinyBlock(), (1, 4, 16, 16), path)


def test_build_reports_every_target(build_dir: Path) -> None:
    info = native.build_info(build_dir)
    assert set(info["built"]) | set(info["skipped"]) == set(native.TARGETS)
    assert "lana_torch_bench" in info["built"]
    for target, reason in info["skipped"].items():
        assert reason, f"{target} skipped without a reason"
    assert info["build_s"] >= 0


def test_build_is_reused(build_dir: Path) -> None:
    info_file = build_dir / "lana_build.json"
    binary = native.native_binary("lana_torch_bench", build_dir)
    before = (info_file.stat().st_mtime_ns, binary.stat().st_mtime_ns)
    assert native.build_native(build_dir) == build_dir
    assert (info_file.stat().st_mtime_ns, binary.stat().st_mtime_ns) == before


def test_torchscript_result_fields(build_dir: Path, tiny_module: Path) -> None:
    r = native.time_torchscript(tiny_module, (1, 4, 16, 16), threads=1, build_dir=build_dir, **QUICK)
    for key in ("median", "p10", "p90", "iqr", "n", "samples_ms", "threads", "device", "noisy"):
        assert key in r, key
    samples = np.asarray(r["samples_ms"])
    assert r["n"] == len(samples) >= QUICK["min_iters"]
    assert (samples > 0).all()
    assert r["median"] > 0
    # Every statistic is the numpy-default percentile of the raw samples.
    assert r["median"] == pytest.approx(np.median(samples), rel=1e-12)
    assert r["p10"] == pytest.approx(np.percentile(samples, 10), rel=1e-12)
    assert r["p90"] == pytest.approx(np.percentile(samples, 90), rel=1e-12)
    assert r["iqr"] == pytest.approx(np.subtract(*np.percentile(samples, [75, 25])), rel=1e-9, abs=1e-12)
    assert r["p10"] <= r["median"] <= r["p90"]
    assert r["threads"] == 1 and r["interop_threads"] == 1
    assert r["device"] == "cpu" and r["clock"] == "steady_clock"
    assert r["inputs"] == ["1x4x16x16"]
    assert r["malloc"] == "warm" and r["dtype"] == "float32"
    assert r["timed_s"] >= QUICK["min_time_s"]
    assert r["protocol"]["min_iters"] == QUICK["min_iters"]


def test_protocol_object_and_iteration_caps(build_dir: Path, tiny_module: Path) -> None:
    # min_time_s 0 and a fixed count: exactly min_iters samples per attempt.
    p = Protocol(warmup_s=0.0, warmup_iters=1, min_iters=17, min_time_s=0.0, max_iters=17)
    r = native.time_torchscript(tiny_module, (1, 4, 16, 16), protocol=p, build_dir=build_dir)
    assert r["n"] == 17 and r["protocol"]["max_iters"] == 17
    assert r["warmup_iters_run"] >= 1
    # max_iters stops a run whose min_time_s is out of reach.
    r = native.time_torchscript(tiny_module, (1, 4, 16, 16), build_dir=build_dir, warmup_iters=1,
                                warmup_s=0.0, min_iters=5, max_iters=9, min_time_s=30.0, retries=0)
    assert r["n"] == 9 and r["stopped_by"] == "max_iters"


def test_threads_are_set_explicitly(build_dir: Path, tiny_module: Path) -> None:
    r = native.time_torchscript(tiny_module, (1, 4, 16, 16), threads=2, interop_threads=1,
                                build_dir=build_dir, **QUICK)
    assert r["threads"] == 2


def test_multiple_inputs(build_dir: Path, tmp_path: Path) -> None:
    class Add(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    path = native.save_torchscript(Add(), [(2, 3), (2, 3)], tmp_path / "add.pt")
    r = native.time_torchscript(path, [(2, 3), (2, 3)], build_dir=build_dir, **QUICK)
    assert r["inputs"] == ["2x3", "2x3"] and r["median"] > 0


def test_missing_module_file(build_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(native.NativeRunError, match="not found"):
        native.time_torchscript(tmp_path / "absent.pt", (1, 4, 16, 16), build_dir=build_dir)
    # The binary itself refuses too, with one `error:` line and exit code 2.
    binary = native.native_binary("lana_torch_bench", build_dir)
    proc = subprocess.run([str(binary), "--module", str(tmp_path / "absent.pt"), "--input", "1x4"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: module file not found")


def test_corrupt_module_and_wrong_shape(build_dir: Path, tiny_module: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(native.NativeRunError, match="could not load TorchScript module"):
        native.time_torchscript(bad, (1, 4, 16, 16), build_dir=build_dir, **QUICK)
    with pytest.raises(native.NativeRunError, match="channels"):
        native.time_torchscript(tiny_module, (1, 3, 16, 16), build_dir=build_dir, **QUICK)


def test_bad_arguments(build_dir: Path, tiny_module: Path) -> None:
    with pytest.raises(ProfilerError, match="bad input shape"):
        native.time_torchscript(tiny_module, [(1, -4, 16, 16)], build_dir=build_dir)
    with pytest.raises(native.NativeRunError, match="max-iters"):
        native.time_torchscript(tiny_module, (1, 4, 16, 16), build_dir=build_dir, min_iters=10,
                                max_iters=5)
    if not torch.cuda.is_available():
        with pytest.raises(native.NativeRunError, match="CUDA is not available"):
            native.time_torchscript(tiny_module, (1, 4, 16, 16), device="cuda", build_dir=build_dir)


def test_missing_cmake_is_one_line_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(native.NativeToolMissingError, match="install") as info:
        native.build_native(tmp_path / "build")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, BackendUnavailableError)


@pytest.mark.gpu
def test_torchscript_on_cuda(build_dir: Path, tiny_module: Path) -> None:
    info = native.build_info(build_dir)
    r = native.time_torchscript(tiny_module, (1, 4, 16, 16), device="cuda", build_dir=build_dir,
                                **QUICK)
    assert r["clock"] == "cuda_event" and r["device"] == "cuda:0", info
    assert r["median"] > 0 and r["n"] == len(r["samples_ms"])


@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_engine_timer(build_dir: Path, tmp_path: Path, precision: str) -> None:
    skipped = native.build_info(build_dir).get("skipped", {})
    if "lana_trt_bench" in skipped:
        pytest.skip(f"lana_trt_bench was not built: {skipped['lana_trt_bench']}")
    onnx_path = tmp_path / "tiny.onnx"
    torch.onnx.export(TinyBlock().eval(), (torch.randn(1, 4, 16, 16),), str(onnx_path),
                      input_names=["x"], output_names=["y"], opset_version=17)
    r = native.time_trt_engine(onnx_path, precision, build_dir=build_dir, **QUICK)
    assert r["precision"] == precision and r["clock"] == "cuda_event"
    assert r["n"] == len(r["samples_ms"]) >= QUICK["min_iters"]
    assert r["median"] > 0
    assert r["median"] == pytest.approx(np.median(r["samples_ms"]), rel=1e-12)
    assert r["io"]["x"] == "input 1x4x16x16"
    assert r["engine_build_s"] > 0
    with pytest.raises(native.NativeRunError, match="not found"):
        native.time_trt_engine(tmp_path / "absent.onnx", precision, build_dir=build_dir)


def test_trt_timer_unavailable_is_explained(build_dir: Path, tmp_path: Path) -> None:
    skipped = native.build_info(build_dir).get("skipped", {})
    if "lana_trt_bench" not in skipped:
        pytest.skip("lana_trt_bench is built on this machine; the TensorRT test covers it")
    onnx_path = tmp_path / "tiny.onnx"
    onnx_path.write_bytes(b"placeholder")  # never parsed: the timer is missing
    with pytest.raises(BackendUnavailableError, match="lana_trt_bench is not available") as info:
        native.time_trt_engine(onnx_path, build_dir=build_dir)
    assert skipped["lana_trt_bench"] in str(info.value)
    # What CMake printed when it skipped the timer is recorded for the user.
    assert json.loads((build_dir / "lana_build.json").read_text())["skipped"] == skipped
    assert os.path.isfile(build_dir / "lana_skipped.txt")

"""The ONNX Runtime and PyTorch-CPU backends on a real small ONNX file / module; GPU backends skip."""

import sys

import numpy as np
import pytest
import torch

from profilers import BackendConfig, BuildError, ProfilerError, Protocol, get_backend
from profilers.backends.trt import INSTALL_HINT

TINY = Protocol(warmup_s=0.0, warmup_iters=1, min_iters=5, min_time_s=0.0, max_iters=50,
                retries=0)
SHAPE = (1, 8, 16, 16)


def small_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                               torch.nn.ReLU()).eval()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    torch.onnx.export(small_module(), (torch.randn(*SHAPE),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["output"])
    return path


def test_ort_backend_measures_a_real_onnx_file(onnx_file):
    ort_backend = get_backend("ort")
    config = BackendConfig(device="cpu", threads=1, options={"graph_optimization_level": "basic"})
    assert ort_backend.check(config) is None
    with ort_backend(onnx_file, SHAPE, config) as b:
        assert b.active and b.activate_s > 0
        m = b.measure(TINY)
        info = b.info()
        b.run()  # the bound output holds the result of the graph on the bound input
        out = b._binding.copy_outputs_to_cpu()[0]
    assert not b.active
    assert m.n >= 5 and m.median > 0 and m.p10 <= m.median <= m.p90
    assert all(s > 0 for s in m.samples_ms)
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["intra_op_threads"] == 1 and info["inter_op_threads"] == 1
    assert info["execution_mode"] == "sequential"
    assert info["graph_optimization_level"] == "basic"
    assert out.shape == (1, 16, 16, 16) and np.all(out >= 0)  # ReLU output, really computed
    assert float(np.abs(out).sum()) > 0


def test_ort_backend_reports_a_broken_model_as_a_build_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(BuildError, match="ONNX Runtime cannot load bad.onnx") as info:
        with get_backend("ort")(bad, SHAPE, BackendConfig(threads=1)):
            pass
    assert "\n" not in str(info.value)


def test_ort_check_names_missing_providers_and_bad_settings():
    ort_backend = get_backend("ort")
    reason = ort_backend.check(BackendConfig(options={"providers": ["NoSuchExecutionProvider"]}))
    assert reason is not None and "NoSuchExecutionProvider" in reason
    assert "fp32" in ort_backend.check(BackendConfig(precision="fp16"))
    assert "graph_optimization_level" in ort_backend.check(
        BackendConfig(options={"graph_optimization_level": "max"}))


def test_torch_cpu_backend_sets_threads_and_inference_mode():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_module()

        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), torch.get_num_threads()))
            return self.body(x)

    torch_backend = get_backend("torch")
    before = torch.get_num_threads()
    threads = 2 if before != 2 else 1
    with torch_backend(Probe(), SHAPE, BackendConfig(device="cpu", threads=threads)) as b:
        m = b.measure(TINY)
        assert b.info()["threads"] == threads and b.info()["timer"] == "perf_counter"
    assert torch.get_num_threads() == before  # restored
    assert m.n >= 5 and m.median > 0
    assert seen and all(mode and n == threads for mode, n in seen)


def test_torch_backend_build_error_on_a_module_that_fails():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return x.view(3, -1, 7)

    with pytest.raises(BuildError, match="module fails on input"):
        with get_backend("torch")(Broken(), SHAPE, BackendConfig(threads=1)):
            pass
    assert not torch.is_inference_mode_enabled()


def test_torch_check_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-CUDA message cannot be checked")
    reason = get_backend("torch").check(BackendConfig(device="cuda"))
    assert "no CUDA device" in reason
    assert "fp32" in get_backend("torch").check(BackendConfig(device="cpu", precision="fp16"))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_backend_times_with_events(precision):
    config = BackendConfig(device="cuda", precision=precision)
    with get_backend("torch")(small_module(), SHAPE, config) as b:
        m = b.measure(TINY)
        assert b.info()["timer"] == "cuda-events"
    assert m.n >= 5 and m.median > 0


def test_trt_missing_gives_the_install_hint():
    if "tensorrt" in sys.modules or _importable("tensorrt"):
        pytest.skip("TensorRT is installed here")
    reason = get_backend("trt").check(BackendConfig(device="cuda", precision="fp16"))
    assert reason == INSTALL_HINT and "lana[trt]" in reason and "\n" not in reason


def test_trt_timing_cache_lives_in_the_lana_cache_unless_absolute(tmp_path, monkeypatch):
    from profilers import load_preset
    from profilers.backends.trt import timing_cache_path

    monkeypatch.setenv("LANA_CACHE_DIR", str(tmp_path / "cache"))
    option = load_preset("v100-trt").backend_config().option("timing_cache")
    assert timing_cache_path(option) == tmp_path / "cache" / "trt" / "timing.cache"
    assert timing_cache_path(tmp_path / "t.cache") == tmp_path / "t.cache"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert timing_cache_path("~/t.cache") == tmp_path / "t.cache"


@pytest.mark.trt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_trt_backend_builds_and_times_an_engine(onnx_file, cuda_graph):
    config = BackendConfig(device="cuda", precision="fp16", options={"cuda_graph": cuda_graph})
    with get_backend("trt")(onnx_file, SHAPE, config) as b:
        m = b.measure(TINY)
        assert b.info()["cuda_graph"] is cuda_graph
    assert m.n >= 5 and m.median > 0


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ProfilerError, match=r"valid: .*ort.*torch.*trt"):
        get_backend("tflite")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None

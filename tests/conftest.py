import os

import pytest
import torch

# Tests share two cores with everything else; one intra-op thread keeps them predictable.
torch.set_num_threads(1)
os.environ.setdefault("LANA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".lana-cache"))


# A one-thread cpu-ort preset with a tiny protocol: what end-to-end tests measure with.
TINY_PRESET = """\
description = "cpu-ort, one thread, tiny protocol (tests)"
extends = "cpu-ort"
threads = 1
[protocol]
warmup_s = 0.0
warmup_iters = 1
min_iters = 3
min_time_s = 0.0
max_iters = 50
retries = 0
"""


@pytest.fixture(scope="session")
def tiny_device(tmp_path_factory) -> str:
    """Path of a preset TOML named ``cpu-ort-tiny``."""
    path = tmp_path_factory.mktemp("presets") / "cpu-ort-tiny.toml"
    path.write_text(TINY_PRESET)
    return str(path)


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401
        has_trt = has_cuda
    except ImportError:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none is visible"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(
                reason="needs TensorRT and a CUDA device (pip install 'lana[trt]' on a GPU machine)"))

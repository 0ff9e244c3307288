import os

import pytest
import torch

# Tests share two cores with everything else; one intra-op thread keeps them predictable.
torch.set_num_threads(1)
os.environ.setdefault("LANA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".lana-cache"))


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

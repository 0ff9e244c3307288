"""Every registered op builds, keeps its geometry, and exports to ONNX with PyTorch parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lana.errors import UnknownNameError
from lana.export import export_onnx, run_onnx
from lana.ops import POOLS, candidate_specs, create_op, deploy, get_family, list_families
from lana.spec import OpSpec

# Three geometries stand for every layer: a same-shape block (identity allowed, residuals active), a
# downsampling, channel-changing block on an odd-sized map, and the channel counts a user's network
# may have (prime, not a multiple of any head count or group size).
GEOMETRIES = {
    "same": ((16, 12, 12), (16, 12, 12), 1),
    "down": ((16, 13, 13), (24, 7, 7), 2),
    "prime": ((7, 11, 11), (37, 6, 6), 2),
}
CASES = [(geo, spec) for geo, args in GEOMETRIES.items()
         for spec in candidate_specs(*args, "full")]


def test_full_pool_has_paper_size():
    for args in GEOMETRIES.values():
        # teacher op + >= 196 others: at least 197 per layer, as in the paper
        assert len(candidate_specs(*args, "full", teacher_signature="0" * 12)) >= 197


def test_small_and_single_shot_pools():
    same, down = GEOMETRIES["same"], GEOMETRIES["down"]
    small = candidate_specs(*same, "small", teacher_signature="0" * 12)
    assert 10 <= len(small) <= 20
    assert {s.family for s in candidate_specs(*same, "single-shot", "ab")} == {"teacher", "identity"}
    # identity only where the shapes allow it
    assert [s.family for s in candidate_specs(*down, "single-shot", "ab")] == ["teacher"]
    assert "identity" not in {s.family for s in candidate_specs(*down, "full")}


def test_unknown_names_list_valid_ones():
    with pytest.raises(UnknownNameError, match="valid families: .*efn"):
        get_family("nope")
    with pytest.raises(UnknownNameError, match="valid pools: full, small, single-shot"):
        candidate_specs(*GEOMETRIES["same"], "huge")
    assert POOLS == ("full", "small", "single-shot")
    assert set(list_families("cb_*")) == {"cb_stack", "cb_bottle", "cb_res"}


@pytest.mark.parametrize("geo,spec", CASES, ids=[f"{g}-{s.key.split('|')[0]}" for g, s in CASES])
def test_op_onnx_parity(geo, spec: OpSpec, tmp_path):
    torch.manual_seed(0)
    module = create_op(spec)
    # Non-trivial batch-norm statistics so that fused and unfused forms really differ if fusion is wrong.
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    module.eval()
    x = torch.randn(2, *spec.in_shape)
    with torch.no_grad():
        before = module(x)
        deploy(module)
        y = module(x)
    assert tuple(y.shape) == (2, *spec.out_shape)
    torch.testing.assert_close(y, before, rtol=1e-4, atol=1e-4)  # deploy() keeps the function
    path = export_onnx(module, (2, *spec.in_shape), cache_dir=tmp_path)
    out = run_onnx(path, x)
    err = float(np.max(np.abs(out - y.numpy())) / (1.0 + float(y.abs().max())))
    assert err < 1e-4, f"{spec.key}: relative ONNX Runtime error {err:.2e}"

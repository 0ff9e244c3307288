"""Every built-in teacher, and a teacher with layers replaced, exports to ONNX with PyTorch parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lana.export import cached_export, content_hash, export_onnx, run_onnx
from lana.ops import create_op, deploy
from lana.spec import OpSpec
from lana.teachers import create_teacher, list_teachers

TEACHERS = [info.name for info in list_teachers()]


def _randomise_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)


def _parity(model: torch.nn.Module, shape, tmp_path) -> float:
    x = torch.randn(1, *shape)
    with torch.no_grad():
        y = model.eval()(x)
    out = run_onnx(export_onnx(model, (1, *shape), cache_dir=tmp_path), x, threads=2)
    return float(np.max(np.abs(out - y.numpy())) / (1.0 + float(y.abs().max())))


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_onnx_parity(name, tmp_path):
    torch.manual_seed(0)
    teacher = create_teacher(name, pretrained=(name == "demo"))
    if name != "demo":
        _randomise_bn(teacher.model)
    assert _parity(teacher.model, teacher.input_shape, tmp_path) < 1e-3


def test_replaced_teacher_onnx_parity(tmp_path):
    torch.manual_seed(0)
    teacher = create_teacher("demo")
    swaps = {}
    for i, layer in enumerate(teacher.layers):
        if i % 2 == 0:
            family, params = ("identity", {}) if layer.in_shape == layer.out_shape and \
                layer.stride == 1 else ("cb_stack", {"k": 3, "w": 0.5})
            spec = OpSpec.make(family, layer.in_shape, layer.out_shape, layer.stride, **params)
            swaps[i] = deploy(create_op(spec))
    student = teacher.replaced(swaps)
    assert _parity(student, teacher.input_shape, tmp_path) < 1e-4


def test_export_cache_hits_and_content_hash(tmp_path):
    torch.manual_seed(0)
    spec = OpSpec.make("cb_stack", (8, 8, 8), (8, 8, 8), 1, k=3, w=0.5)
    a = create_op(spec).eval()
    first = export_onnx(a, (1, 8, 8, 8), cache_dir=tmp_path)
    inode = first.stat().st_ino
    assert export_onnx(a, (1, 8, 8, 8), cache_dir=tmp_path) == first
    assert first.stat().st_ino == inode  # served from the cache, not re-exported (a new file)
    assert cached_export(a, (1, 8, 8, 8), cache_dir=tmp_path) == (first, False)
    assert cached_export(a, (1, 8, 8, 8), cache_dir=tmp_path / "other") == (
        tmp_path / "other" / first.name, True)
    b = create_op(spec).eval()  # other weights: another content hash, another file
    assert content_hash(a, (1, 8, 8, 8)) != content_hash(b, (1, 8, 8, 8))
    assert export_onnx(b, (1, 8, 8, 8), cache_dir=tmp_path) != first
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def test_content_hash_sees_attributes_repr_leaves_out():
    # vit ops that differ only in head count have the same repr and, seeded alike, the same weights
    keys = [OpSpec.make("vit", (16, 8, 8), (16, 8, 8), 1, d=1, w=32, h=h) for h in (4, 8)]
    hashes = []
    for spec in keys:
        torch.manual_seed(0)
        hashes.append(content_hash(create_op(spec).eval(), (1, 16, 8, 8)))
    assert hashes[0] != hashes[1]


def test_a_full_disk_is_the_machines_problem_not_the_ops(tmp_path, monkeypatch):
    import errno

    import lana.export

    def full(path, data, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lana.export, "write_bytes", full)
    module = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(lana.export.StorageError, match=r"no room for the 0 MB ONNX file of Conv2d "
                       r"in .* \(disk full\); free space there \(`lana cache prune`\)"):
        export_onnx(module, (1, 3, 8, 8), cache_dir=tmp_path)
    assert not isinstance(lana.export.StorageError("x"), lana.export.ExportError)

"""``Teacher.replaced``, ``Teacher.skeleton`` and the ShapeAdapter (with a real ONNX export)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import lana.teachers as T
from lana.errors import LanaError
from lana.teachers import ShapeAdapter


@pytest.fixture(scope="module")
def demo() -> T.Teacher:
    return T.create_teacher("demo", pretrained=False)


@pytest.mark.parametrize("in_shape,out_shape,stride", [
    ((16, 32, 32), (24, 32, 32), 1),  # channel pad
    ((40, 16, 16), (24, 8, 8), 2),  # channel cut + stride
    ((24, 7, 7), (24, 4, 4), 2),  # odd size: ceil like a padded strided conv
    ((8, 9, 9), (12, 3, 3), 3),
])
def test_shape_adapter_shapes(in_shape, out_shape, stride):
    x = torch.randn(2, *in_shape)
    y = ShapeAdapter(in_shape, out_shape, stride)(x)
    assert tuple(y.shape) == (2, *out_shape)
    c = min(in_shape[0], out_shape[0])
    h = min(out_shape[1], -(-in_shape[1] // stride))
    w = min(out_shape[2], -(-in_shape[2] // stride))
    assert torch.equal(y[:, :c, :h, :w], x[:, :c, ::stride, ::stride][:, :, :h, :w])
    assert torch.count_nonzero(y[:, c:]) == 0


def test_replaced_swaps_layers_in_a_copy(demo):
    before = {k: v.clone() for k, v in demo.model.state_dict().items()}
    i = next(l.index for l in demo.layers if l.in_shape == l.out_shape)
    new = nn.Identity()
    net = demo.replaced({i: new})
    assert net.get_submodule(demo.layers[i].name) is new
    assert demo.layer_module(i) is not new  # the teacher is untouched
    assert not net.training
    x = torch.randn(3, *demo.input_shape)
    assert tuple(net(x).shape) == (3, demo.num_classes)
    other = demo.layers[0].name
    assert net.get_submodule(other) is not demo.model.get_submodule(other)  # deep copy
    after = demo.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_replaced_rejects_bad_indices(demo):
    with pytest.raises(LanaError, match="out of range"):
        demo.replaced({len(demo.layers): nn.Identity()})


def test_replacing_with_the_teacher_layer_keeps_the_output(demo):
    x = torch.randn(2, *demo.input_shape)
    import copy
    net = demo.replaced({i: copy.deepcopy(demo.layer_module(i)) for i in range(demo.n_layers)})
    with torch.no_grad():
        assert torch.allclose(net(x), demo.model(x), atol=1e-5)


def test_skeleton_runs_and_exports(demo):
    import onnxruntime as ort

    skel = demo.skeleton()
    adapters = [m for m in skel.modules() if isinstance(m, ShapeAdapter)]
    assert len(adapters) == demo.n_layers
    assert sum(p.numel() for p in skel.parameters()) < demo.num_params
    x = torch.randn(1, *demo.input_shape)
    with torch.no_grad():
        ref = skel(x)
    assert tuple(ref.shape) == (1, demo.num_classes)
    buf = io.BytesIO()
    torch.onnx.export(skel, (x,), buf, opset_version=17, dynamo=False, input_names=["x"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy()})
    assert np.allclose(out, ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ["efficientnetv2_b0", "resnest50d_1s4x24d"])
def test_skeleton_of_big_teachers_gives_logits(name):
    t = T.create_teacher(name, pretrained=False)
    skel = t.skeleton()
    with torch.no_grad():
        out = skel(torch.randn(1, *t.input_shape))
    assert tuple(out.shape) == (1, t.num_classes)


def test_teacher_layers_export_to_onnx_standalone():
    # The "teacher" op of a layer is a copy of its module; with TF padding it must still export.
    import onnxruntime as ort

    t = T.create_teacher("efficientnetv2_b0", pretrained=False)
    layer = next(l for l in t.layers if l.stride == 2)
    module = t.layer_module(layer.index)
    x = torch.randn(1, *layer.in_shape)
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, opset_version=17, dynamo=False, input_names=["x"])
    (out,) = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})
    assert out.shape == (1, *layer.out_shape)
    with torch.no_grad():
        assert np.allclose(out, module(x).numpy(), atol=1e-4)

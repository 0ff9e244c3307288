"""Every registered teacher builds, traces at its real resolution, and matches timm's layout."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lana.teachers as T
from lana.errors import UnknownNameError
from lana.spec import op_key, parse_key
from .timm_reference import timm_table

NAMES = T.list_teacher_names()


@pytest.fixture(scope="module")
def built() -> dict:
    """Each teacher built and traced once for this module (B6 at 528 px included)."""
    return {}


@pytest.fixture(scope="module")
def infos() -> dict[str, T.TeacherInfo]:
    return {i.name: i for i in T.list_teachers()}


def teacher(built: dict, name: str) -> T.Teacher:
    if name not in built:
        built[name] = T.create_teacher(name, pretrained=False)
    return built[name]


def test_registry_has_the_built_in_families():
    assert {f"efficientnet_b{i}" for i in range(7)} <= set(NAMES)
    assert {f"efficientnetv2_b{i}" for i in range(4)} <= set(NAMES)
    assert {"resnest50d_1s4x24d", "demo"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_teacher_builds_and_traces(built, name):
    t = teacher(built, name)
    entry = T.get_entry(name)
    assert t.input_shape == entry.input_shape
    assert t.model.training is False
    assert [layer.index for layer in t.layers] == list(range(len(t.layers)))
    assert len({layer.name for layer in t.layers}) == len(t.layers)
    # The layers of these networks run one after another: shapes chain.
    for a, b in T.base.iter_layer_pairs(t.layers):
        assert a.out_shape == b.in_shape, (a, b)
    for layer in t.layers:
        assert -(-layer.in_shape[1] // layer.stride) == layer.out_shape[1]
        assert layer.stride in (1, 2)
        assert len(layer.signature) == 12 and int(layer.signature, 16) >= 0
        spec = t.teacher_spec(layer.index)
        assert parse_key(op_key(spec)) == spec
        assert spec.param("sig") == layer.signature
    # Total downsampling of the traced layers matches the input/last-layer resolution ratio.
    size = t.layers[0].in_shape[1]
    for layer in t.layers:
        size = -(-size // layer.stride)
    assert size == t.layers[-1].out_shape[1]


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("efficientnet")])
def test_efficientnet_layers_are_the_mbconv_blocks(built, name):
    t = teacher(built, name)
    kinds = {type(t.layer_module(i)).__name__ for i in range(t.n_layers)}
    assert kinds <= {"DepthwiseSeparableConv", "InvertedResidual", "EdgeResidual", "ConvBnAct"}
    assert all(layer.name.startswith("blocks.") for layer in t.layers)
    res = t.input_shape[1]
    assert t.layers[0].in_shape[1] == -(-res // 2)  # after the stride-2 stem
    assert t.layers[-1].out_shape[1] == -(-res // 32)


def test_layer_counts_follow_depth_scaling(built):
    # sum(ceil(repeats * depth)) over the 7 stages of EfficientNet-B0 (1, 2, 2, 3, 3, 4, 1)
    base = (1, 2, 2, 3, 3, 4, 1)
    for name, depth in (("efficientnet_b0", 1.0), ("efficientnet_b3", 1.4),
                        ("efficientnet_b6", 2.6)):
        expected = sum(math.ceil(r * depth) for r in base)
        assert teacher(built, name).n_layers == expected
    assert teacher(built, "resnest50d_1s4x24d").n_layers == 16


@pytest.mark.parametrize("name", [n for n in NAMES if T.get_entry(n).timm_compatible])
def test_parameter_names_and_shapes_match_timm(built, name):
    t = teacher(built, name)
    ours = {k: tuple(v.shape) for k, v in t.model.state_dict().items()}
    ref = timm_table(T.get_entry(name).timm_name)
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}


def test_known_parameter_counts(infos):
    # Published parameter counts of the reference models (1000 classes).
    known = {"efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184,
             "efficientnet_b2": 9_109_994, "efficientnet_b3": 12_233_232,
             "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
             "efficientnet_b6": 43_040_704}
    for name, count in known.items():
        assert infos[name].params == count, name


def test_timm_state_dict_loads_strictly(tmp_path, built):
    # A state_dict laid out as timm's (names + shapes from the reference table) loads as is.
    ref = timm_table("tf_efficientnetv2_b0")
    state = {k: (torch.full(s, 0.5) if s else torch.tensor(7)) for k, s in ref.items()}
    path = tmp_path / "tf_efficientnetv2_b0.pth"
    torch.save(state, path)
    t = T.create_teacher("efficientnetv2_b0", weights=path)
    assert t.pretrained and t.weights == str(path)
    assert float(t.model.get_submodule("blocks.5.0.conv_pwl").weight.detach().mean()) == 0.5


def test_list_teachers_agrees_with_built(built, infos):
    assert sorted(infos) == NAMES
    for info in infos.values():
        if info.name in ("demo", "efficientnet_b0", "resnest50d_1s4x24d"):
            t = teacher(built, info.name)
            assert info.n_layers == t.n_layers
            assert info.params == t.num_params
            assert info.input_shape == t.input_shape
            assert info.num_classes == t.num_classes
        json.dumps(info.to_dict())


def test_unknown_teacher_lists_valid_names():
    with pytest.raises(UnknownNameError) as exc:
        T.create_teacher("efficientnet_b9")
    msg = str(exc.value)
    assert "efficientnet_b0" in msg and "demo" in msg and "file.py:factory" in msg
    assert "\n" not in msg


def test_non_demo_teachers_have_no_shipped_weights(built):
    assert teacher(built, "efficientnet_b0").pretrained is False


def test_identical_blocks_share_a_signature(built):
    t = teacher(built, "efficientnet_b0")
    by_name = {layer.name: layer.signature for layer in t.layers}
    # blocks.3.1 and blocks.3.2 are the same MBConv at the same shapes; blocks.3.0 is strided.
    assert by_name["blocks.3.1"] == by_name["blocks.3.2"]
    assert by_name["blocks.3.0"] != by_name["blocks.3.1"]
    assert all(s[0] in "abcdef" for s in by_name.values())


def test_tf_same_padding_matches_tensorflow_arithmetic():
    from lana.teachers.efficientnet import Conv2dSame, create_conv2d

    conv = create_conv2d(4, 4, 3, stride=2, tf_same=True)
    assert isinstance(conv, Conv2dSame)
    x = torch.randn(1, 4, 8, 8)
    # TF SAME at stride 2 on an even size pads 0 before and 1 after.
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight,
                                     None, 2)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    assert isinstance(create_conv2d(4, 4, 3, stride=1, tf_same=True), torch.nn.Conv2d)

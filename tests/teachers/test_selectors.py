"""Layer selectors, tracing rules, and user modules loaded from ``file.py:factory``."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import lana.teachers as T
from lana.errors import LanaError
from lana.teachers.base import (SelectorError, _run_traced, select_modules, selector_matches,
                                trace_layers)


class Tiny(nn.Module):
    def __init__(self, shared: bool = False, unused: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(
            block if shared else nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.shared = block if shared else None
        self.spare = nn.Conv2d(16, 16, 1) if unused else None
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        if self.shared is not None:
            x = self.shared(x)
        x = self.features(x)
        return self.head(x.mean((2, 3)))


def test_globs_match_segment_by_segment():
    assert selector_matches("blocks.*.*", "blocks.1.0")
    assert not selector_matches("blocks.*.*", "blocks.1.0.conv_dw")
    assert not selector_matches("blocks.*.*", "blocks.1")
    assert selector_matches("layer*.*", "layer3.5")
    assert selector_matches("**.conv_dw", "blocks.1.0.conv_dw")
    assert selector_matches("stem, features.*", "stem")
    assert selector_matches("features.[01]", "features.1")


def test_selector_picks_modules_in_order_and_traces_shapes():
    layers, out = trace_layers(Tiny(), "features.*", (3, 16, 16))
    assert [l.name for l in layers] == ["features.0", "features.1"]
    assert layers[0].in_shape == (8, 16, 16) and layers[0].out_shape == (8, 16, 16)
    assert layers[1].out_shape == (16, 8, 8) and layers[1].stride == 2
    assert out == (1, 5)


def test_selector_matching_nothing_shows_the_module_tree():
    with pytest.raises(SelectorError) as exc:
        select_modules(Tiny(), "blocks.*.*")
    msg = str(exc.value)
    assert "blocks.*.*" in msg
    assert "\n  stem (Conv2d)" in msg and "\n    features.0 (Sequential)" in msg


def test_nested_matches_are_an_error():
    with pytest.raises(SelectorError, match="nested"):
        select_modules(Tiny(), "features.*, features.*.*")


def test_module_matched_twice_is_an_error():
    with pytest.raises(SelectorError, match="matches one module twice.*features.0.*shared"):
        select_modules(Tiny(shared=True), "features.0, shared")


def test_module_called_twice_is_an_error():
    with pytest.raises(SelectorError, match="runs 2 times"):
        trace_layers(Tiny(shared=True), "features.*", (3, 16, 16))


def test_module_never_called_is_an_error():
    with pytest.raises(SelectorError, match="never called"):
        trace_layers(Tiny(unused=True), "features.*, spare", (3, 16, 16))


def test_layers_must_map_feature_maps():
    with pytest.raises(LanaError, match="one \\(N, C, H, W\\) tensor"):
        trace_layers(Tiny(), "head", (3, 16, 16))


def test_models_with_plain_tensors_fall_back_to_a_real_trace():
    class WithBuffer(Tiny):
        def __init__(self):
            super().__init__()
            self.scale = torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1)  # not registered

        def forward(self, x):
            return self.head(self.features(self.stem(x) * self.scale).mean((2, 3)))

    model = WithBuffer()
    with pytest.raises(RuntimeError):  # the shape-only trace cannot mix devices ...
        _run_traced(model, ["features.0"], (3, 16, 16), "meta")
    layers, out = trace_layers(model, "features.*", (3, 16, 16))  # ... so a real one runs
    assert [l.out_shape for l in layers] == [(8, 16, 16), (16, 8, 8)] and out == (1, 5)


def test_a_wrong_input_shape_is_reported():
    with pytest.raises(LanaError, match="input-shape"):
        trace_layers(Tiny(), "features.*", (4, 16, 16))


FACTORY_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
                                          for _ in range(3)])
            self.fc = nn.Linear(8, 7)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

    def make():
        return Net()

    def make_with_shape():
        net = Net()
        net.input_shape = (3, 20, 20)
        return net

    def make_with_cfg():
        net = Net()
        net.default_cfg = {"input_size": (3, 12, 12)}
        return net

    def not_a_module():
        return 42

    def make_self_describing():
        net = Net()
        net.input_shape, net.lana_selector = (3, 10, 10), "blocks.1"
        return net

    def make_bad_selector():
        net = Net()
        net.input_shape, net.lana_selector = (3, 10, 10), ["blocks.*"]
        return net
''')


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(FACTORY_FILE)
    return path


def test_file_factory_with_input_shape_argument(factory_file):
    t = T.create_teacher(f"{factory_file}:make", selector="blocks.*", input_shape="3,24,24")
    assert t.name == f"{factory_file}:make"
    assert [l.name for l in t.layers] == ["blocks.0", "blocks.1", "blocks.2"]
    assert t.layers[0].in_shape == (8, 24, 24)
    assert t.num_classes == 7 and t.pretrained is False
    # identical blocks at identical shapes share a signature
    assert len({l.signature for l in t.layers}) == 1


def test_file_factory_shape_from_module_attributes(factory_file):
    t = T.create_teacher(f"{factory_file}:make_with_shape", selector="blocks.*")
    assert t.input_shape == (3, 20, 20)
    t = T.create_teacher(f"{factory_file}:make_with_cfg", selector="blocks.*")
    assert t.input_shape == (3, 12, 12)


def test_file_factory_errors(factory_file, tmp_path):
    with pytest.raises(LanaError, match="--input-shape"):
        T.create_teacher(f"{factory_file}:make", selector="blocks.*")
    with pytest.raises(SelectorError, match="blocks \\(Sequential\\)"):
        T.create_teacher(f"{factory_file}:make", input_shape="3,8,8")
    with pytest.raises(LanaError, match="no callable 'missing'.*make"):
        T.create_teacher(f"{factory_file}:missing", selector="blocks.*")
    with pytest.raises(LanaError, match="not a torch.nn.Module"):
        T.create_teacher(f"{factory_file}:not_a_module", selector="blocks.*")
    with pytest.raises(LanaError, match="does not exist"):
        T.create_teacher(f"{tmp_path / 'nope.py'}:make", selector="blocks.*")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(LanaError, match="importing .*ModuleNotFoundError"):
        T.create_teacher(f"{broken}:make", selector="blocks.*")
    with pytest.raises(LanaError, match="C,H,W"):
        T.create_teacher(f"{factory_file}:make", selector="blocks.*", input_shape="3,24")


def test_a_module_naming_its_layers_needs_no_flags(factory_file):
    t = T.create_teacher(f"{factory_file}:make_self_describing")
    assert [l.name for l in t.layers] == ["blocks.1"] and t.selector == "blocks.1"
    t = T.create_teacher(f"{factory_file}:make_self_describing", selector="blocks.*")
    assert len(t.layers) == 3  # a given selector wins
    with pytest.raises(SelectorError, match="lana_selector is list, not a glob string"):
        T.create_teacher(f"{factory_file}:make_bad_selector")
    with pytest.raises(SelectorError, match="or set model.lana_selector"):
        T.create_teacher(f"{factory_file}:make", input_shape="3,8,8")


def test_recorded_layout_fills_in_a_user_modules_selector_and_shape(factory_file):
    record = {"selector": "blocks.0", "input_shape": [3, 14, 14]}
    user = f"{factory_file}:make"
    assert T.recorded_layout(user, record) == ("blocks.0", (3, 14, 14))
    assert T.recorded_layout(user, record, "blocks.*", "3,9,9") == ("blocks.*", "3,9,9")
    assert T.recorded_layout(user, None) == (None, None)
    assert T.recorded_layout("demo", record) == (None, None)  # registry teachers keep their own


def test_selector_override_on_a_registered_teacher():
    t = T.create_teacher("demo", selector="blocks.2.*", pretrained=False)
    assert [l.name for l in t.layers] == ["blocks.2.0", "blocks.2.1", "blocks.2.2"]
    with pytest.raises(SelectorError, match="conv_stem"):
        T.create_teacher("demo", selector="features.*", pretrained=False)

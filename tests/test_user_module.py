"""A user's own network (``path/to/file.py:factory``) through every stage command and `lana run`.

Its layer selector and input shape are given once, to the commands that make the pretraining and
the LUT; every later command reads them from those files.
"""

from __future__ import annotations

import json
import textwrap
import warnings

import pytest
import torch

from lana.cli import main

NET = textwrap.dedent('''
    from torch import nn

    def block(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = block(1, 8)
            self.blocks = nn.Sequential(block(8, 8), block(8, 16, 2), block(16, 16))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    def build():
        return Net()  # no input_shape attribute: --input-shape tells it

    def build_described():
        net = Net()
        net.input_shape, net.lana_selector = (1, 32, 32), "blocks.*"
        return net

    def build_trained():
        import pathlib
        import torch

        net = build_described()
        net.load_state_dict(torch.load(pathlib.Path(__file__).with_name("w.pt")))
        return net
''')


@pytest.fixture(scope="module")
def user_net(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "net.py").write_text(NET)
    from lana.teachers import create_teacher

    torch.manual_seed(0)
    t = create_teacher(f"{root / 'net.py'}:build", selector="blocks.*", input_shape="1,32,32")
    torch.save(t.model.state_dict(), root / "w.pt")
    return root


def _main(argv, capsys) -> tuple[int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_every_stage_command_takes_a_user_module(user_net, tiny_device, capsys):
    d = user_net
    teacher = ["--teacher", f"{d / 'net.py'}:build", "--teacher-weights", d / "w.pt"]
    layout = ["--selector", "blocks.*", "--input-shape", "1,32,32"]
    quick = ["--images", 64, "--no-progress"]
    assert _main(["pretrain", *teacher, *layout, "--pool", "small", "--epochs", 1,
                  "--out", d / "pre", *quick], capsys)[0] == 0
    manifest = json.loads((d / "pre" / "pretrain.json").read_text())
    assert manifest["selector"] == "blocks.*" and manifest["input_shape"] == [1, 32, 32]
    assert len(manifest["layers"]) == 3 and manifest["complete"]

    # From here on the pretraining and the LUT say which layers and which input.
    assert _main(["score", "--pretrain", d / "pre", *teacher, "--pool", "small", "--samples", 32,
                  "--out", d / "scores.json", "--no-progress"], capsys)[0] == 0
    assert _main(["profile", "--device", tiny_device, "--teacher", f"{d / 'net.py'}:build",
                  *layout, "--pool", "small", "--out", d / "lut.json"], capsys)[0] == 0
    assert _main(["search", "--lut", d / "lut.json", "--scores", d / "scores.json",
                  "--budget", "0.8x", "--k", 2, "--out", d / "search.json"], capsys)[0] == 0
    assert _main(["search", "--lut", d / "lut.json", "--scores", d / "scores.json",
                  "--budget", "0.8x", "--max-params", "0.9x", "--k", 2,
                  "--out", d / "search-params.json"], capsys)[0] == 0
    assert _main(["select", "--search", d / "search.json", "--pretrain", d / "pre",
                  "--teacher-weights", d / "w.pt", "--out", d / "select.json", *quick],
                 capsys)[0] == 0
    assert _main(["finetune", "--arch", d / "select.json", "--pretrain", d / "pre",
                  "--teacher-weights", d / "w.pt", "--epochs", 1, "--out", d / "ft", *quick],
                 capsys)[0] == 0
    student = torch.load(d / "ft" / "student.pt", weights_only=False)
    assert student["teacher"]["selector"] == "blocks.*"
    assert _main(["validate", "--arch", d / "select.json", "--device", tiny_device,
                  "--lut", d / "lut.json", "--json"], capsys)[0] in (0, 1)
    assert _main(["bench", "--model", d / "select.json", "--device", tiny_device, *layout,
                  "--repeats", 1, "--json"], capsys)[0] == 0  # an architecture file names no layers
    assert _main(["lut", "calibrate", "--lut", d / "lut.json", "--device", tiny_device,
                  "--samples", 6, "--pool", "small", "--repeats", 1], capsys)[0] == 0
    from lana.calibrate import layer_choices
    from lana.lut import Lut

    lut = Lut.load(d / "lut.json")
    cheapest = [min(ops, key=lut.latency) for ops in layer_choices(lut)]
    assert lut.calibration is not None and lut.predict(cheapest) > 0

    # Another layer selection than the pretraining's is refused, not mixed in.
    code, err = _main(["score", "--pretrain", d / "pre", *teacher, "--selector", "blocks.1",
                       "--out", d / "other.json", "--no-progress"], capsys)
    assert code == 2 and "selected by 'blocks.*', not 'blocks.1'" in err
    code, err = _main(["pretrain", *teacher, "--selector", "blocks.1", "--resume",
                       "--out", d / "pre", *quick], capsys)
    assert code == 2 and "layers 'blocks.*'" in err and "fresh --out" in err


def test_a_factory_that_loads_its_weights_is_a_trained_teacher(user_net):
    from lana.teachers import create_teacher

    trained = create_teacher(f"{user_net / 'net.py'}:build_trained")
    assert trained.pretrained and trained.weights is None
    saved = torch.load(user_net / "w.pt")
    assert all(torch.equal(v, saved[k]) for k, v in trained.model.state_dict().items())
    # a fresh initialisation is not, however often it is built
    assert not create_teacher(f"{user_net / 'net.py'}:build_described").pretrained
    assert not create_teacher(f"{user_net / 'net.py'}:build_described").pretrained


def test_lana_run_takes_a_user_module(user_net, tiny_device, tmp_path, monkeypatch):
    from lana.run import run

    monkeypatch.chdir(user_net)  # a relative module path is recorded absolute
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run("net.py:build_trained", tiny_device, "0.8x", out=tmp_path / "r",
                      pool="single-shot", k=2, finetune_epochs=1, images=64, score_samples=32,
                      calibrate=6, repeats=1)
    config = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert config["teacher"] == f"{user_net / 'net.py'}:build_trained"
    assert summary["speedup"] > 0 and (tmp_path / "r" / "report.md").is_file()
    lut = json.loads((tmp_path / "r" / "lut.json").read_text())
    assert [layer["name"] for layer in lut["layers"]] == ["blocks.0", "blocks.1", "blocks.2"]
    # teacher or identity at two layers: 4 architectures, too few to calibrate on; the run goes on
    stages = json.loads((tmp_path / "r" / "run.json").read_text())["stages"]
    assert stages["profile"]["calibration"] == "too few architectures"


def test_lana_run_refuses_a_user_module_without_weights_before_any_stage(user_net, tmp_path,
                                                                         capsys):
    out = tmp_path / "r"
    code, err = _main(["run", "--teacher", f"{user_net / 'net.py'}:build_described",
                       "--out", out], capsys)
    assert code == 2 and "has no trained weights here" in err and "timm" not in err
    assert "or load it in the factory" in err
    code, err = _main(["run", "--teacher", f"{user_net / 'net.py'}:build", "--teacher-weights",
                       user_net / "w.pt", "--input-shape", "1,32,32", "--out", out], capsys)
    assert code == 2 and "needs a layer selector" in err and err.count("\n") > 3  # the tree
    assert not out.exists()

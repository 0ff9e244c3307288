"""The demo teacher, its shipped checkpoint, weights loading, training and the CLI commands."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import lana.teachers as T
from lana.cli import main
from lana.data import load_data
from lana.train_teacher import evaluate, train_teacher


@pytest.fixture(scope="module")
def shipped():
    return torch.load(T.WEIGHTS_DIR / "demo.pt", map_location="cpu", weights_only=True)


def test_demo_architecture():
    t = T.create_teacher("demo", pretrained=False)
    assert t.input_shape == (1, 32, 32) and t.num_classes == 10
    assert 10 <= t.n_layers <= 12
    assert any(l.stride == 2 for l in t.layers)
    assert any(l.in_shape[0] != l.out_shape[0] for l in t.layers)
    same = [l for l in t.layers if l.in_shape == l.out_shape]
    assert len(same) >= 4  # repeated same-shape blocks LANA can skip or replace


def test_shipped_checkpoint_is_small_and_complete(shipped):
    assert (T.WEIGHTS_DIR / "demo.pt").stat().st_size < 2_000_000
    assert {"state_dict", "teacher", "val_top1", "epochs", "seed"} <= set(shipped)
    assert shipped["teacher"] == "demo" and shipped["val_top1"] >= 0.97


def test_shipped_demo_reaches_97_percent_on_val(shipped):
    t = T.create_teacher("demo")  # pretrained=True loads lana/teachers/weights/demo.pt
    assert t.pretrained and t.weights.endswith("demo.pt")
    bundle = load_data(None, t.input_shape, seed=shipped["seed"])
    top1 = evaluate(t.model, bundle.val)
    assert top1 >= 0.97
    assert abs(top1 - shipped["val_top1"]) < 1e-6  # the recorded figure is reproducible


def test_pretrained_false_is_random(shipped):
    t = T.create_teacher("demo", pretrained=False)
    assert not t.pretrained
    w = t.model.state_dict()["conv_stem.weight"]
    assert not torch.equal(w, shipped["state_dict"]["conv_stem.weight"])


def test_weights_errors(tmp_path, shipped):
    state = dict(shipped["state_dict"])
    state.pop("classifier.bias")
    state["extra.weight"] = torch.zeros(1)
    state["conv_head.weight"] = torch.zeros(3, 3, 1, 1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(T.WeightsError) as exc:
        T.create_teacher("demo", weights=bad)
    msg = str(exc.value)
    assert "missing: classifier.bias" in msg and "unexpected: extra.weight" in msg
    assert "conv_head.weight" in msg and "\n" not in msg
    with pytest.raises(T.WeightsError, match="does not exist"):
        T.create_teacher("demo", weights=tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(T.WeightsError, match="cannot read"):
        T.create_teacher("demo", weights=junk)
    with pytest.raises(T.WeightsError, match="same architecture"):
        T.create_teacher("efficientnet_b0", weights=T.WEIGHTS_DIR / "demo.pt")


@pytest.fixture
def tiny_digits_dir(tmp_path):
    """10 classes, 2 train and 1 val image each: one training step per epoch."""
    digits = load_data(None, (1, 32, 32))
    images, labels = digits.val.tensors()
    root = tmp_path / "tiny"
    seen: dict[int, int] = {}
    for img, label in zip(images, labels.tolist()):
        k = seen.get(label, 0)
        if k >= 3:
            continue
        seen[label] = k + 1
        split = "val" if k == 2 else "train"
        path = root / split / f"d{label}" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((img[0].numpy() * 0.5 + 0.5) * 255).astype("uint8"), "L").save(path)
    return root


def test_train_teacher_is_seeded_and_loadable(tmp_path, tiny_digits_dir):
    out_a, out_b = tmp_path / "a.pt", tmp_path / "b.pt"
    a = train_teacher("demo", epochs=1, out=out_a, data=str(tiny_digits_dir), seed=3,
                      batch_size=8, threads=1, progress=False)
    b = train_teacher("demo", epochs=1, out=out_b, data=str(tiny_digits_dir), seed=3,
                      batch_size=8, threads=1, progress=False)
    assert a.path == out_a and len(a.history) == 1 and 0.0 <= a.val_top1 <= 1.0
    assert a.history == b.history
    ca = torch.load(out_a, weights_only=True)
    cb = torch.load(out_b, weights_only=True)
    assert {"state_dict", "teacher", "val_top1", "epochs", "seed"} <= set(ca)
    assert ca["epochs"] == 1 and ca["seed"] == 3 and ca["teacher"] == "demo"
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    fresh = T.create_teacher("demo", pretrained=False).model.state_dict()
    assert not torch.equal(fresh["conv_stem.weight"], ca["state_dict"]["conv_stem.weight"])
    t = T.create_teacher("demo", weights=out_a)
    assert t.pretrained and torch.equal(t.model.state_dict()["conv_stem.weight"],
                                        ca["state_dict"]["conv_stem.weight"])


def test_cli_train_teacher(tmp_path, tiny_digits_dir, capsys):
    out = tmp_path / "cli.pt"
    code = main(["train-teacher", "--teacher", "demo", "--epochs", "1", "--out", str(out),
                 "--data", str(tiny_digits_dir), "--batch-size", "8", "--threads", "1"])
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert "epoch   1/1" in printed and "val top-1" in printed
    assert main(["train-teacher", "--teacher", "nope", "--epochs", "1"]) == 2
    assert "unknown teacher 'nope'" in capsys.readouterr().err


def test_cli_teachers_json_and_table(capsys):
    assert main(["teachers", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {t["name"]: t for t in listing}
    assert set(by_name) == set(T.list_teacher_names())
    assert by_name["efficientnetv2_b0"]["timm_name"] == "tf_efficientnetv2_b0"
    assert by_name["demo"]["timm_name"] is None and by_name["demo"]["n_layers"] >= 10
    assert main(["teachers"]) == 0
    table = capsys.readouterr().out
    assert "resnest50d_1s4x24d" in table and "—" in table


def test_cli_ops_lists_the_pool_and_refuses_a_layer_it_lacks(capsys):
    assert main(["ops", "--teacher", "demo", "--pool", "small", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    n = len(listing["layers"])
    assert n >= 10 and all(layer["ops"][0].startswith("teacher:") for layer in listing["layers"])
    assert main(["ops", "--teacher", "demo", "--pool", "small", "--layer", str(n - 1)]) == 0
    shown = capsys.readouterr().out
    assert f"layer {n - 1} {listing['layers'][-1]['name']}" in shown and "layer 0 " not in shown
    assert main(["ops", "--teacher", "demo", "--pool", "small", "--layer", str(n)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --layer {n}: demo has layers 0-{n - 1}; list them all with "
        "`lana ops --teacher demo --pool small`")

"""Layer-wise distillation: MSE goes down, checkpoints are complete, resume skips and refuses."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from lana.checkpoints import load_checkpoint, op_checkpoint_path
from lana.pretrain import (LayerTaps, PretrainError, evaluate_mse, load_op, pretrain,
                           read_manifest)
from lana.spec import parse_key


def _quiet_pretrain(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(*args, progress=False, **kwargs)


def test_distillation_lowers_every_ops_held_out_mse(teacher, tiny, tmp_path):
    m = _quiet_pretrain(teacher, "small", tiny, tmp_path / "p", epochs=1, images=256,
                        batch_size=16, eval_images=96, measure_init=True, layers=[5, 9])
    trained = [(layer["index"], key, op) for layer in m["layers"] for key, op in
               layer["ops"].items() if op["status"] == "trained"]
    assert {i for i, _, _ in trained} == {5, 9}
    assert len(trained) >= 20
    worse = [(i, key, op["val_mse_init"], op["val_mse"]) for i, key, op in trained
             if not op["val_mse"] < op["val_mse_init"]]
    assert not worse, f"ops whose held-out MSE did not go down: {worse}"
    # The recorded MSE is what the saved weights give on held-out images.
    i, key, op = trained[0]
    module = load_op(tmp_path / "p", teacher, i, parse_key(key), "small")
    from lana.distributed import as_split

    val = as_split(tiny.val).subset(96, 0)
    from lana.pretrain import WorkItem

    (mse, _), = evaluate_mse(teacher, {WorkItem(i, parse_key(key)): module}, val, 128,
                             torch.device("cpu")).values()
    assert mse == pytest.approx(op["val_mse"], rel=1e-4)


def test_every_op_gets_a_checkpoint_with_metadata(teacher, pretrained):
    manifest = read_manifest(pretrained, teacher, "small")
    assert manifest["complete"]
    statuses = {}
    for layer in manifest["layers"]:
        i = layer["index"]
        for key, op in layer["ops"].items():
            statuses[parse_key(key).family] = op["status"]
            path = op_checkpoint_path(pretrained, i, key)
            if op["status"] == "trained":
                state, meta = load_checkpoint(path, teacher="demo", pool="small", key=key, layer=i)
                assert state and meta["layer_name"] == teacher.layers[i].name
            else:
                assert not path.exists()
    assert statuses["teacher"] == "teacher" and statuses["identity"] == "no-weights"
    assert statuses["efn"] == "trained"


def test_taps_capture_the_teachers_layer_inputs_and_outputs(teacher, tiny):
    x = tiny.val.tensors()[0][:4]
    with LayerTaps(teacher, [0, 4]) as taps:
        got = taps.run(x)
    x_in, y_out = got[4]
    layer = teacher.layer_module(4)
    torch.testing.assert_close(layer(x_in), y_out)
    assert x_in.shape[1:] == teacher.layers[4].in_shape


def test_resume_skips_finished_ops_and_trains_the_rest(teacher, tiny, tmp_path):
    out = tmp_path / "p"
    _quiet_pretrain(teacher, "small", tiny, out, epochs=1, images=32, layers=[8])
    files = sorted(out.glob("layer008/*.pt"))
    before = {f: f.read_bytes() for f in files}
    with pytest.raises(PretrainError, match="--resume"):
        _quiet_pretrain(teacher, "small", tiny, out, epochs=1, images=32, layers=[8])
    m = _quiet_pretrain(teacher, "small", tiny, out, epochs=1, images=32, layers=[8, 9],
                        resume=True)
    assert {f: f.read_bytes() for f in files} == before  # layer 8 untouched
    assert len(list(out.glob("layer009/*.pt"))) == len(files)
    assert not m["complete"]  # other layers are still pending
    layer9 = m["layers"][9]["ops"]
    assert all(op["status"] in ("trained", "teacher", "no-weights") for op in layer9.values())


def test_resume_refuses_corrupt_and_foreign_checkpoints(teacher, tiny, tmp_path):
    out = tmp_path / "p"
    _quiet_pretrain(teacher, "small", tiny, out, epochs=1, images=32, layers=[8])
    files = sorted(out.glob("layer008/*.pt"))
    # Corrupt: flip bytes in the middle of one file.
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    files[0].write_bytes(bytes(data))
    with pytest.raises(PretrainError, match="delete it"):
        _quiet_pretrain(teacher, "small", tiny, out, epochs=1, images=32, layers=[8], resume=True)
    # Foreign: another op's weights under this op's name.
    shutil.copy(files[2], files[0])
    with pytest.raises(PretrainError, match="key="):
        _quiet_pretrain(teacher, "small", tiny, out, epochs=1, images=32, layers=[8], resume=True)
    # Another pool in the same directory.
    with pytest.raises(PretrainError, match="fresh --out"):
        _quiet_pretrain(teacher, "full", tiny, out, epochs=1, images=32, layers=[8], resume=True)


def test_loading_ops_checks_teacher_weights(teacher, pretrained):
    from lana.teachers import create_teacher

    other = create_teacher("demo", pretrained=False)  # same layers, other weights
    with pytest.raises(PretrainError, match="other weights"):
        read_manifest(pretrained, other)
    manifest = json.loads((pretrained / "pretrain.json").read_text())
    key = next(k for k, op in manifest["layers"][3]["ops"].items() if op["status"] == "trained")
    with pytest.raises(PretrainError, match="teacher_digest"):
        load_op(pretrained, other, 3, parse_key(key), "small")
    with pytest.raises(PretrainError, match="pool="):
        load_op(pretrained, teacher, 3, parse_key(key), "full")


def test_missing_checkpoint_names_the_command(teacher, tmp_path):
    spec = next(s for s in __import__("lana.pool", fromlist=["build_pool"]).build_pool(
        teacher, "small")[2].specs if s.family == "efn")
    with pytest.raises(PretrainError, match="lana pretrain .*--resume"):
        load_op(tmp_path, teacher, 2, spec, "small")

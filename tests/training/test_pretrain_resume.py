"""Resuming a pretraining: an interrupted pass continues where it was saved, the manifest follows
every pass, and settings or an input shape other than the recorded ones are refused."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

import lana.pretrain as pretrain_module
from lana.checkpoints import load_checkpoint
from lana.cli import main
from lana.distributed import iter_batches
from lana.pretrain import PretrainError, pretrain, read_manifest

LAYER = 8  # 15 trainable small-pool ops, cheap to distil


def _quiet_pretrain(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(*args, progress=False, **kwargs)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def _weights(out) -> dict:
    """Every op checkpoint under ``out``: {file name: state dict}."""
    return {f.relative_to(out).as_posix(): load_checkpoint(f)[0]
            for f in sorted(out.glob("layer*/*.pt"))}


def _assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and want
    for name, state in want.items():
        for key, tensor in state.items():
            torch.testing.assert_close(got[name][key], tensor, rtol=0, atol=0,
                                       msg=f"{name} {key} differs")


class _Batches:
    """Stands in for ``iter_batches`` in lana.pretrain: records which epoch each training pass
    asks for and interrupts (KeyboardInterrupt) when training batch ``stop`` + 1 is asked for."""

    def __init__(self, stop: int | None = None) -> None:
        self.stop, self.given, self.epochs = stop, 0, []
        self.real = iter_batches

    def __call__(self, split, batch_size, **kwargs):
        if not kwargs.get("shuffle"):  # held-out evaluation
            yield from self.real(split, batch_size, **kwargs)
            return
        self.epochs.append(kwargs["epoch"] % 1000)
        for batch in self.real(split, batch_size, **kwargs):
            if self.stop is not None and self.given == self.stop:
                raise KeyboardInterrupt
            self.given += 1
            yield batch


@pytest.mark.parametrize("epochs, ops_per_pass, every, saved, resumed_epochs", [
    (3, None, None, (1, 0), [1, 2]),  # interrupted in epoch 2: continues from its start
    (2, None, 0.0, (1, 1), [1]),  # saved within epoch 2: its first batch is not trained again
    (1, 8, None, None, [0]),  # interrupted in pass 2: pass 1's ops are in the manifest
], ids=["epoch-end", "mid-epoch", "second-pass"])
def test_an_interrupted_pass_continues_where_it_was_saved(teacher, tiny, tmp_path, monkeypatch,
                                                          epochs, ops_per_pass, every, saved,
                                                          resumed_epochs):
    settings = dict(epochs=epochs, images=32, batch_size=16, layers=[LAYER],
                    ops_per_pass=ops_per_pass)
    if every is not None:
        monkeypatch.setattr(pretrain_module, "PASS_CHECKPOINT_SECONDS", every)
    whole = tmp_path / "whole"
    _quiet_pretrain(teacher, "small", tiny, whole, **settings)

    out = tmp_path / "cut"
    batches = _Batches(stop=3)  # two batches per epoch: stops in the second epoch or pass
    monkeypatch.setattr(pretrain_module, "iter_batches", batches)
    with pytest.raises(KeyboardInterrupt):
        _quiet_pretrain(teacher, "small", tiny, out, **settings)
    passes = list(out.glob("pass-*.pt"))
    manifest = read_manifest(out, teacher, "small")
    trained = [k for k, op in manifest["layers"][LAYER]["ops"].items()
               if op["status"] == "trained"]
    if saved is None:  # pass 2 was stopped before its first save; pass 1 is done and recorded
        assert not passes
        assert len(trained) == ops_per_pass == len(list(out.glob("layer*/*.pt")))
    else:
        assert len(passes) == 1 and not trained
        state = torch.load(passes[0], weights_only=True)
        assert (state["epoch"], state["step"]) == saved and len(state["items"]) == 15

    batches = _Batches()
    monkeypatch.setattr(pretrain_module, "iter_batches", batches)
    m = _quiet_pretrain(teacher, "small", tiny, out, layers=[LAYER], resume=True)  # as recorded
    assert batches.epochs == resumed_epochs
    assert not list(out.glob("pass-*.pt")) and not list(whole.glob("pass-*.pt"))
    assert m["epochs"] == epochs and m["images"] == 32 and m["ops_per_pass"] == ops_per_pass
    assert all(op["status"] != "pending" for op in m["layers"][LAYER]["ops"].values())
    # Exactly what the uninterrupted run trained (so no batch was skipped or trained twice).
    _assert_same_weights(_weights(out), _weights(whole))


def test_the_manifest_follows_every_pass(teacher, tiny, tmp_path, monkeypatch):
    import lana.checkpoints

    out = tmp_path / "p"
    seen = []  # ops recorded as trained when each op checkpoint is written
    real = lana.checkpoints.save_checkpoint

    def save(path, *args, **kwargs):
        ops = json.loads((out / "pretrain.json").read_text())["layers"][LAYER]["ops"]
        seen.append(sum(op["status"] == "trained" for op in ops.values()))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(lana.checkpoints, "save_checkpoint", save)
    _quiet_pretrain(teacher, "small", tiny, out, epochs=1, images=16, layers=[LAYER],
                    ops_per_pass=5)
    # The first op of each pass sees every op of the passes before it recorded as trained.
    assert seen[::5] == [0, 5, 10]


def test_resume_takes_the_recorded_settings_and_refuses_others(teacher, tiny, tmp_path):
    out = tmp_path / "p"
    _quiet_pretrain(teacher, "small", tiny, out, epochs=2, images=16, lr=0.02, layers=[LAYER])
    for changed, match in (({"epochs": 1}, "--epochs 2;"), ({"images": 32}, "--images 16;"),
                           ({"lr": 0.01}, "--lr 0.02;"), ({"seed": 3}, "--seed 0;"),
                           ({"batch_size": 8}, "--batch-size 16;")):
        with pytest.raises(PretrainError, match=f"was pretrained with {match} resume with the "
                           f"same values .*or pass a fresh --out"):
            _quiet_pretrain(teacher, "small", tiny, out, layers=[9], resume=True, **changed)
    assert not list(out.glob("layer009/*.pt"))
    m = _quiet_pretrain(teacher, "small", tiny, out, layers=[9], resume=True, epochs=2)
    assert (m["epochs"], m["images"], m["lr"], m["seed"]) == (2, 16, 0.02, 0)
    files = sorted(out.glob("layer009/*.pt"))
    assert files and all(load_checkpoint(f)[1]["epochs"] == 2 for f in files)


def test_cli_resume_uses_the_recorded_settings(teacher, tmp_path, capsys):
    out = str(tmp_path / "p")
    base = ["pretrain", "--teacher", "demo", "--out", out, "--no-progress"]
    assert main([*base, "--layer", "10", "--epochs", "2", "--images", "16"]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, [*base, "--layer", "9", "--resume", "--epochs", "1"])
    assert f"{out} was pretrained with --epochs 2; resume with the same values" in err
    assert main([*base, "--layer", "9", "--resume"]) == 0
    manifest = json.loads((tmp_path / "p" / "pretrain.json").read_text())
    assert (manifest["epochs"], manifest["images"]) == (2, 16)
    assert manifest["layers"][9]["ops"] and all(
        op["status"] != "pending" for op in manifest["layers"][9]["ops"].values())


def test_resume_refuses_another_input_shape(teacher, tmp_path, capsys):
    out = tmp_path / "p"
    _quiet_pretrain(teacher, "small", None, out, epochs=1, images=16, layers=[10])
    with pytest.raises(PretrainError, match=re.escape(
            f"{out} holds a pretraining at input shape 1,32,32, not 1,40,40; leave "
            f"--input-shape out or pass a fresh --out")):
        _quiet_pretrain("demo", "small", None, out, layers=[9], resume=True,
                        input_shape="1,40,40")
    assert read_manifest(out)["input_shape"] == [1, 32, 32]
    # A pretraining at another shape continues at that shape when --input-shape is left out.
    other = tmp_path / "p40"
    _quiet_pretrain("demo", "small", None, other, epochs=1, images=16, layers=[10],
                    input_shape="1,40,40")
    err = _one_line_error(capsys, ["pretrain", "--teacher", "demo", "--out", str(other),
                                   "--resume", "--input-shape", "1,32,32", "--layer", "9"])
    assert "at input shape 1,40,40, not 1,32,32" in err
    m = _quiet_pretrain("demo", "small", None, other, layers=[9], resume=True)
    assert m["input_shape"] == [1, 40, 40]
    assert list(other.glob("layer009/*.pt")) and list(other.glob("layer010/*.pt"))


@pytest.mark.parametrize("content, kind", [("[1, 2, 3]", "list"), ('"x"', "string"),
                                           ("7", "number")])
def test_a_manifest_that_is_not_an_object_is_a_one_line_error(teacher, tmp_path, capsys,
                                                              content, kind):
    out = tmp_path / "p"
    out.mkdir()
    (out / "pretrain.json").write_text(content)
    message = (f"{out}/pretrain.json is not a pretraining manifest (a JSON {kind}, not an "
               f"object); delete it and re-run lana pretrain --resume")
    with pytest.raises(PretrainError) as exc:
        read_manifest(out, teacher, "small")
    assert str(exc.value) == message
    for argv in (["pretrain", "--teacher", "demo", "--out", str(out), "--resume"],
                 ["score", "--teacher", "demo", "--pretrain", str(out), "--out",
                  str(tmp_path / "s.json")]):
        assert _one_line_error(capsys, argv) == f"error: {message}"


def test_resume_reads_the_recorded_data_and_refuses_other_data(teacher, tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    for split in ("train", "val"):
        for c in range(10):
            for k in range(2):
                (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32), 20 * c + k, dtype=np.uint8)).save(
                    root / split / f"c{c}" / f"{k}.png")
    out = tmp_path / "p"
    _quiet_pretrain(teacher, "small", str(root), out, epochs=1, layers=[10])
    with pytest.raises(PretrainError, match=re.escape(
            f"{out} was pretrained on data {root}, not digits; pass --data {root} or a fresh "
            f"--out")):
        _quiet_pretrain(teacher, "small", "digits", out, layers=[9], resume=True)
    m = _quiet_pretrain(teacher, "small", None, out, layers=[9], resume=True)
    assert m["data"] == str(root) and m["images"] == 20
    assert list(out.glob("layer009/*.pt"))


@pytest.mark.parametrize("pool, fix", [
    ("single-shot", "leave --pretrain out: the single-shot pool has nothing to distil"),
    ("full", "pass a --pretrain folder of that pool (lana pretrain --pool full --out DIR)"),
])
def test_another_pools_pretraining_names_a_fix_every_command_can_take(tmp_path, pool, fix):
    (tmp_path / "pretrain.json").write_text(json.dumps({"schema": "lana.pretrain/1",
                                                        "pool": "small"}))
    with pytest.raises(PretrainError) as info:
        read_manifest(tmp_path, None, pool)
    assert str(info.value) == f"{tmp_path} holds the 'small' pool, not {pool!r}; {fix}"

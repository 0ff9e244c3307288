"""Resuming a fine-tuning: the settings left out take the values the checkpoint recorded, from the
API and the CLI, and values given other than the recorded ones are refused in one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import lana.finetune as ft
from lana.cli import main
from lana.finetune import FinetuneError, finetune

# every recorded setting away from its default; a run of a few seconds
SETTINGS = dict(epochs=2, batch_size=16, lr=2e-3, weight_decay=0.05, temperature=2.0,
                kd_weight=0.5, images=48, seed=3)
RECORDED = {k: v for k, v in SETTINGS.items() if k != "epochs"}  # a checkpoint's "config"
# explicit values other than SETTINGS, and what refusing each says
OTHERS = [({"lr": 0.01}, "was made with --lr 0.002;"),
          ({"batch_size": 32}, "was made with --batch-size 16;"),
          ({"seed": 0}, "was made with --seed 3;"),
          ({"images": 32}, "was made with --images 48;"),
          ({"temperature": 4.0}, "was made with --temperature 2.0;"),
          ({"kd_weight": 0.7}, "was made with --kd-weight 0.5;"),
          ({"weight_decay": 0.01}, "was made with --weight-decay 0.05;"),
          ({"epochs": 3}, "was made for --epochs 2;")]


def _arch(teacher, same_shape, tmp_path):
    """An architecture file with one identity and one inverted-residual layer."""
    from lana.pool import build_pool

    replace = {same_shape[0]: "identity", 9: "efn"}
    ops = [next(s for s in lp.specs if s.family == replace.get(i, "teacher")).key
           for i, lp in enumerate(build_pool(teacher, "small"))]
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"schema": "lana.arch/1", "teacher": "demo", "pool": "small",
                                "ops": ops, "layer_names": [l.name for l in teacher.layers],
                                "predicted_ms": {}, "objective": None, "budget_ms": None}))
    return path


def _stop_after_first_epoch(monkeypatch) -> None:
    """Make the next fine-tuning save its first checkpoint and then stop, as Ctrl-C would."""
    real_save = ft._save_atomic

    def save_then_stop(payload, where):
        real_save(payload, where)
        monkeypatch.setattr(ft, "_save_atomic", real_save)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_atomic", save_then_stop)


def _checkpoint(out) -> dict:
    return torch.load(out / ft.CHECKPOINT, weights_only=True)


def _digit_folder(root, bundle, train: int = 6, val: int = 2):
    """A data directory of ``train`` and ``val`` digits per class (train/<class>/*.png, ...)."""
    from PIL import Image

    x, y = bundle.train.tensors()
    for split, first, n in (("train", 0, train), ("val", train, val)):
        for c in range(10):
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for k in torch.nonzero(y == c).flatten()[first:first + n].tolist():
                img = x[k, 0]
                img = (img - img.min()) / (img.max() - img.min() + 1e-8) * 255
                Image.fromarray(img.numpy().astype(np.uint8)).save(folder / f"{k}.png")
    return root


def test_resume_takes_the_recorded_settings_and_refuses_others(teacher, same_shape, tiny,
                                                               pretrained, tmp_path,
                                                               monkeypatch):
    data = dataclasses.replace(tiny, val=tiny.val.subset(range(32)))  # quick evaluations
    arch, out = _arch(teacher, same_shape, tmp_path), tmp_path / "ft"
    _stop_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune(arch, "demo", pretrained, data, out, progress=False, **SETTINGS)
    assert _checkpoint(out)["epoch"] == 1 and _checkpoint(out)["config"] == RECORDED
    for changed, match in OTHERS:
        with pytest.raises(FinetuneError, match=f"{match} resume with the same"):
            finetune(arch, "demo", pretrained, data, out, resume=True, progress=False, **changed)
    assert _checkpoint(out)["epoch"] == 1  # left as it was
    # left out, every setting takes the recorded value (the defaults would be refused)
    m = finetune(arch, "demo", pretrained, data, out, resume=True, progress=False)
    assert m["config"] == RECORDED and m["epochs"] == 2 and len(m["val_top1"]) == 2
    assert json.loads((out / "metrics.json").read_text())["config"] == RECORDED
    assert _checkpoint(out)["epoch"] == 2 and _checkpoint(out)["config"] == RECORDED


def test_cli_resume_uses_the_recorded_settings(teacher, same_shape, bundle, pretrained,
                                               tmp_path, monkeypatch, capsys):
    arch, out = _arch(teacher, same_shape, tmp_path), tmp_path / "ft"
    base = ["finetune", "--arch", str(arch), "--pretrain", str(pretrained), "--out", str(out),
            "--data", str(_digit_folder(tmp_path / "data", bundle)), "--no-progress"]
    _stop_after_first_epoch(monkeypatch)
    assert main([*base, "--epochs", "2", "--batch-size", "16", "--lr", "0.002",
                 "--temperature", "2", "--kd-weight", "0.5", "--seed", "3",
                 "--images", "48"]) == 130
    assert "continue with: lana finetune" in capsys.readouterr().err
    for changed, was in OTHERS:
        if "weight_decay" in changed:  # not an option of the command
            continue
        ((name, value),) = changed.items()
        assert main([*base, "--resume", f"--{name.replace('_', '-')}", str(value)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: checkpoint ") and "\n" not in err
        assert f"{was} resume with the same" in err, err
    assert main([*base, "--resume"]) == 0
    assert "after 2 epochs" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["val_top1"]) == 2
    assert metrics["config"] == {**RECORDED, "weight_decay": ft.DEFAULT_WEIGHT_DECAY}

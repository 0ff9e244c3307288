"""Bad input: one-line errors that say how to fix the problem, from the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lana.cli import main
from lana.errors import LanaError
from lana.pretrain import PretrainError, load_splits


def _png(path, size, value=128):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def _folder(root, classes: int, sizes=(8,)):
    for split in ("train", "val"):
        for c in range(classes):
            for k, size in enumerate(sizes):
                _png(root / split / f"c{c}" / f"{k}.png", size, 40 * k)
    return root


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
])
def test_missing_or_empty_data_directory(teacher, tmp_path, make, match):
    with pytest.raises(LanaError, match=match):
        load_splits(str(make(tmp_path)), teacher)


def test_unreadable_image(teacher, tmp_path):
    root = _folder(tmp_path / "d", 10)
    (root / "train" / "c0" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(LanaError, match="unreadable"):
        load_splits(str(root), teacher)


def test_class_count_must_match_the_teachers_head(teacher, tmp_path):
    root = _folder(tmp_path / "d", 3, sizes=(8, 12))  # mixed sizes are resized to the input
    with pytest.raises(PretrainError, match="3 classes.*10 outputs"):
        load_splits(str(root), teacher)


def test_ten_classes_of_mixed_sizes_load_at_the_teachers_input(teacher, tmp_path):
    root = _folder(tmp_path / "d", 10, sizes=(8, 12, 40))
    splits = load_splits(str(root), teacher)
    assert tuple(splits.train.images.shape[1:]) == teacher.input_shape


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_errors_are_one_line(teacher, tmp_path, capsys):
    err = _one_line_error(capsys, ["pretrain", "--teacher", "demo", "--data",
                                   str(tmp_path / "nope"), "--out", str(tmp_path / "p")])
    assert "does not exist" in err
    err = _one_line_error(capsys, ["score", "--teacher", "demo", "--pretrain",
                                   str(tmp_path / "nope"), "--out", str(tmp_path / "s.json")])
    assert "lana pretrain" in err
    (tmp_path / "s.json").write_text("{}")
    err = _one_line_error(capsys, ["select", "--search", str(tmp_path / "s.json"), "--out",
                                   str(tmp_path / "sel.json")])
    assert "lana search" in err
    err = _one_line_error(capsys, ["finetune", "--arch", str(tmp_path / "none.json"), "--out",
                                   str(tmp_path / "ft")])
    assert "--arch" in err and "does not exist" in err and "lana select wrote" in err
    # a search result with one architecture per budget: finetune has no --budget to pick one
    arch = {"teacher": "demo", "pool": "small", "ops": ["teacher:x"]}
    (tmp_path / "two.json").write_text(json.dumps({"targets": [
        {"label": "0.4x", "architectures": [arch]}, {"label": "0.6x", "architectures": [arch]}]}))
    err = _one_line_error(capsys, ["finetune", "--arch", str(tmp_path / "two.json"), "--out",
                                   str(tmp_path / "ft")])
    assert "several budgets; run lana select --budget B" in err
    with pytest.raises(SystemExit) as stop:  # refused while parsing, by argparse
        main(["finetune", "--arch", "a.json", "--out", "ft", "--index", "0"])
    assert stop.value.code == 2 and capsys.readouterr().err == (
        "error: lana finetune: unrecognized arguments: --index 0; see lana finetune --help\n")
    err = _one_line_error(capsys, ["finetune", "--arch", "a.json", "--out", "ft",
                                   "--kd-weight", "1.5"])
    assert "--kd-weight must be in [0, 1]" in err and "temperature" not in err
    err = _one_line_error(capsys, ["pretrain", "--teacher", "demo", "--pool", "huge", "--out",
                                   str(tmp_path / "p")])
    assert "valid pools" in err

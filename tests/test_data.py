"""The embedded digits data and ImageFolder-style directories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lana.data import DataError, load_data


def _ids(ds) -> set[bytes]:
    images, _ = ds.tensors()
    return {img.numpy().tobytes() for img in images}


@pytest.fixture(scope="module")
def digits():
    return load_data(None, (1, 32, 32), seed=0)


def test_digits_bundle(digits):
    assert digits.source == "digits" and digits.num_classes == 10
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert len(digits.train) + len(digits.val) == 1797
    assert 0.15 < len(digits.val) / 1797 < 0.25
    x, y = digits.val[0]
    assert tuple(x.shape) == (1, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    images, labels = digits.val.tensors()
    assert -1.01 <= float(images.min()) and float(images.max()) <= 1.01
    assert set(labels.tolist()) == set(range(10))


def test_digits_splits_are_disjoint_stratified_and_calib_is_in_train(digits):
    train, val, calib = _ids(digits.train), _ids(digits.val), _ids(digits.calib)
    # sklearn's digits hold a few exact duplicate images; allow those, nothing more
    assert len(train & val) <= 5
    assert calib <= train
    _, ytr = digits.train.tensors()
    _, yval = digits.val.tensors()
    share_tr = np.bincount(ytr.numpy(), minlength=10) / len(ytr)
    share_val = np.bincount(yval.numpy(), minlength=10) / len(yval)
    assert np.abs(share_tr - share_val).max() < 0.01
    _, ycal = digits.calib.tensors()
    assert np.bincount(ycal.numpy(), minlength=10).min() >= len(ycal) // 10 - 2


def test_digits_splits_are_deterministic_per_seed(digits):
    again = load_data("digits", (1, 32, 32), seed=0)
    for a, b in ((digits.train, again.train), (digits.val, again.val),
                 (digits.calib, again.calib)):
        assert torch.equal(a.tensors()[0], b.tensors()[0])
        assert torch.equal(a.tensors()[1], b.tensors()[1])
    other = load_data(None, (1, 32, 32), seed=1)
    assert not torch.equal(other.val.tensors()[1], digits.val.tensors()[1])


def test_digits_at_other_shapes():
    b = load_data(None, (3, 16, 16))
    assert tuple(b.train[0][0].shape) == (3, 16, 16)
    assert len(b.mean) == 3


def test_training_augmentation_shifts_only_train(digits):
    torch.manual_seed(0)
    x0 = digits.train.images[5]
    shifted = [digits.train[5][0] for _ in range(20)]
    assert any(not torch.equal(s, x0) for s in shifted)
    assert all(s.shape == x0.shape for s in shifted)
    assert torch.equal(digits.val[5][0], digits.val.images[5])
    assert torch.equal(digits.train.with_augment(False)[5][0], x0)


def _write(path, size=(20, 20), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value, value)).save(path)


@pytest.fixture
def folder(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for c, cls in enumerate(("cat", "dog", "fox")):
            for i in range(n):
                # mixed sizes and modes: resizing and conversion handle them
                _write(tmp_path / split / cls / f"{i}.png", size=(16 + 4 * i, 20),
                       mode="L" if i % 2 else "RGB", value=40 * c + 10 * i)
    return tmp_path


def test_folder_bundle(folder):
    b = load_data(str(folder), (3, 24, 24), seed=0)
    assert b.class_names == ("cat", "dog", "fox") and b.num_classes == 3
    assert (len(b.train), len(b.val), len(b.calib)) == (12, 6, 12)
    assert b.source == str(folder)
    x, y = b.val[0]
    assert tuple(x.shape) == (3, 24, 24) and y == 0
    gray = load_data(folder, (1, 8, 8))
    assert tuple(gray.val[3][0].shape) == (1, 8, 8)
    xs, ys = b.val.tensors()
    assert xs.shape == (6, 3, 24, 24) and ys.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("file", "not a directory"),
    ("empty", "is empty"),
    ("no_val", "no 'val' folder"),
    ("no_classes", "has no class folders"),
    ("empty_class", "dog .*hold no images"),
    ("mismatch", "only in val: owl"),
    ("unreadable", "unreadable image file.*broken.png"),
])
def test_bad_folders_give_one_line_errors(tmp_path, case, match):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case != "missing":
        root.mkdir()
    if case in ("no_val", "no_classes", "empty_class", "mismatch", "unreadable"):
        _write(root / "train" / "cat" / "a.png")
        (root / "val").mkdir()
    if case in ("empty_class", "mismatch", "unreadable"):
        _write(root / "val" / "cat" / "a.png")
    if case == "no_val":
        (root / "val").rmdir()
    if case == "no_classes":
        (root / "train" / "cat" / "a.png").unlink()
        (root / "train" / "cat").rmdir()
    if case == "empty_class":
        (root / "train" / "dog").mkdir()
    if case == "mismatch":
        _write(root / "val" / "owl" / "a.png")
    if case == "unreadable":
        (root / "val" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=match) as exc:
        load_data(str(root), (3, 16, 16))
    assert "\n" not in str(exc.value)


def test_bad_input_shape():
    with pytest.raises(DataError, match="C, H, W"):
        load_data(None, (32, 32))

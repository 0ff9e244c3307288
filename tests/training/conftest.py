"""Shared fixtures: the demo teacher with its shipped weights, a tiny digits subset, and one small
pretraining of the whole small pool that the scoring, selection and fine-tuning tests reuse."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class TinyBundle:
    """A DataBundle-shaped subset of the digits, small enough for second-long training runs."""

    train: object
    val: object
    calib: object
    num_classes: int = 10
    class_names: tuple = tuple(str(i) for i in range(10))
    source: str = "digits (test subset)"


@pytest.fixture(scope="session")
def teacher():
    from lana.teachers import create_teacher

    t = create_teacher("demo")
    if not t.pretrained:
        pytest.skip("the demo teacher's shipped weights are missing")
    return t


@pytest.fixture(scope="session")
def same_shape(teacher) -> list[int]:
    """Indices of the layers whose input and output shapes agree (identity is a candidate)."""
    return [l.index for l in teacher.layers if l.in_shape == l.out_shape and l.stride == 1]


@pytest.fixture(scope="session")
def bundle(teacher):
    from lana.data import load_data

    return load_data(None, teacher.input_shape, seed=0)


@pytest.fixture(scope="session")
def tiny(bundle) -> TinyBundle:
    """256 training, 160 validation and 128 scoring images."""
    return TinyBundle(bundle.train.subset(range(256)), bundle.val.subset(range(160)),
                      bundle.calib.subset(range(128)))


@pytest.fixture(scope="session")
def pretrained(teacher, tiny, tmp_path_factory):
    """One short pretraining of every small-pool op (64 images, 1 epoch)."""
    from lana.pretrain import pretrain

    out = tmp_path_factory.mktemp("run") / "pretrain"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = pretrain(teacher, "small", tiny, out, epochs=1, images=64, batch_size=32,
                            eval_images=32, progress=False)
    assert manifest["complete"]
    return out

"""Scoring memory: the estimate from the teacher's layer shapes, and a run too large for the memory
refused with one line before anything of its size is allocated."""

from __future__ import annotations

import math
import time

import pytest

import lana.score as score_module
from lana.cli import main
from lana.score import (MEMORY_FRACTION, ScoreError, available_memory, check_score_memory,
                        estimate_score_memory)

GB = 10 ** 9


def _teacher(name: str, shape: str | None = None):
    from lana.teachers import create_teacher

    return create_teacher(name, input_shape=shape)  # traced on the meta device: nothing allocated


@pytest.fixture(scope="module")
def huge():
    return _teacher("demo", "1,1000,1000")


def test_cache_is_every_layer_output_of_one_batch(teacher):
    per_image = sum(math.prod(l.out_shape) for l in teacher.layers) * 4
    for batch in (1, 16, 250):
        e = estimate_score_memory(teacher, batch, 256)
        assert e.cache == batch * per_image
        assert e.activations == e.cache + e.working and e.working > 0
    # no batch is larger than the scoring set; the naive method caches nothing
    assert estimate_score_memory(teacher, 250, 32).activations == \
        estimate_score_memory(teacher, 32, 32).activations
    naive = estimate_score_memory(teacher, 64, 256, method="naive")
    assert naive.cache == 0 and naive.working > 0


def test_estimate_grows_with_batch_and_input_shape(teacher, huge):
    small = [estimate_score_memory(teacher, b, 256).activations for b in (1, 8, 64, 250)]
    assert small == sorted(small) and small[0] < small[-1]
    big = estimate_score_memory(huge, 250, 256)
    assert big.activations > 500 * estimate_score_memory(teacher, 250, 256).activations
    assert big.cache > 100 * GB  # 250 images of 11 layer outputs at up to 24x1000x1000


def test_data_terms(teacher, tiny):
    image = math.prod(teacher.input_shape) * 4
    digits = estimate_score_memory(teacher, 250, 256)
    assert digits.data_load == 3 * 1797 * image  # lana.data makes all digits at the input shape
    loaded = estimate_score_memory(teacher, 250, 256, data=tiny)
    assert loaded.data_load == 0 and loaded.data == 256 * image  # only the scoring subset
    assert digits.host >= digits.data_load and loaded.host < digits.host


def test_ops_bound_the_stacking_and_add_their_weights(teacher):
    from lana.pool import build_pool

    pools = build_pool(teacher, "small")
    bare = estimate_score_memory(teacher, 1, 256)
    with_ops = estimate_score_memory(teacher, 1, 256, pools=pools)
    # a batch of one image stacks at most one image per op, not the 256 MB default
    assert with_ops.working < bare.working
    assert with_ops.params > bare.params > 0
    one_layer = estimate_score_memory(teacher, 1, 256, pools=pools, layers=[3])
    assert one_layer.params < with_ops.params


@pytest.mark.parametrize("name, batch, host_gb", [
    ("demo", 250, 4),  # the defaults, on a small machine
    ("efficientnet_b0", 250, 24),  # 224 px
    ("efficientnet_b2", 250, 24),  # 260 px
    ("efficientnet_b3", 64, 24),  # 300 px
    ("efficientnet_b4", 250, 80),  # 380 px
    ("efficientnet_b6", 32, 64),  # 528 px
])
def test_normal_runs_are_not_refused(teacher, name, batch, host_gb):
    from lana.pool import build_pool

    t = teacher if name == "demo" else _teacher(name)
    e = estimate_score_memory(t, batch, 256, pools=build_pool(t, "small"))
    check_score_memory(e, host=host_gb * GB)  # does not raise
    # and on a GPU of 80 GB at the default batch size, up to 380 px
    if name != "demo" and t.input_shape[-1] <= 380:
        on_gpu = estimate_score_memory(t, 250, 256, device="cuda:0", pools=build_pool(t, "small"))
        check_score_memory(on_gpu, host=host_gb * GB, accelerator=80 * GB)


def test_refusal_names_what_is_too_large_and_a_batch_size_that_fits(teacher):
    t = _teacher("demo", "1,300,300")
    e = estimate_score_memory(t, 250, 256, data="digits")
    host = 24 * GB
    with pytest.raises(ScoreError) as info:
        check_score_memory(e, host=host)
    message = str(info.value)
    assert "\n" not in message
    assert "input shape 1x300x300 with batch size 250" in message
    assert "layer outputs cached per batch" in message and "24.0 GB available" in message
    fits = int(message.split("--batch-size ")[1].split()[0])
    assert e.at_batch(fits).host <= MEMORY_FRACTION * host < e.at_batch(fits + 1).host
    check_score_memory(e.at_batch(fits), host=host)


def test_refusal_on_a_gpu_counts_its_memory(teacher, monkeypatch):
    t = _teacher("demo", "1,300,300")
    e = estimate_score_memory(t, 250, 256, data="digits", device="cuda:0")
    assert e.accelerator == e.activations + e.params and e.host < e.accelerator
    with pytest.raises(ScoreError, match=r"of cuda:0 memory .*80% of the 8\.0 GB free; "
                                         r"pass --batch-size \d+ or lower"):
        check_score_memory(e, host=64 * GB, accelerator=8 * GB)
    monkeypatch.setattr(score_module, "_accelerator_memory", lambda device: None)
    check_score_memory(e, host=64 * GB)  # the GPU's memory unreadable: not checked


def test_digits_too_large_to_load_say_so(huge):
    e = estimate_score_memory(huge, 1, 256)
    with pytest.raises(ScoreError, match=r"loading the embedded digits at input shape "
                                         r"1x1000x1000 needs about 21\.6 GB.*smaller "
                                         r"--input-shape, or --data"):
        check_score_memory(e, host=16 * GB)


def test_available_memory_falls_back_and_may_be_unknown(monkeypatch, huge):
    first = available_memory()
    assert first is None or first > 0

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(score_module, "open", no_proc, raising=False)
    monkeypatch.setattr(score_module, "_cgroup_room", lambda: None)
    monkeypatch.setattr(score_module.os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 1000,
                                                                  "SC_PAGE_SIZE": 4096}[name])
    assert available_memory() == 4096 * 1000

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(score_module.os, "sysconf", no_sysconf)
    assert available_memory() is None
    check_score_memory(estimate_score_memory(huge, 250, 256))  # nothing to compare with: passes


def test_cli_refuses_a_huge_input_shape_in_one_line(pretrained, tmp_path, capsys, monkeypatch):
    import lana.pretrain

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the memory check")

    monkeypatch.setattr(lana.pretrain, "load_splits", no_data)
    monkeypatch.setattr(score_module, "available_memory", lambda: 16 * GB)
    out = tmp_path / "scores.json"
    for batch, expected in (("250", "pass a smaller --input-shape"),
                            ("1", "loading the embedded digits")):
        start = time.perf_counter()
        code = main(["score", "--teacher", "demo", "--pretrain", str(pretrained), "--input-shape",
                     "1,1000,1000", "--batch-size", batch, "--device", "cpu", "--out", str(out),
                     "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert time.perf_counter() - start < 60
        assert err.startswith("error: ") and "\n" not in err, err
        assert "1x1000x1000" in err and "more than 80% of the 16.0 GB available" in err
        assert expected in err
        assert not out.exists()

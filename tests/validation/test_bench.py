"""lana bench: baselines saved and compared, a slowed model caught, bad input refused."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from torch import nn

from lana.assemble import Architecture, assemble, write_arch
from lana.bench import (BenchError, BenchResult, bench, compare, load_bench_model,
                        read_baseline, reference_net)
from lana.cli import main
from lana.export import export_onnx


def conv_net(extra_blocks: int) -> nn.Module:
    """A small conv net; ``extra_blocks`` wide 3x3 convs make it several times slower."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU()]
    for _ in range(extra_blocks):
        layers += [nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    fast = export_onnx(conv_net(1), (1, 3, 64, 64), root / "fast.onnx", dynamic_batch=True)
    slow = export_onnx(conv_net(12), (1, 3, 64, 64), root / "slow.onnx", dynamic_batch=True)
    return fast, slow


def test_reference_network_is_fixed():
    a, b = reference_net(), reference_net()
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_save_and_compare_a_baseline(models, tiny_device, tmp_path, capsys):
    fast, _ = models
    base = tmp_path / "base.json"
    assert main(["bench", "--model", str(fast), "--device", tiny_device, "--repeats", "3",
                 "--save-baseline", str(base)]) == 0
    saved = read_baseline(base)
    assert saved.device == "cpu-ort-tiny" and saved.repeats == 3 and len(saved.ratios) == 3
    assert saved.ratio == pytest.approx(sorted(saved.ratios)[1])
    assert all(r > 0 for r in saved.ratios)
    capsys.readouterr()
    code = main(["bench", "--model", str(fast), "--device", tiny_device, "--repeats", "3",
                 "--baseline", str(base), "--tolerance", "0.5", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["comparison"]["regression"] is False
    assert doc["comparison"]["baseline_ratio"] == pytest.approx(saved.ratio)


def test_a_slowed_model_is_a_regression(models, tiny_device, tmp_path, capsys):
    fast, slow = models
    base = tmp_path / "base.json"
    assert main(["bench", "--model", str(fast), "--device", tiny_device, "--repeats", "3",
                 "--save-baseline", str(base)]) == 0
    capsys.readouterr()
    code = main(["bench", "--model", str(slow), "--device", tiny_device, "--repeats", "3",
                 "--baseline", str(base), "--tolerance", "0.25"])
    err = capsys.readouterr().err
    assert code == 1 and "regression" in err


def test_comparison_uses_the_ratio_not_absolute_time():
    def result(model_ms, ref_ms):
        return BenchResult("m", "d", "cpu-ort", len(model_ms), tuple(model_ms), tuple(ref_ms),
                           tuple(a / b for a, b in zip(model_ms, ref_ms)), seen={"threads": 1})

    base = result([2.0, 2.1, 2.0], [1.0, 1.05, 1.0])
    busy = result([3.0, 3.1, 3.0], [1.5, 1.55, 1.5])  # the whole machine 50 % slower
    assert not compare(busy, base, 0.1).regression
    slower = result([3.0, 3.1, 3.0], [1.0, 1.05, 1.0])  # only the model slower
    c = compare(slower, base, 0.1)
    assert c.regression and c.change == pytest.approx(0.5, rel=0.02)
    # A round another process disturbed (flagged noisy by the timing core) does not count.
    disturbed = BenchResult("m", "d", "cpu-ort", 3, (2.0, 9.0, 2.1), (1.0, 1.0, 1.0),
                            (2.0, 9.0, 2.1), seen={"threads": 1}, noisy=(False, True, False))
    assert disturbed.ratio == pytest.approx(2.05)
    assert not compare(disturbed, base, 0.1).regression
    other = BenchResult("m", "d", "cpu-torch", 3, (1.0,) * 3, (1.0,) * 3, (1.0,) * 3)
    with pytest.raises(BenchError, match="--device cpu-ort"):
        compare(other, base)


def test_students_and_architectures_are_benchmarked(demo_pool, demo_teacher, tiny_device,
                                                     tmp_path):
    rng = random.Random(0)
    arch = Architecture("demo", "small", tuple(rng.choice(lp.keys) for lp in demo_pool))
    write_arch(arch, tmp_path / "arch.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = assemble(tmp_path / "arch.json", tmp_path / "out", onnx=False)
    for path in (result.student_path, tmp_path / "arch.json"):
        model = load_bench_model(path)
        assert model.input_shape == demo_teacher.input_shape
    r = bench(result.student_path, tiny_device, repeats=1)
    assert r.ratio > 0 and r.model == str(result.student_path)


def test_bad_input(models, tiny_device, tmp_path, capsys):
    fast, _ = models
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["bench", "--model", str(fast), "--device", tiny_device, "--baseline",
                 str(tmp_path / "junk.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["bench", "--model", str(tmp_path / "missing.onnx"), "--device", tiny_device]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(BenchError, match="unknown model file type"):
        load_bench_model(tmp_path / "model.txt")
    other = tmp_path / "other.json"
    base = BenchResult("m", "d", "cpu-torch", 1, (1.0,), (1.0,), (1.0,))
    other.write_text(json.dumps(base.to_dict()))
    assert main(["bench", "--model", str(fast), "--device", tiny_device, "--repeats", "1",
                 "--baseline", str(other)]) == 2
    assert "--device cpu-torch" in capsys.readouterr().err

"""lana validate measures the teacher beside the network: speed-up and relative budgets from that
session, never from the LUT's prediction of the teacher; the architecture file's budget only on its
own LUT."""

from __future__ import annotations

import json
import math
import warnings

import pytest

import lana.bench
from lana.assemble import Architecture, teacher_architecture
from lana.cli import main
from lana.lut import Lut
from lana.validate import architecture_budget, validate
from profilers import Measurement


@pytest.fixture
def arch_file(random_arch_file):
    return random_arch_file(11)


def teacher_predicted(lut_path, demo_teacher) -> float:
    return Lut.load(lut_path).predict(teacher_architecture(demo_teacher).ops)


def fake_session(monkeypatch, student_ms: float, teacher_ms: float) -> list[dict]:
    """Replace the alternating measurement by fixed figures; returns what it was called with."""
    calls: list[dict] = []

    def interleaved(a, a_shape, b, b_shape, preset, *, repeats, protocol=None, config=None,
                    labels=("a", "b")):
        calls.append({"a": a, "b": b, "a_shape": a_shape, "b_shape": b_shape,
                      "repeats": repeats, "labels": labels})
        return ([Measurement((student_ms,) * 5) for _ in range(repeats)],
                [Measurement((teacher_ms,) * 5) for _ in range(repeats)], {})

    monkeypatch.setattr(lana.bench, "interleaved", interleaved)
    return calls


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_teacher_is_measured_beside_the_network(arch_file, demo_lut, tiny_device,
                                                    demo_teacher, monkeypatch):
    real = lana.bench.interleaved
    calls = []

    def spy(a, a_shape, b, b_shape, preset, **kwargs):
        calls.append((a, b, a_shape, b_shape, kwargs["repeats"]))
        return real(a, a_shape, b, b_shape, preset, **kwargs)

    monkeypatch.setattr(lana.bench, "interleaved", spy)
    r = validate(arch_file, tiny_device, demo_lut, repeats=2)
    assert len(calls) == 1  # one session, the two networks alternating in it
    student, teacher, s_shape, t_shape, repeats = calls[0]
    assert repeats == 2 and s_shape == t_shape == (1, *demo_teacher.input_shape)
    assert n_params(teacher) == n_params(demo_teacher.model) != n_params(student)
    assert math.isfinite(r.teacher_measured_ms) and r.teacher_measured_ms > 0
    assert r.speedup == pytest.approx(r.teacher_measured_ms / r.measured_ms)
    doc = r.to_dict()
    assert doc["teacher_measured_ms"] == r.teacher_measured_ms and doc["speedup"] == r.speedup


def test_a_relative_budget_is_taken_of_the_measured_teacher(arch_file, demo_lut, tiny_device,
                                                            demo_teacher, monkeypatch, capsys):
    # The audit's case: the teacher measures at half its LUT prediction, and the network at 0.3x
    # of that prediction, which 0.5x of the predicted teacher would let through.
    pred = teacher_predicted(demo_lut, demo_teacher)
    calls = fake_session(monkeypatch, student_ms=0.3 * pred, teacher_ms=0.5 * pred)
    base = ["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
            str(demo_lut), "--repeats", "3"]
    code = main(base + ["--budget", "0.5x", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert calls[0]["repeats"] == 3
    assert code == 1 and doc["passed"] is False and doc["budget_relative"] is True
    assert doc["budget_ms"] == pytest.approx(0.25 * pred)
    assert doc["teacher_measured_ms"] == pytest.approx(0.5 * pred)
    assert doc["teacher_predicted_ms"] == pytest.approx(pred)
    assert doc["speedup"] == pytest.approx(0.5 / 0.3)

    # A budget in milliseconds is checked against the measured network, whatever the teacher did.
    code = main(base + ["--budget", f"{0.31 * pred}", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["within_budget"] is True and doc["budget_relative"] is False
    assert doc["budget_ms"] == pytest.approx(0.31 * pred)


def test_table_shows_measured_and_predicted_speed_up(arch_file, demo_lut, tiny_device,
                                                     demo_teacher, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    pred = teacher_predicted(demo_lut, demo_teacher)
    fake_session(monkeypatch, student_ms=0.2 * pred, teacher_ms=0.5 * pred)
    base = ["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
            str(demo_lut), "--repeats", "1", "--budget", "0.5x"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "speed-up 2.50x measured" in out  # teacher / network, both measured
    assert "teacher measured (median)" in out and "teacher predicted (LUT sum)" in out
    assert "budget 0.5x of measured teacher" in out and "holds" in out
    # Uncalibrated, the LUT sum is the only prediction: one row.
    assert out.count("predicted (LUT sum, no calibration)") == 1
    assert "predicted (calibrated)" not in out and "predicted (no calibration)" not in out

    lut = Lut.load(demo_lut)
    lut.data["calibration"] = {"kind": "affine", "offset_ms": 0.0, "slope": 0.5}
    lut.save()
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "predicted (LUT sum)" in out and "predicted (calibrated)" in out
    assert "no calibration" not in out


def test_architecture_budget_only_on_its_own_lut(arch_file, demo_lut, tiny_device):
    lut = Lut.load(demo_lut)
    ops = tuple(json.loads(arch_file.read_text())["ops"])
    here = lut.predict(ops)
    arch = Architecture("demo", "small", ops, budget_ms=2.5, predicted_ms={lut.preset: here})
    assert architecture_budget(arch, lut, lut.preset) == (2.5, None)
    assert architecture_budget(arch.replace(budget_ms=None), lut, lut.preset) == (None, None)
    refused = {
        "another device": arch.replace(predicted_ms={"cpu-torch": here}),
        "several LUTs": arch.replace(predicted_ms={lut.preset: here, "cpu-torch": 3 * here}),
        "no predicted_ms": arch.replace(predicted_ms={}),
        "another LUT of this device": arch.replace(predicted_ms={lut.preset: 1.5 * here}),
    }
    words = {"another device": "searched on device cpu-torch, not",
             "several LUTs": "several LUTs", "no predicted_ms": "no predicted_ms",
             "another LUT of this device": "another LUT of"}
    for case, other in refused.items():
        budget, note = architecture_budget(other, lut, lut.preset)
        assert budget is None, case
        assert words[case] in note and "pass --budget" in note and "\n" not in note, case


def test_budget_of_another_device_is_not_checked(arch_file, demo_lut, tiny_device, monkeypatch,
                                                 capsys):
    # budget_ms from a search on another device's LUT: far below anything measured here.
    data = json.loads(arch_file.read_text())
    data.update(budget_ms=1e-4, predicted_ms={"cpu-torch": 3.0})
    arch_file.write_text(json.dumps(data))
    fake_session(monkeypatch, student_ms=0.5, teacher_ms=1.0)
    code = main(["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
                 str(demo_lut), "--repeats", "1", "--json"])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert code == 0 and doc["budget_ms"] is None and doc["passed"] is True
    assert "cpu-torch" in doc["budget_note"]
    assert out.err.count("\n") == 1 and out.err.startswith("warning: the architecture file's")

    # --budget still checks one, and then nothing is said about the file's.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = validate(arch_file, tiny_device, demo_lut, repeats=1, budget="0.4x")
    assert r.budget_ms == pytest.approx(0.4) and r.budget_note is None and not r.passed


def test_a_lut_calibrated_to_fastest_iterations_is_compared_with_fastest_iterations(
        arch_file, demo_lut, tiny_device, demo_teacher, monkeypatch, capsys):
    from lana.calibrate import calibrate

    calibrate(demo_lut, tiny_device, samples=6, repeats=1, statistic="fastest",
              drift_correction=False)  # as lana run calibrates its LUT
    pred = teacher_predicted(demo_lut, demo_teacher)

    def interleaved(a, a_shape, b, b_shape, preset, *, repeats, **kwargs):
        # medians 0.3 and 0.5 of the prediction; fastest iterations 0.2 and 0.4
        return ([Measurement((0.2 * pred,) + (0.3 * pred,) * 4) for _ in range(repeats)],
                [Measurement((0.4 * pred,) + (0.5 * pred,) * 4) for _ in range(repeats)], {})

    monkeypatch.setattr(lana.bench, "interleaved", interleaved)
    monkeypatch.setenv("COLUMNS", "200")
    base = ["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
            str(demo_lut), "--repeats", "3", "--budget", "0.5x"]
    assert main(base + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["statistic"] == "fastest"
    assert doc["measured_ms"] == pytest.approx(0.2 * pred)
    assert doc["measured_median_ms"] == pytest.approx(0.3 * pred)
    assert doc["teacher_measured_ms"] == pytest.approx(0.4 * pred)
    assert doc["budget_ms"] == pytest.approx(0.2 * pred) and doc["within_budget"] is True
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "measured (fastest iteration)" in out and "teacher measured (fastest iteration)" in out

"""End-to-end validation against a real (tiny-protocol) LUT of the demo teacher."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from lana.assemble import assemble
from lana.cli import main
from lana.lut import Lut
from lana.validate import ValidationError, parse_budget, validate

FIELDS = {"predicted_ms", "predicted_calibrated_ms", "measured_ms", "rel_error", "budget_ms",
          "within_budget"}


@pytest.fixture
def arch_file(random_arch_file):
    return random_arch_file(7)


def run_json(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_json_fields_and_exit_code_on_a_budget_miss(arch_file, demo_lut, tiny_device, capsys):
    base = ["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut", str(demo_lut),
            "--json", "--repeats", "1"]
    code, doc, err = run_json(capsys, base + ["--budget", "0.001"])
    assert code == 1, err
    assert FIELDS <= set(doc)
    lut = Lut.load(demo_lut)
    assert doc["predicted_ms"] == pytest.approx(lut.predict_raw(doc["ops"]))
    assert doc["predicted_calibrated_ms"] == pytest.approx(doc["predicted_ms"])  # no calibration
    assert doc["measured_ms"] > 0
    assert doc["rel_error"] == pytest.approx(
        (doc["predicted_calibrated_ms"] - doc["measured_ms"]) / doc["measured_ms"])
    assert doc["budget_ms"] == 0.001 and doc["within_budget"] is False
    assert doc["weights"] == "random"

    code, doc, _ = run_json(capsys, base + ["--budget", "1000"])
    assert code == 0 and doc["within_budget"] is True

    # A budget relative to the teacher: 0.5x of the teacher measured beside the network.
    code, doc, _ = run_json(capsys, base + ["--budget", "0.5x"])
    assert doc["teacher_measured_ms"] > 0 and doc["budget_relative"] is True
    assert doc["budget_ms"] == pytest.approx(0.5 * doc["teacher_measured_ms"])
    assert doc["speedup"] == pytest.approx(doc["teacher_measured_ms"] / doc["measured_ms"])
    assert doc["predicted_speedup"] == pytest.approx(
        doc["teacher_predicted_ms"] / doc["predicted_calibrated_ms"])
    assert code == (0 if doc["measured_ms"] <= doc["budget_ms"] * 1.05 else 1)

    # No budget anywhere: nothing to fail.
    code, doc, _ = run_json(capsys, base)
    assert code == 0 and doc["budget_ms"] is None and doc["within_budget"] is None


def searched_with(arch_file, predicted_ms, budget_ms=1e-4):
    """Record in ``arch_file`` the search's budget and per-LUT predictions, as lana search does."""
    data = json.loads(arch_file.read_text())
    data["budget_ms"] = budget_ms
    data["predicted_ms"] = predicted_ms
    arch_file.write_text(json.dumps(data))


def test_budget_from_the_architecture_file_and_tolerance(arch_file, demo_lut, tiny_device):
    lut = Lut.load(demo_lut)
    searched_with(arch_file, {lut.preset: lut.predict(json.loads(arch_file.read_text())["ops"])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # this LUT's budget: applied without a word
        result = validate(arch_file, tiny_device, demo_lut, repeats=1)
    assert result.budget_ms == 1e-4 and result.budget_source == "architecture file"
    assert not result.budget_relative and result.budget_note is None
    assert not result.passed
    # Within tolerance: measured just above the budget passes, but is not "within" it.
    lenient = validate(arch_file, tiny_device, demo_lut, repeats=1, budget=result.measured_ms / 2,
                       tolerance=5.0)
    assert lenient.within_budget is False and lenient.passed


def test_calibration_is_applied_to_the_prediction(arch_file, demo_lut, tiny_device):
    lut = Lut.load(demo_lut)
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -0.1, "slope": 0.9}
    lut.save()
    r = validate(arch_file, tiny_device, demo_lut, repeats=1)
    assert r.calibrated
    assert r.predicted_calibrated_ms == pytest.approx(-0.1 + 0.9 * r.predicted_ms)
    assert math.isclose(r.to_dict()["rel_error_raw"],
                        (r.predicted_ms - r.measured_ms) / r.measured_ms)


def test_missing_weights_file_is_refused_before_any_work(arch_file, demo_lut, tiny_device,
                                                         tmp_path, capsys, monkeypatch):
    import lana.validate

    def no_work(*args, **kwargs):
        raise AssertionError("the LUT was opened before the weights were checked")

    monkeypatch.setattr(lana.validate, "open_lut", no_work)
    code = main(["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
                 str(demo_lut), "--json", "--repeats", "1", "--weights",
                 str(tmp_path / "bad" / "nope.pt")])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and out.err.count("\n") == 1
    assert out.err.startswith("error: weights file ") and "nope.pt does not exist" in out.err
    assert "--weights" in out.err
    with pytest.raises(ValidationError, match="is not a file"):
        validate(arch_file, tiny_device, demo_lut, weights=tmp_path)


def test_assembled_weights_are_measured(arch_file, demo_lut, tiny_device, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = assemble(arch_file, tmp_path / "out", onnx=False)
    r = validate(arch_file, tiny_device, demo_lut, repeats=1, weights=result.student_path)
    assert r.weights == str(result.student_path)


def test_lut_of_another_device_is_refused(arch_file, demo_lut, tiny_device, capsys):
    code = main(["validate", "--arch", str(arch_file), "--device", "cpu-ort", "--lut",
                 str(demo_lut)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    # the LUT was profiled with a preset file: the advice names the file, as lana-profile needs
    assert "'cpu-ort-tiny', not 'cpu-ort'" in err and f"--device {tiny_device} or" in err


def test_architecture_not_covered_by_the_lut(arch_file, demo_lut, tiny_device):
    lut = Lut.load(demo_lut)
    ops = json.loads(arch_file.read_text())["ops"]
    victim = next(k for k in ops if not k.startswith("teacher:"))
    del lut.data["entries"][victim]
    lut.save()
    with pytest.raises(Exception, match="lana-profile") as info:
        validate(arch_file, tiny_device, demo_lut, repeats=1)
    assert "\n" not in str(info.value)


def test_plot_is_a_png(arch_file, demo_lut, tiny_device, tmp_path, capsys):
    png = tmp_path / "v.png"
    assert main(["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
                 str(demo_lut), "--repeats", "1", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "predicted" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text,teacher,expected", [
    ("4.5", None, 4.5), ("4.5ms", None, 4.5), ("0.5x", 3.0, 1.5), (2, None, 2.0), (None, 1.0, None),
    ("0.5X", 3.0, 1.5), ("4.5MS", None, 4.5),  # as lana search accepts them
])
def test_parse_budget(text, teacher, expected):
    assert parse_budget(text, teacher) == expected


@pytest.mark.parametrize("text", ["fast", "-1", "0", "0.5x"])
def test_parse_budget_refuses(text):
    with pytest.raises(ValidationError):
        parse_budget(text, None)


@pytest.mark.parametrize("text", ["-1", "-0.5x", "-2ms", "0", "0x"])
def test_a_budget_not_above_zero_is_called_that(text):
    with pytest.raises(ValidationError, match="budget must be positive"):
        parse_budget(text, 1.0)


@pytest.mark.parametrize("argv", [["--budget", "-1"], ["--budget=-0.5x"]])
def test_negative_budget_on_the_command_line(arch_file, demo_lut, tiny_device, capsys, argv):
    code = main(["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
                 str(demo_lut), "--repeats", "1", *argv])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and out.err.count("\n") == 1
    assert out.err.startswith("error: budget must be positive") and "0.5x" in out.err


@pytest.mark.parametrize("repeats", ["0", "-1", "two"])
def test_repeats_below_one_are_refused_at_parse_time(arch_file, demo_lut, tiny_device, capsys,
                                                      monkeypatch, repeats):
    import lana.validate

    def no_work(*args, **kwargs):
        raise AssertionError("validate ran")

    monkeypatch.setattr(lana.validate, "validate", no_work)
    with pytest.raises(SystemExit) as info:
        main(["validate", "--arch", str(arch_file), "--device", tiny_device, "--lut",
              str(demo_lut), "--repeats", repeats])
    assert info.value.code == 2 and "--repeats" in capsys.readouterr().err


def test_repeats_below_one_are_refused_by_the_api(arch_file, demo_lut, tiny_device):
    with pytest.raises(ValidationError, match="--repeats must be at least 1"):
        validate(arch_file, tiny_device, demo_lut, repeats=0)


def test_a_network_that_fails_to_export_leaves_no_temporary_folder(tiny_device, tmp_path,
                                                                    monkeypatch):
    import tempfile

    import torch

    import lana.export
    from lana.validate import NetworkSession
    from profilers import load_preset

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fails(*args, **kwargs):
        raise lana.export.ExportError("ONNX export of Sequential failed: unsupported operator")

    monkeypatch.setattr(lana.export, "export_onnx", fails)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(lana.export.ExportError, match="unsupported operator"):
        with NetworkSession(net, (1, 3, 8, 8), load_preset(tiny_device)):
            pass
    assert list(tmp_path.iterdir()) == []

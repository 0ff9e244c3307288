"""LUT calibration: the fit on synthetic distortions, sampling, and a real end-to-end run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lana.calibrate import (AFFINE_FITS, FAMILY_POINTS_PER_PARAM, FIT_NAMES, CalibrationError,
                            apply_calibration, calibrate, combine_repeats, error_stats,
                            fit_calibration, lut_applies_family_terms, measure_architectures,
                            sample_architectures, split_held_out)
from lana.lut import Lut, LutError
from lana.spec import OpSpec

FAMILIES = ("efn", "cb_stack", "identity", "teacher")


def synthetic(n: int, seed: int, *, offset: float, slope: float, identity_ms: float = 0.0,
              noise: float = 0.01, outliers: int = 0):
    """Networks of 10 ops with random LUT sums; measured = offset + slope x sum (+ terms, noise)."""
    rng = np.random.default_rng(seed)
    keys, raw, measured = [], [], []
    for _ in range(n):
        fams = rng.choice(FAMILIES, size=10)
        ks = [OpSpec.make(str(f), (8, 4, 4), (8, 4, 4), 1).key for f in fams]
        r = float(rng.uniform(1.0, 6.0))
        m = (offset + slope * r + identity_ms * sum(f == "identity" for f in fams))
        keys.append(ks)
        raw.append(r)
        measured.append(m * (1 + rng.normal(0, noise)))
    for j in rng.choice(n, size=outliers, replace=False):
        measured[j] *= 1.6  # a measurement disturbed by another process
    return raw, measured, keys


def test_fit_recovers_a_known_affine_distortion_and_cuts_held_out_error():
    raw, measured, keys = synthetic(60, 0, offset=0.45, slope=0.72, outliers=3)
    held = split_held_out(len(raw), 0.33)
    train = [i for i, h in enumerate(held) if not h]
    test = [i for i, h in enumerate(held) if h]
    fit, cv = fit_calibration([raw[i] for i in train], [measured[i] for i in train],
                              [keys[i] for i in train])
    assert set(cv) >= {"none", "offset", "ols", "relative", "huber"}
    assert cv["none"] > 0.1 and fit.name != "none"
    assert fit.slope == pytest.approx(0.72, rel=0.05)
    assert fit.offset_ms == pytest.approx(0.45, abs=0.1)
    before = error_stats([raw[i] for i in test], [measured[i] for i in test])
    after = error_stats([fit.predict(raw[i], keys[i]) for i in test],
                        [measured[i] for i in test])
    assert before["median_abs"] > 0.15
    assert after["median_abs"] < 0.03 and after["median_abs"] < before["median_abs"] / 5
    # The robust fits are not dragged by the outliers the way plain least squares is.
    assert min(cv["huber"], cv["relative"]) <= cv["ols"]


def test_family_terms_are_chosen_only_when_they_earn_their_keep():
    raw, measured, keys = synthetic(80, 1, offset=0.2, slope=0.9, identity_ms=-0.12, noise=0.003)
    fit, cv = fit_calibration(raw, measured, keys)
    assert fit.name == "families" and cv["families"] < cv["relative"]
    # Family counts sum to the layer count, so only differences between terms are identified.
    assert fit.family_ms["identity"] - fit.family_ms["efn"] == pytest.approx(-0.12, abs=0.03)
    assert fit.predict(2.0, keys[0]) == pytest.approx(
        apply_calibration(fit.to_calibration(), 2.0, keys[0]))
    # Not allowed (a LUT reader that does not apply them): the best affine fit instead.
    fit2, _ = fit_calibration(raw, measured, keys, allow_family_terms=False)
    assert fit2.name != "families" and not fit2.family_ms
    # A purely affine distortion: the extra terms do not earn their keep.
    raw, measured, keys = synthetic(60, 2, offset=0.3, slope=0.8, noise=0.01)
    assert fit_calibration(raw, measured, keys)[0].name != "families"


def test_a_fit_that_predicts_no_time_for_the_cheapest_network_is_not_chosen():
    # Networks measured 0.9 ms under their LUT sum (each entry's call overhead), all far from the
    # cheapest the search may pick: an offset fits them best and would predict it at -0.4 ms.
    raw, measured, keys = synthetic(30, 3, offset=-0.9, slope=1.0, noise=0.01)
    free, _ = fit_calibration(raw, measured, keys, candidates=AFFINE_FITS)
    assert free.name != "none" and free.predict(0.5) < 0 and not free.excluded
    fit, cv = fit_calibration(raw, measured, keys, candidates=AFFINE_FITS, cheapest=(0.5, []))
    assert fit.predict(0.5) > 0 and free.name in fit.excluded and fit.name not in fit.excluded
    assert cv[fit.name] >= cv[free.name]  # the better-scoring fits were ruled out, not lost


def test_family_terms_need_enough_points_per_parameter():
    # The distortion of the test above, which the families model fits best on 80 points: four
    # families vary, so an offset, a slope and four terms need 3 x 6 = 18 points.
    raw, measured, keys = synthetic(80, 1, offset=0.2, slope=0.9, identity_ms=-0.12, noise=0.003)
    needed = FAMILY_POINTS_PER_PARAM * (2 + len(FAMILIES))
    assert needed == 18
    fit, cv = fit_calibration(raw[:needed - 1], measured[:needed - 1], keys[:needed - 1])
    assert "families" not in cv and fit.name in AFFINE_FITS and not fit.family_ms
    assert fit.skipped == {"families": needed}
    fit, cv = fit_calibration(raw[:needed], measured[:needed], keys[:needed])
    assert "families" in cv and not fit.skipped
    # The audit's case: 4 points, many families; an offset, a slope and a term per family
    # interpolated them before.
    fit, cv = fit_calibration(raw[:4], measured[:4], keys[:4])
    assert "families" not in cv and fit.skipped["families"] > 4


def test_a_fit_whose_latency_falls_as_the_lut_sum_grows_is_not_chosen():
    # Networks the LUT ranks slower measured faster (a disturbed run): least squares fits a
    # negative slope, which predicts no time for the slowest networks.
    raw = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    measured = [3.0, 2.6, 2.4, 2.0, 1.9, 1.5]
    fit, cv = fit_calibration(raw, measured, candidates=AFFINE_FITS)
    assert fit.slope > 0 and fit.name in ("none", "offset")
    assert {"ols", "relative", "huber"} <= set(fit.excluded)
    assert all(cv[c] < cv[fit.name] for c in fit.excluded)


def test_a_lowest_prediction_function_rules_fits_out():
    # What calibrate() passes: the LUT's own check of a calibration (Lut.lowest_prediction).
    raw, measured, keys = synthetic(30, 3, offset=0.4, slope=0.8, noise=0.01)
    seen = []

    def lowest(cal):
        seen.append(dict(cal))
        return 1.0 if cal["offset_ms"] == 0 and cal["slope"] == 1 else -1.0

    fit, cv = fit_calibration(raw, measured, keys, cheapest=lowest)
    assert fit.name == "none" and cv["ols"] < cv["none"] and "ols" in fit.excluded
    assert seen and all(c["kind"] == "affine" for c in seen)


def test_fit_refuses_too_few_points():
    with pytest.raises(CalibrationError, match="at least 3"):
        fit_calibration([1.0, 2.0], [1.0, 2.0])


def test_held_out_split_spans_the_range():
    held = split_held_out(30, 0.33)
    idx = [i for i, h in enumerate(held) if h]
    assert len(idx) == 10 and idx[0] < 3 and idx[-1] > 26


def test_sampled_architectures_spread_over_the_latency_range(demo_lut):
    lut = Lut.load(demo_lut)
    archs = sample_architectures(lut, 12, seed=1)
    assert len(set(archs)) == 12
    teacher = tuple(next(k for k in layer["ops"] if k.startswith("teacher:"))
                    for layer in lut.layers)
    assert archs[0] == teacher
    preds = sorted(lut.predict_raw(a) for a in archs)
    fastest = lut.fixed_ms + sum(min(lut.latency(k) for k in layer["ops"]) for layer in lut.layers)
    slowest = lut.fixed_ms + sum(max(lut.latency(k) for k in layer["ops"]) for layer in lut.layers)
    assert preds[-1] - preds[0] > 0.4 * (slowest - fastest)
    assert all(len(a) == len(lut.layers) for a in archs)
    assert sample_architectures(lut, 12, seed=1) == archs  # reproducible


def test_calibrate_end_to_end_on_the_demo_pool(demo_lut, tiny_device, tmp_path):
    png = tmp_path / "cal.png"
    report = calibrate(demo_lut, tiny_device, teacher="demo", samples=9, repeats=1, plot=png)
    assert report.written and report.after["n"] == 3 and report.before["n"] == 3
    assert png.read_bytes()[:4] == b"\x89PNG"
    lut = Lut.load(demo_lut)  # the stored calibration passes the LUT reader's checks
    cal = lut.calibration
    assert lut.lowest_prediction() > 0 and cal["skipped"] == dict(report.fit.skipped)
    assert cal["kind"] == "affine" and cal["model"] == report.fit.name
    assert cal["n_fit"] == 6 and cal["n_held_out"] == 3 and len(cal["points"]) == 9
    # The search's lut.predict applies what was stored.
    arch = sample_architectures(lut, 3, seed=5)[-1]
    assert lut.predict(arch) == pytest.approx(apply_calibration(cal, lut.predict_raw(arch), arch))
    if report.fit.name != "none":  # no correction can win when the LUT sum is already right
        assert lut.predict(arch) != pytest.approx(lut.predict_raw(arch))
    # The measured points are real: positive, and they were taken on this device.
    assert all(p.measured_ms > 0 for p in report.points)
    assert report.device == "cpu-ort-tiny"


def test_calibrate_command(demo_lut, tiny_device, capsys):
    from lana.commands import lut_calibrate

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    lut_calibrate.register_into(sub)
    args = parser.parse_args(["calibrate", "--lut", str(demo_lut), "--device", tiny_device,
                              "--samples", "8", "--repeats", "1", "--dry-run", "--json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["written"] is False and Lut.load(demo_lut).calibration is None
    assert {"before", "after"} <= set(doc["held_out"]) and len(doc["points"]) == 8
    # 5 fitted networks: too few for a term per op family
    assert doc["skipped"]["families"] > 5 and "families" not in doc["cv_errors"]

    args = parser.parse_args(["calibrate", "--lut", str(demo_lut), "--device", "cpu-ort",
                              "--samples", "8"])
    from lana.errors import LanaError

    with pytest.raises(LanaError, match=f"not 'cpu-ort'; pass --device {tiny_device} or"):
        args.func(args)
    args = parser.parse_args(["calibrate", "--lut", str(demo_lut), "--device", tiny_device,
                              "--teacher", "efficientnet_b0"])
    with pytest.raises(LanaError, match="not 'efficientnet_b0'"):
        args.func(args)


def test_calibrate_command_without_family_terms(monkeypatch, capsys):
    import lana.calibrate as calibrate_module
    from lana.commands import lut_calibrate

    parser = argparse.ArgumentParser()
    lut_calibrate.register_into(parser.add_subparsers())
    asked = []

    def fake(*args, candidates, **kwargs):
        asked.append(tuple(candidates))
        raise CalibrationError("stop here")

    monkeypatch.setattr(calibrate_module, "calibrate", fake)
    for flag, want in (([], FIT_NAMES), (["--no-family-terms"], AFFINE_FITS)):
        args = parser.parse_args(["calibrate", "--lut", "l.json", "--device", "cpu-ort", *flag])
        with pytest.raises(CalibrationError, match="stop here"):
            args.func(args)
        assert asked[-1] == tuple(want)
    assert "families" in FIT_NAMES and "families" not in AFFINE_FITS


def test_validate_refuses_a_calibration_that_predicts_no_time(demo_lut, tiny_device, capsys):
    from lana.cli import main

    lut = Lut.load(demo_lut)
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -5.0, "slope": 1.0}
    lut.save()
    arch = sample_architectures(lut, 2, seed=3)[-1]
    with pytest.raises(LutError, match="for the cheapest network its layers allow"):
        lut.predict(arch)
    from lana.assemble import Architecture, write_arch

    names = tuple(layer["name"] for layer in lut.layers)
    write_arch(Architecture("demo", "small", arch, names), demo_lut.parent / "arch.json")
    code = main(["validate", "--arch", str(demo_lut.parent / "arch.json"), "--device",
                 tiny_device, "--lut", str(demo_lut), "--repeats", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: LUT {demo_lut}: its calibration predicts" in err
    assert f"lana lut calibrate --lut {demo_lut}" in err
    # lana lut calibrate opens it and replaces the calibration with one that predicts time.
    calibrate(demo_lut, tiny_device, samples=6, repeats=1)
    fixed = Lut.load(demo_lut)
    assert fixed.calibration["offset_ms"] != -5.0 and fixed.predict(arch) > 0
    assert lut_applies_family_terms()  # the check does not hide family terms from calibrate


class _Timing:
    def __init__(self, median: float, noisy: bool = False) -> None:
        self.median, self.noisy = median, noisy


def test_repeats_reduce_to_median_or_min_and_noisy_repeats_are_left_out():
    # network 0: one repeat caught in a slow moment; network 1: its fastest repeat was noisy
    runs = [[(_Timing(1.0), None), (_Timing(1.6), None), (_Timing(1.1), None)],
            [(_Timing(2.2), None), (_Timing(1.5, noisy=True), None), (_Timing(2.0), None)]]
    (m0, s0), (m1, _) = combine_repeats(runs)
    assert m0 == pytest.approx(1.1) and s0 == pytest.approx(0.6 / 1.1)
    assert m1 == pytest.approx(2.1)  # median of the two clean repeats
    (n0, t0), (n1, _) = combine_repeats(runs, "min")
    assert n0 == pytest.approx(1.0) and t0 == pytest.approx(0.6)
    assert n1 == pytest.approx(2.0)  # the noisy 1.5 does not count


def test_fastest_takes_each_networks_fastest_iteration_over_all_its_repeats():
    from profilers import Measurement

    # network 0: its repeats' medians are 1.0-1.6 but a busy moment never reached its fastest
    # iteration (0.9); network 1: its fastest iteration was in a repeat flagged noisy, which counts
    runs = [[(Measurement((1.0, 0.9, 1.2)), None), (Measurement((1.6, 1.7, 1.5)), None)],
            [(Measurement((2.2, 2.4, 2.3)), None),
             (Measurement((1.9, 3.0, 4.0), noisy=True), None)]]
    (f0, s0), (f1, s1) = combine_repeats(runs, "fastest", drift_correction=False)
    assert f0 == pytest.approx(0.9) and s0 == pytest.approx((1.5 - 0.9) / 0.9)
    assert f1 == pytest.approx(1.9)
    assert [m for m, _ in combine_repeats(runs, "median", drift_correction=False)] == \
        pytest.approx([1.3, 2.3])  # the median of the clean repeats' medians


def _interleaved(net_ms, teacher_ms):
    """measure_repeats' layout from timings in the order taken: every network once per repeat,
    each after a teacher timing: ``net_ms[t]`` and ``teacher_ms[t]``, t = repeat * n + network."""
    n = 3
    return [[(_Timing(net_ms[k * n + j]), _Timing(teacher_ms[k * n + j]))
             for k in range(len(net_ms) // n)] for j in range(n)]


def test_drift_correction_follows_a_slowdown_the_teacher_timings_share():
    # the whole second repeat runs 2x slower: every network and every teacher timing in it
    runs = _interleaved([1.0, 2.0, 3.0, 2.0, 4.0, 6.0], [1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    for statistic in ("median", "min"):
        figures = [f for f, _ in combine_repeats(runs, statistic)]
        assert figures == pytest.approx([1.5, 3.0, 4.5])  # in the frame of the median teacher
    plain = [f for f, _ in combine_repeats(runs, "min", drift_correction=False)]
    assert plain == [1.0, 2.0, 3.0]


def test_drift_correction_ignores_a_burst_only_one_teacher_timing_saw():
    # nothing changes for the networks; the teacher timing before network 1 in repeat 2 is caught
    # in a 3x burst.  Scaling by that timing alone would make network 1 look 3x faster there.
    runs = _interleaved([1.0, 2.0, 3.0] * 3, [1.0] * 4 + [3.0] + [1.0] * 4)
    for statistic in ("median", "min"):
        assert [f for f, _ in combine_repeats(runs, statistic)] == pytest.approx([1.0, 2.0, 3.0])
    # a window of one follows the burst: network 1's figure there is 3x too fast
    single = combine_repeats(runs, "min", window=1)
    assert single[1][0] == pytest.approx(2.0 / 3.0)
    with pytest.raises(CalibrationError, match="odd count"):
        combine_repeats(runs, window=2)
    # a noisy teacher timing is neither a reference nor a neighbour: network 1 in repeat 2 sits
    # between two noisy 5.0 timings, whose median with its own would scale it to 0.4
    noisy = _interleaved([1.0, 2.0, 3.0] * 3, [1.0] * 9)
    noisy[0][1] = (_Timing(1.0), _Timing(5.0, noisy=True))
    noisy[2][1] = (_Timing(3.0), _Timing(5.0, noisy=True))
    assert [f for f, _ in combine_repeats(noisy, "min")] == pytest.approx([1.0, 2.0, 3.0])


def test_min_statistic_end_to_end_and_bad_statistic(demo_lut, tiny_device):
    from lana.validate import open_lut

    lut, preset = open_lut(demo_lut, tiny_device)
    archs = sample_architectures(lut, 2, seed=1)
    results = measure_architectures(archs, lut, preset, repeats=2, drift_correction=False,
                                     statistic="min")
    assert len(results) == 2 and all(ms > 0 and spread >= 0 for ms, spread in results)
    with pytest.raises(CalibrationError, match="statistic must be one of median, min"):
        measure_architectures(archs, lut, preset, statistic="p10")
    report = calibrate(demo_lut, tiny_device, samples=6, repeats=2, write=True,
                       drift_correction=False, statistic="min", compare=[("median", True)])
    assert Lut.load(demo_lut).calibration["statistic"] == "min" and report.written
    alt = report.to_dict()["alternatives"]["median, drift-corrected"]  # the same repeats
    assert alt["after"]["n"] == report.after["n"] == 2 and alt["model"]
    assert alt["before"]["median_abs"] != report.before["median_abs"]  # a different reduction


def test_networks_that_do_not_fit_are_built_again_for_each_repeat(demo_lut, tiny_device,
                                                                  monkeypatch):
    import lana.calibrate as calibrate_module
    import lana.export
    from lana.validate import open_lut

    lut, preset = open_lut(demo_lut, tiny_device)
    archs = sample_architectures(lut, 3, seed=2)
    # room for the teacher and one network: networks 1 and 2 are exported for every repeat
    monkeypatch.setattr(calibrate_module, "module_bytes", lambda module: 1)
    monkeypatch.setattr(calibrate_module, "free_storage", lambda folder: (4, "disk space in test"))
    real_export, on_disk, exports = lana.export.export_onnx, [], []

    def export(module, shape, path=None, *args, **kwargs):
        exports.append(Path(path).name)
        on_disk.append(len(list(Path(path).parent.glob("*.onnx"))))
        return real_export(module, shape, path, *args, **kwargs)

    monkeypatch.setattr(lana.export, "export_onnx", export)
    with pytest.warns(UserWarning, match="2 of 3 networks would take more than half"):
        results = measure_architectures(archs, lut, preset, repeats=2)
    assert len(results) == 3 and all(ms > 0 for ms, _ in results)
    # the teacher and network 0 once; the other two once per repeat, never more than one at a time
    assert sorted(exports) == sorted(["reference.onnx", "net0.onnx"] + ["passing.onnx"] * 4)
    assert max(on_disk) <= 2
    monkeypatch.undo()
    assert calibrate_module.module_bytes(torch.nn.Linear(10, 10)) == 110 * 4


def test_sampling_refuses_a_lut_without_layers(demo_lut):
    lut = Lut.load(demo_lut)
    lut.data["layers"] = []
    with pytest.raises(CalibrationError, match="re-profile"):
        sample_architectures(lut, 5)

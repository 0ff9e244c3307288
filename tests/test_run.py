"""`lana run`: the whole pipeline end to end (single-shot pool, tiny protocol), resume and bad input."""

from __future__ import annotations

import json
import warnings

import pytest

from lana.cli import main
from lana.run import STAGE_INPUTS, RunConfig, RunError, run, stage_digest, upstream

QUICK = dict(pool="single-shot", k=3, finetune_epochs=1, images=128, score_samples=64, calibrate=8)


@pytest.fixture(scope="module")
def finished_run(tiny_device, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run("demo", tiny_device, "0.6x", out=out, **QUICK)
    return out, summary


def test_pipeline_writes_every_artifact(finished_run):
    out, summary = finished_run
    for name in ("lut.json", "scores.json", "search.json", "verify.json", "select.json",
                 "finetune/student.pt",
                 "finetune/metrics.json", "validation.json", "summary.json", "report.md",
                 "teacher_vs_student.png", "pareto.png", "layers.png", "predicted_vs_measured.png"):
        assert (out / name).exists(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk) >= {"teacher", "student", "speedup", "budget_ms", "within_budget"}
    assert set(on_disk["teacher"]) >= {"latency_ms", "top1"}
    assert set(on_disk["student"]) >= {"latency_ms", "predicted_ms", "top1"}
    assert on_disk["speedup"] == pytest.approx(
        on_disk["teacher"]["latency_ms"] / on_disk["student"]["latency_ms"], rel=1e-2)
    # the chosen single-shot student skips layers, so it predicts faster than the teacher
    assert on_disk["student"]["predicted_ms"] < on_disk["teacher"]["predicted_ms"]
    assert on_disk["student"]["predicted_ms"] <= on_disk["budget_ms"] * 1.0001
    assert 0 <= on_disk["student"]["top1"] <= 100
    report = (out / "report.md").read_text()
    assert "skipped" in report and "![Pareto front](pareto.png)" in report


def test_profile_stage_calibrates_the_lut_on_the_runs_pool(finished_run):
    out, _ = finished_run
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert stages["profile"]["calibration"] == "fitted"
    cal = json.loads((out / "lut.json").read_text())["calibration"]
    assert cal["pool"] == "single-shot" and cal["n_fit"] + cal["n_held_out"] >= 6
    # fitted to fastest iterations, the figure verify and validation compare
    assert cal["statistic"] == "fastest" and cal["drift_correction"] is False
    # the search's predictions are the calibrated ones: the teacher's predicted latency is the fit
    # applied to the LUT sum
    summary = json.loads((out / "summary.json").read_text())
    from lana.lut import Lut

    lut = Lut.load(out / "lut.json")
    teacher_ops = [layer["ops"][0] for layer in lut.layers]
    assert summary["teacher"]["predicted_ms"] == pytest.approx(lut.predict(teacher_ops), rel=1e-3)
    # (the fit that won may be "none", offset 0 and slope 1, on a machine whose LUT sum is right)
    assert lut.predict(teacher_ops) == pytest.approx(
        cal["offset_ms"] + cal["slope"] * lut.predict_raw(teacher_ops), rel=1e-9)


def test_rerun_skips_finished_stages_and_new_budget_reuses_early_ones(finished_run, tiny_device):
    out, _ = finished_run
    before = json.loads((out / "run.json").read_text())["stages"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run("demo", tiny_device, "0.6x", out=out, **QUICK)
    after = json.loads((out / "run.json").read_text())["stages"]
    assert after == before  # nothing re-ran
    config = RunConfig(teacher="demo", device=tiny_device, budget="0.7x", **QUICK)
    # a new budget changes the search stage onwards, not profiling or scoring
    assert stage_digest(config, "score") == before["score"]["digest"]
    assert stage_digest(config, "search") != before["search"]["digest"]
    # another LUT (retargeting) re-runs profile, search and later, but keeps the distilled ops
    retarget = RunConfig(teacher="demo", device=tiny_device, budget="0.6x",
                         **{**QUICK, "lut": "other.json"})
    for stage in ("pretrain", "score"):
        assert stage_digest(retarget, stage) == before[stage]["digest"]
    for stage in ("profile", "search", "validate", "report"):
        assert stage_digest(retarget, stage) != before[stage]["digest"]


def test_new_budget_reruns_from_the_search_and_replaces_stale_artifacts(finished_run, tiny_device,
                                                                          tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    before = json.loads((out / "run.json").read_text())["stages"]
    old_arch = json.loads((out / "select.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run("demo", tiny_device, "0.9x", out=out, **QUICK)
    after = json.loads((out / "run.json").read_text())["stages"]
    for stage in ("profile", "pretrain", "score"):
        assert after[stage] == before[stage]
    for stage in ("search", "verify", "select", "finetune", "validate", "report"):
        assert after[stage]["done"] and after[stage]["digest"] != before[stage]["digest"]
    assert summary["budget"] == "0.9x"
    new_arch = json.loads((out / "select.json").read_text())
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())
    assert new_arch.get("budget_ms") != old_arch.get("budget_ms")
    assert metrics["epochs"] == QUICK["finetune_epochs"]


def test_refuses_another_runs_directory(finished_run, tiny_device):
    out, _ = finished_run
    with pytest.raises(RunError, match="holds another run.*--force"):
        run("demo", tiny_device, "0.6x", out=out, **{**QUICK, "pool": "small"})


def test_refuses_a_foreign_nonempty_directory(tmp_path, tiny_device):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty.*--force"):
        run("demo", tiny_device, "0.5x", out=tmp_path, **QUICK)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # nothing lost


def test_unusable_device_says_why_and_lists_usable(tmp_path, capsys):
    code = main(["run", "--device", "v100-trt", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "not usable here" in err and "cpu-ort" in err


def test_missing_data_dir_is_one_line_error(tmp_path, capsys):
    code = main(["run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err


def test_infeasible_budget_says_smallest_reachable(finished_run, tiny_device, tmp_path):
    out, _ = finished_run
    from lana.search.report import search_files

    with pytest.raises(Exception, match=r"(?i)smallest|cheapest|minimum"):
        search_files(luts=[str(out / "lut.json")], scores=str(out / "scores.json"),
                     budgets=["0.01x"], out=str(tmp_path / "s.json"), k=1, plot=False)


# ------------------------------------------------------------------ verify: measured candidates


def test_verify_stage_measures_candidates_and_selects_a_passing_one(finished_run):
    out, summary = finished_run
    doc = json.loads((out / "verify.json").read_text())
    assert doc["measured"] and doc["rounds"]
    for m in doc["measured"]:
        assert m["measured_ms"] > 0
        assert m["passed"] == (m["measured_ms"] <= doc["rounds"][m["round"]]["budget_ms"])
    chosen = json.loads((out / "select.json").read_text())["ops"]
    assert chosen in [a["ops"] for a in doc["architectures"]]
    if not doc["fallback"]:
        assert all(m["passed"] for m in doc["measured"] if m["keys"] == chosen)
    assert summary["verified"]["measured"] == len(doc["measured"])
    # the predicted-vs-measured plot shows the other measured candidates, scaled to the teacher
    # measured in the validation session
    val = json.loads((out / "validation.json").read_text())
    others = [m for m in doc["measured"] if m["keys"] != chosen]
    assert len(val["candidates"]) == len(others)
    assert val["candidates"][0]["measured_ms"] == pytest.approx(
        others[0]["measured_ratio"] * val["teacher"]["measured_ms"])


def _fake_measurements(monkeypatch, factor, spread=0.0):
    """Every candidate measures ``factor(predicted)`` x its calibrated prediction; the teacher
    measures exactly its prediction; every network's repeats spread ``spread``."""
    import lana.calibrate as calibrate

    calls = []

    def fake(archs, lut, preset, **kwargs):
        calls.append(len(archs))
        teacher = lut.predict(archs[0])
        return [(teacher, spread)] + [(factor(lut.predict(a)) * lut.predict(a), spread)
                                      for a in archs[1:]]

    monkeypatch.setattr(calibrate, "measure_architectures", fake)
    return calls


def test_verify_searches_again_under_a_corrected_limit(finished_run, tiny_device, monkeypatch,
                                                       tmp_path):
    from lana.lut import Lut
    from lana.select import read_architectures
    from lana.verify import verify

    out, _ = finished_run
    lut = Lut.load(out / "lut.json")
    first = read_architectures(out / "search.json", "0.6x")
    teacher = lut.predict([layer["ops"][0] for layer in lut.layers])
    # Every first-round candidate measures just over the budget, so none passes.
    factor = 1.01 * 0.6 * teacher / min(lut.predict(c.arch.ops) for c in first)
    calls = _fake_measurements(monkeypatch, lambda pred: factor)
    doc = verify(out / "search.json", out / "lut.json", tiny_device, "0.6x",
                 out=tmp_path / "v.json", min_kept=1, rounds=2)
    r0, r1 = doc["rounds"][0], doc["rounds"][1]
    assert r0["passed"] == 0 and doc["researched"] >= 1 and len(calls) >= 2
    # the new limit aims 2 % inside the budget at the measured/predicted ratio (or is the floor)
    from lana.search.files import load_table
    from lana.verify import AIM, MIN_SHRINK

    table = load_table(out / "scores.json", [out / "lut.json"])
    floor = table.minimum(table.table_names[0])
    assert r0["ratio_q75"] == pytest.approx(factor) and r0["method"] == "ratio"
    aimed = min(r0["limit_ms"] * (1 - MIN_SHRINK), 0.6 * (1 - AIM) * teacher / factor)
    assert r1["limit_ms"] == pytest.approx(max(aimed, floor), rel=1e-6)
    assert r1["limit_ms"] < r0["limit_ms"]
    assert r1["passed"] >= 1 and not doc["fallback"]
    assert all(a["measured_ms"] <= 0.6 * teacher * (1 + 1e-9) for a in doc["architectures"])
    assert json.loads((tmp_path / "v.json").read_text())["passed"] == doc["passed"]


def test_verify_keeps_the_fastest_with_a_warning_when_nothing_fits(finished_run, tiny_device,
                                                                   monkeypatch, tmp_path, capsys):
    from lana.verify import VerifyWarning, verify

    out, _ = finished_run
    _fake_measurements(monkeypatch, lambda pred: 50.0)
    with pytest.warns(VerifyWarning, match="no candidate met the budget"):
        doc = verify(out / "search.json", out / "lut.json", tiny_device, "0.6x", min_kept=2,
                     rounds=1)
    assert doc["fallback"] and doc["passed"] == 0 and len(doc["architectures"]) == 2
    fastest = sorted(m["measured_ms"] for m in doc["measured"])[:2]
    assert sorted(a["measured_ms"] for a in doc["architectures"]) == fastest
    # the command exits 1 and says so
    code = main(["verify", "--search", str(out / "search.json"), "--lut", str(out / "lut.json"),
                 "--device", tiny_device, "--budget", "0.6x", "--rounds", "0",
                 "--out", str(tmp_path / "v.json")])
    assert code == 1 and "no candidate met the budget" in capsys.readouterr().err


@pytest.mark.parametrize("spread", [0.05, 0.4])
def test_verify_says_when_the_machine_was_too_busy_to_trust_verdicts(finished_run, tiny_device,
                                                                     monkeypatch, spread):
    from lana.verify import verify

    out, _ = finished_run
    _fake_measurements(monkeypatch, lambda pred: 0.5, spread=spread)
    lines = []
    doc = verify(out / "search.json", out / "lut.json", tiny_device, "0.6x", rounds=0,
                 log=lines.append)
    assert doc["rounds"][0]["spread_median"] == pytest.approx(spread)
    busy = [line for line in lines if "machine was busy" in line]
    assert len(busy) == (spread > 0.15) and len(lines) == 1 + (spread > 0.15)
    assert ("spread 40% (median)" in lines[-1] and "--repeats" in lines[-1]) or spread < 0.15


def test_verify_measures_again_a_candidate_that_passed_on_widely_spread_repeats(
        finished_run, tiny_device, monkeypatch):
    import lana.calibrate as calibrate
    from lana.verify import verify

    out, _ = finished_run
    calls = []

    def fake(archs, lut, preset, **kwargs):
        # first: every candidate at 0.5 of the teacher, its repeats spread 60%; measured again,
        # the first of them at 0.5 (spread 5%), the others at 0.9
        teacher = lut.predict(archs[0])
        calls.append(len(archs) - 1)
        if len(calls) == 1:
            return [(teacher, 0.6)] + [(0.5 * teacher, 0.6) for _ in archs[1:]]
        return [(teacher, 0.05)] + [((0.5 if i == 0 else 0.9) * teacher, 0.05)
                                    for i in range(len(archs) - 1)]

    monkeypatch.setattr(calibrate, "measure_architectures", fake)
    lines = []
    doc = verify(out / "search.json", out / "lut.json", tiny_device, "0.6x", rounds=0,
                 log=lines.append)
    assert len(calls) == 2 and calls[1] == calls[0] > 1  # every unsure pass measured again
    assert doc["passed"] == 1 and doc["rounds"][0]["passed"] == 1
    assert [m["remeasured_ratio"] for m in doc["measured"]] == pytest.approx(
        [0.5] + [0.9] * (calls[0] - 1))
    assert f"{calls[0]} candidate(s) passed on repeats spread over 15%; measured again, 1 still " \
           f"pass" in lines[0]


def test_verify_compares_fastest_iterations(finished_run, tiny_device, monkeypatch):
    import lana.calibrate as calibrate
    from lana.verify import verify

    out, _ = finished_run
    asked = []

    def fake(archs, lut, preset, **kwargs):
        asked.append((kwargs.get("statistic"), kwargs.get("drift_correction")))
        teacher = lut.predict(archs[0])
        return [(teacher, 0.05)] + [(0.5 * teacher, 0.05) for _ in archs[1:]]

    monkeypatch.setattr(calibrate, "measure_architectures", fake)
    verify(out / "search.json", out / "lut.json", tiny_device, "0.6x", rounds=0)
    assert asked == [("fastest", False)]


def test_validation_judges_the_budget_on_fastest_iterations(finished_run, tiny_device,
                                                            monkeypatch, tmp_path):
    """A student whose median iterations measure 0.7 of the teacher's (a busy machine slowing it
    more) but whose fastest measure 0.5 meets a 0.6x budget; both figures are recorded."""
    import shutil

    import lana.bench
    from lana.run import Pipeline
    from lana.run_report import validate_run
    from profilers import Measurement

    def fake(a, a_shape, b, b_shape, preset, *, repeats, **kwargs):
        student = [Measurement((0.5, 0.7, 0.7, 0.9)) for _ in range(repeats)]
        teacher = [Measurement((1.0, 1.0, 1.0, 1.2)) for _ in range(repeats)]
        return student, teacher, {}

    monkeypatch.setattr(lana.bench, "interleaved", fake)
    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    config = RunConfig(teacher="demo", device=tiny_device, budget="0.6x", **QUICK)
    val = validate_run(Pipeline(config, out))
    assert val["statistic"] == "fastest"
    assert val["student"]["measured_ms"] == pytest.approx(0.5)
    assert val["student"]["median_ms"] == pytest.approx(0.7)
    assert val["speedup"] == pytest.approx(2.0) and val["speedup_median"] == pytest.approx(1 / 0.7)
    assert val["budget_measured_ms"] == pytest.approx(0.6) and val["within_budget"]


def test_verify_with_no_repeats_is_one_line_error(finished_run, tiny_device, tmp_path, capsys):
    out, _ = finished_run
    code = main(["verify", "--search", str(out / "search.json"), "--lut", str(out / "lut.json"),
                 "--device", tiny_device, "--budget", "0.6x", "--repeats", "0",
                 "--out", str(tmp_path / "v.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--repeats must be at least 1" in err and "\n" not in err
    assert not (tmp_path / "v.json").exists()


def test_verify_missing_search_is_one_line_error(tmp_path, tiny_device, capsys):
    code = main(["verify", "--search", str(tmp_path / "nope.json"), "--lut", "x.json",
                 "--device", tiny_device, "--budget", "0.5x", "--out", str(tmp_path / "v.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not exist" in err and "\n" not in err


def test_verify_finds_its_scores_checks_them_first_and_notes_another_lut(finished_run, tiny_device,
                                                                          monkeypatch, tmp_path):
    import shutil

    from lana.errors import LanaError
    from lana.verify import verify

    out, _ = finished_run
    calls = _fake_measurements(monkeypatch, lambda pred: 50.0)  # nothing passes: re-searches
    # a search result read from elsewhere names its scores relative to where the search ran
    moved = tmp_path / "moved"
    moved.mkdir()
    doc = json.loads((out / "search.json").read_text())
    doc["scores"] = "somewhere/else/scores.json"
    (moved / "search.json").write_text(json.dumps(doc))
    shutil.copy(out / "scores.json", moved / "scores.json")
    with pytest.warns(Warning):
        result = verify(moved / "search.json", out / "lut.json", tiny_device, "0.6x", rounds=1)
    assert result["researched"] == 1
    # a scores file that cannot be searched fails before anything is measured
    calls.clear()
    with pytest.raises(LanaError, match="does not exist"):
        verify(out / "search.json", out / "lut.json", tiny_device, "0.6x",
               scores=tmp_path / "nope.json")
    assert calls == []
    # a LUT other than the search's: its own prediction of the budget, with a note
    other = tmp_path / "other.json"
    shutil.copy(out / "lut.json", other)
    lines = []
    with pytest.warns(Warning):
        verify(out / "search.json", other, tiny_device, "0.6x", rounds=1, log=lines.append)
    assert lines[0].startswith("note: the search used") and str(other) in lines[0]


def test_verify_measures_a_round_again_when_the_teacher_is_off_its_calibrated_speed(
        finished_run, tiny_device, monkeypatch, tmp_path):
    import lana.calibrate as calibrate
    from lana.lut import Lut
    from lana.verify import verify

    out, _ = finished_run
    lut = Lut.load(out / "lut.json")
    lut.data["calibration"] = lut.calibration or {"kind": "affine", "offset_ms": 0.0, "slope": 1.0}
    lut.save(tmp_path / "lut.json")
    speeds = iter([1.6, 1.1])  # a slow period, then the speed the LUT was calibrated at
    attempts = []

    def fake(archs, the_lut, preset, **kwargs):
        teacher = next(speeds) * the_lut.predict(archs[0])
        attempts.append(teacher)
        # in the slow period the candidates slowed less than the teacher: they look fast
        return [(teacher, 0.0)] + [(0.45 * teacher, 0.0) for _ in archs[1:]]

    monkeypatch.setattr(calibrate, "measure_architectures", fake)
    lines = []
    doc = verify(out / "search.json", tmp_path / "lut.json", tiny_device, "0.6x", rounds=0,
                 settle_s=0.0, log=lines.append)
    assert len(attempts) == 2 and doc["rounds"][0]["attempts"] == 2
    assert doc["rounds"][0]["teacher_ms"] == attempts[1]  # the attempt closest to calibration
    assert doc["rounds"][0]["teacher_vs_calibration"] == pytest.approx(1.1)
    said = [line for line in lines if "its calibrated prediction" in line]
    assert len(said) == 1 and "1.60x" in said[0] and "again in 0 s" in said[0]
    # an uncalibrated LUT predicts raw sums, far from any measurement: no second attempt
    lut.data["calibration"] = None
    lut.save(tmp_path / "raw.json")
    speeds, attempts[:] = iter([1.6]), []
    verify(out / "search.json", tmp_path / "raw.json", tiny_device, "0.6x", rounds=0,
           settle_s=0.0)
    assert len(attempts) == 1


def test_verify_secant_step_follows_a_non_proportional_error():
    from lana.verify import _next_limit

    # measured = 0.2 + 0.5 * predicted exactly, seen in two rounds: the ratio alone would aim too
    # low or too high; the line lands on the goal.
    rounds = ((0, (0.6, 0.62)), (1, (0.4, 0.42)))
    pts = [{"round": r, "x": x, "y": 0.2 + 0.5 * x} for r, xs in rounds for x in xs]
    x, method = _next_limit(pts, 0.45, q75=1.0)
    assert method == "secant" and x == pytest.approx(0.5)
    x, method = _next_limit(pts[:2], 0.45, q75=1.5)
    assert method == "ratio" and x == pytest.approx(0.3)


def test_run_command_defaults_are_the_run_config_defaults():
    from lana.cli import build_parser

    args = build_parser().parse_args(["run"])
    config = RunConfig()
    for name in ("teacher", "device", "budget", "pool", "calibrate", "k", "overlap", "seed",
                 "tolerance", "verify_rounds", "repeats"):
        assert getattr(args, name) == getattr(config, name), name


def test_repeats_reach_every_end_to_end_measurement(finished_run, tiny_device, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    before = json.loads((out / "run.json").read_text())["stages"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run("demo", tiny_device, "0.6x", out=out, **{**QUICK, "repeats": 2})
    after = json.loads((out / "run.json").read_text())["stages"]
    assert after["score"] == before["score"]  # distillation and scoring do not measure latency
    assert json.loads((out / "lut.json").read_text())["calibration"]["repeats"] == 2
    assert json.loads((out / "verify.json").read_text())["repeats"] == 2
    val = json.loads((out / "validation.json").read_text())
    assert len(val["teacher"]["runs_ms"]) == len(val["student"]["runs_ms"]) == 2


def test_a_setting_added_later_keeps_older_directories_resumable():
    # a directory written before --repeats existed has digests without it; at its default the
    # digest is the same, so the run resumes instead of re-measuring and re-training
    config = RunConfig()
    for stage in ("profile", "verify", "validate", "report"):
        names: list[str] = []
        for s in upstream(stage):
            names += [n for n in STAGE_INPUTS[s] if n != "repeats"]
        assert stage_digest(config, stage) == config.digest(tuple(dict.fromkeys(names)))
        assert stage_digest(RunConfig(repeats=5), stage) != stage_digest(config, stage)
    assert stage_digest(RunConfig(repeats=5), "score") == stage_digest(config, "score")


def test_repeats_below_one_is_refused(tmp_path, capsys):
    code = main(["run", "--repeats", "0", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--repeats must be at least 1" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--budget", "abc"], "--budget: budget 'abc' is not a number"),
    (["--budget", "0x"], "must be a positive number"),
    (["--budget", "5M"], "--budget: budget '5M' is a count, but latency budgets are milliseconds"),
    (["--k", "0"], "--k must be at least 1"),
    (["--overlap", "1.5"], "--overlap must be in (0, 1]"),
    (["--calibrate", "-1"], "--calibrate must be at least 0"),
    (["--finetune-epochs", "0"], "--finetune-epochs must be at least 1"),
    (["--verify-rounds", "-1"], "--verify-rounds must be at least 0"),
    (["--tolerance", "-0.1"], "--tolerance is a fraction"),
])
def test_options_a_later_stage_refuses_are_refused_before_the_first(tmp_path, capsys, argv,
                                                                     needle):
    code = main(["run", *argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_unverified_passes_the_search_candidates_on_to_selection(finished_run, tmp_path):
    from lana.select import read_architectures
    from lana.verify import unverified

    out, _ = finished_run
    doc = unverified(out / "search.json", "0.6x", "the LUT describes 'v100-trt'",
                     out=tmp_path / "v.json")
    found = read_architectures(out / "search.json", "0.6x")
    passed_on = read_architectures(tmp_path / "v.json", "0.6x")
    assert [c.arch.ops for c in passed_on] == [c.arch.ops for c in found]
    assert doc["skipped"] and doc["measured"] == [] and not doc["fallback"]
    assert passed_on[0].arch.budget_ms == pytest.approx(found[0].arch.budget_ms)


def test_a_teacher_without_trained_weights_is_refused_before_any_stage(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--teacher", "efficientnet_b0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: teacher efficientnet_b0 has no trained weights here") and \
        "--teacher-weights FILE" in err and err.count("\n") == 1
    assert main(["run", "--teacher", f"{tmp_path}/net.py:make", "--out", str(out)]) == 2
    assert "net.py' does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_teacher_weights_reach_the_teacher_and_rerun_from_pretraining(tmp_path):
    from lana.run import Pipeline
    from lana.teachers import WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "demo.pt"
    copy = tmp_path / "mine.pt"
    copy.write_bytes(shipped.read_bytes())
    pipe = Pipeline(RunConfig(teacher_weights=str(copy)), tmp_path / "r")
    assert pipe.teacher.pretrained and pipe.teacher.weights == str(copy)
    default, mine = RunConfig(), RunConfig(teacher_weights=str(copy))
    assert stage_digest(mine, "profile") == stage_digest(default, "profile")  # latency: no weights
    assert all(stage_digest(mine, s) != stage_digest(default, s) for s in ("pretrain", "score"))
    # at its default the setting leaves digests as they were before it existed
    assert stage_digest(default, "pretrain") == default.digest(
        tuple(n for n in STAGE_INPUTS["pretrain"] if n != "teacher_weights"))

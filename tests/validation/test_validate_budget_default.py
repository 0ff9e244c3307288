"""lana validate without --budget checks the budget the search was given, as it was given: a
relative one (0.5x) of the teacher measured in the same session, exactly as --budget 0.5x would;
the file's budget_ms (the search's predicted limit, in ms) only when no budget string was
recorded."""

from __future__ import annotations

import json
import random
import warnings

import pytest

import lana.bench
from lana.assemble import Architecture, read_arch, teacher_architecture, write_arch
from lana.cli import main
from lana.lut import Lut
from lana.select import read_architectures
from lana.validate import recorded_budget, resolve_budget
from profilers import Measurement


@pytest.fixture
def lut(demo_lut):
    return Lut.load(demo_lut)


@pytest.fixture
def arch(demo_pool, lut):
    """A seeded random architecture as this LUT's search records it: one table, this device."""
    rng = random.Random(5)
    ops = tuple(rng.choice(lp.keys) for lp in demo_pool)
    return Architecture("demo", "small", ops, tuple(lp.layer.name for lp in demo_pool),
                        predicted_ms={lut.preset: lut.predict(ops)}, budget_ms=2.5)


# ---------------------------------------------------------------------------------------------
# Which budget is checked (no measurement)


def test_a_recorded_relative_budget_is_checked_as_given(arch, lut):
    choice = resolve_budget(None, arch, lut, lut.preset, "0.5x")
    assert choice.given == "0.5x" and choice.relative and choice.note is None
    assert choice.label == "0.5x" and "architecture file" in choice.source
    assert "0.5x" in choice.source
    # Searched with another LUT of this device: the teacher is measured, so it still applies.
    other = arch.replace(predicted_ms={lut.preset: 3 * lut.predict(arch.ops)})
    assert resolve_budget(None, other, lut, lut.preset, "0.5x").given == "0.5x"
    # Written as lana search accepts it (case, spaces): read as validate's --budget takes it.
    assert resolve_budget(None, arch, lut, lut.preset, " 0.5X ").given == "0.5x"


def test_an_explicit_budget_wins_over_the_recorded_one(arch, lut):
    choice = resolve_budget("0.4x", arch, lut, lut.preset, "0.5x")
    assert choice.given == "0.4x" and choice.source == "--budget 0.4x" and choice.note is None
    choice = resolve_budget(3.0, arch, lut, lut.preset, "0.5x")
    assert choice.given == 3.0 and not choice.relative


@pytest.mark.parametrize("recorded", [None, "2.5", "2.5ms", "fast", ""])
def test_without_a_relative_budget_the_file_budget_ms_is_checked(arch, lut, recorded):
    # Older files (no budget string), absolute budgets and unreadable labels: budget_ms, in ms,
    # as before, when it is this LUT's.
    choice = resolve_budget(None, arch, lut, lut.preset, recorded)
    assert choice.given == 2.5 and not choice.relative and choice.note is None
    assert choice.source == "architecture file" and choice.label == "2.5"
    other = arch.replace(predicted_ms={lut.preset: 3 * lut.predict(arch.ops)})
    choice = resolve_budget(None, other, lut, lut.preset, recorded)
    assert choice.given is None and choice.source is None and "another LUT" in choice.note


@pytest.mark.parametrize("predicted, words", [
    ({}, "no predicted_ms"),
    ({"cpu-torch": 3.0}, "cpu-torch"),
    ({"cpu-ort-tiny": 3.0, "cpu-torch": 3.0}, "several LUTs"),
])
def test_a_relative_budget_of_another_device_is_left_aside(arch, lut, predicted, words):
    choice = resolve_budget(None, arch.replace(predicted_ms=predicted), lut, lut.preset, "0.5x")
    assert choice.given is None and choice.source is None and not choice.relative
    assert words in choice.note and "--budget 0.5x" in choice.note and "\n" not in choice.note


# ---------------------------------------------------------------------------------------------
# Where the files record it


def scores_file(lut, path):
    """A scores file over the LUT's ops (random scores, the teacher op 0), as lana score writes."""
    rng = random.Random(0)
    layers = [{"name": layer["name"],
               "scores": {k: (0.0 if k.startswith("teacher:") else rng.uniform(0.01, 1.0))
                          for k in layer["ops"] if lut.has(k)}}
              for layer in lut.layers]
    path.write_text(json.dumps({"schema": "lana.scores/1", "teacher": "demo", "pool": "small",
                                "teacher_loss": 1.0, "layers": layers}))
    return path


def test_the_budget_the_search_verify_and_select_record(demo_lut, lut, tmp_path):
    from lana.search.report import search_files
    from lana.verify import unverified

    search = tmp_path / "search.json"
    scores = scores_file(lut, tmp_path / "scores.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = search_files(luts=[str(demo_lut)], scores=str(scores), budgets=["0.6x,0.8x"],
                              out=str(search), k=1, plot=False)
    doc = json.loads(search.read_text())
    assert [t["budgets"][lut.preset]["given"] for t in report["targets"]] == ["0.6x", "0.8x"]
    # Per architecture, in the order --index counts them.
    for index, given in enumerate(["0.6x", "0.8x"]):
        assert recorded_budget(doc, index, search) == given
        limit = report["targets"][index]["budgets"][lut.preset]["limit"]
        assert read_arch(search, index).budget_ms == pytest.approx(limit)
    assert recorded_budget(doc, None, search) == "0.6x"
    # lana assemble straight from the search report keeps the budget of the architecture it took.
    from lana.assemble import assemble

    assemble(search, tmp_path / "student", index=1, onnx=False)
    assert json.loads((tmp_path / "student" / "arch.json").read_text())["budget"] == "0.8x"

    # lana select's winner (here of lana verify's result) records the budget under "selection",
    # as lana select labels it; lana assemble keeps it.
    verify = tmp_path / "verify.json"
    unverified(search, "0.8x", "not measured here", out=verify)
    (cand,) = read_architectures(verify)
    assert cand.budget == "0.8x"
    chosen = cand.arch
    selected = {**chosen.to_dict(), "selection": {"budget": cand.budget, "source": str(verify)}}
    assert recorded_budget(selected) == "0.8x"
    assembled = tmp_path / "arch.json"
    write_arch(Architecture.from_dict(selected), assembled)
    assert recorded_budget(json.loads(assembled.read_text())) == "0.8x"

    # A search result whose solutions carry no schema (read as lana select reads it).
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"teacher": "demo", "pool": "small", "budget": "0.7x",
                                 "solutions": [{"ops": list(chosen.ops)}]}))
    assert read_arch(loose).ops == chosen.ops
    assert recorded_budget(json.loads(loose.read_text()), None, loose) == "0.7x"

    # A file of an older version: budget_ms only.
    assert recorded_budget({**chosen.to_dict(), "budget_ms": 1.0}) is None


# ---------------------------------------------------------------------------------------------
# End to end


def test_validate_checks_the_recorded_relative_budget_against_the_measured_teacher(
        arch, lut, demo_lut, demo_teacher, tiny_device, tmp_path, monkeypatch, capsys):
    # Searched at 0.5x: budget_ms is half the teacher's LUT prediction.  This machine runs twice as
    # slow as when the LUT was profiled; the network measures 0.4x of the teacher measured beside
    # it, which meets 0.5x, but is 0.8x of the teacher's prediction, far over budget_ms.
    pred = lut.predict(teacher_architecture(demo_teacher).ops)
    path = tmp_path / "select.json"
    path.write_text(json.dumps({**arch.replace(budget_ms=0.5 * pred).to_dict(),
                                "selection": {"budget": "0.5x"}}))

    def interleaved(a, a_shape, b, b_shape, preset, *, repeats, protocol=None, config=None,
                    labels=("a", "b")):
        return ([Measurement((0.8 * pred,) * 5) for _ in range(repeats)],
                [Measurement((2.0 * pred,) * 5) for _ in range(repeats)], {})

    monkeypatch.setattr(lana.bench, "interleaved", interleaved)
    monkeypatch.setenv("COLUMNS", "200")
    base = ["validate", "--arch", str(path), "--device", tiny_device, "--lut", str(demo_lut),
            "--repeats", "1"]
    code = main(base + ["--json"])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert code == 0 and doc["passed"] is True and doc["within_budget"] is True, out.err
    assert doc["budget"] == "0.5x" and doc["budget_relative"] is True
    assert doc["budget_source"] == "architecture file (budget 0.5x)"
    assert doc["budget_ms"] == pytest.approx(0.5 * doc["teacher_measured_ms"])
    assert doc["budget_ms"] == pytest.approx(pred)
    assert doc["budget_note"] is None and out.err == ""

    # Exactly what --budget 0.5x gives.
    code = main(base + ["--json", "--budget", "0.5x"])
    explicit = json.loads(capsys.readouterr().out)
    assert code == 0 and explicit["budget_ms"] == pytest.approx(doc["budget_ms"])
    assert explicit["budget"] == "0.5x" and explicit["budget_source"] == "--budget 0.5x"

    # The table says which budget was checked and where it came from.
    assert main(base) == 0
    text = capsys.readouterr().out
    assert "budget 0.5x of measured teacher (architecture file)" in text and "holds" in text

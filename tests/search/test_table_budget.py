"""Search tables and budgets: validation and the one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from lana.errors import LanaError
from lana.search import Budget, SearchError, SearchTable, parse_budgets, search

from .conftest import plain, tiny


def test_fraction_budget_is_of_the_teacher_total():
    t = tiny(5, 4, seed=1)
    teacher = t.total("gpu", t.teacher_choice())
    assert Budget("gpu", "0.5x").resolve(t) == pytest.approx(0.5 * teacher)
    assert Budget("gpu", 3.25).resolve(t) == 3.25
    assert Budget("gpu", "3.25ms").resolve(t) == 3.25
    assert Budget("params", "5M").value == 5e6


def test_parse_budget_lists_and_ranges():
    assert parse_budgets("0.3x,0.5x") == ["0.3x", "0.5x"]
    assert parse_budgets("0.3x:0.7x:0.1x") == ["0.3x", "0.4x", "0.5x", "0.6x", "0.7x"]
    assert parse_budgets("10:12:1,20") == ["10", "11", "12", "20"]
    # the stop is kept when the step does not land on it
    assert parse_budgets("0.5x:0.6x:0.3x") == ["0.5x", "0.6x"]
    assert parse_budgets("0.3x:0.7x:0.15x") == ["0.3x", "0.45x", "0.6x", "0.7x"]
    with pytest.raises(SearchError, match="a positive step"):
        parse_budgets("0.3x:0.7x:0")
    with pytest.raises(SearchError, match="12.5ms for a latency, 5M for parameters"):
        parse_budgets("abc")
    for bad in ("fast", "0.3x:0.7:0.1x", "0.7x:0.3x:0.1x", "1:2", "", "0.5x,0.50x", "10,10ms"):
        with pytest.raises(SearchError):
            parse_budgets(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_and_costs_are_refused(value):
    with pytest.raises(SearchError, match="re-run lana score"):
        plain([[0.0, value]], [[1.0, 0.5]])
    with pytest.raises(SearchError, match="re-profile"):
        plain([[0.0, 0.1]], [[1.0, value]])


def test_mismatched_layer_counts_are_refused():
    t = tiny(4, 3)
    with pytest.raises(SearchError, match="covers 3 layers"):
        SearchTable(layer_names=t.layer_names, ops=t.ops, scores=t.scores,
                    costs={"gpu": t.costs["gpu"][:3]})
    with pytest.raises(SearchError, match="2 score values"):
        SearchTable(layer_names=["a"], ops=[["x", "y", "z"]], scores=[[0.0, 0.1]],
                    costs={"ms": [[1.0, 0.5, 0.2]]})


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k must be"), ({"k": 2.5}, "k must be"),
    ({"overlap": 0.0}, "overlap must be in"), ({"overlap": 1.5}, "overlap must be in"),
    ({"gap": -0.1}, "gap must be"),
])
def test_bad_options_are_one_line_errors(kwargs, match):
    t = tiny(4, 3)
    with pytest.raises(LanaError, match=match) as err:
        search(t, Budget("gpu", "0.8x"), **kwargs)
    assert "\n" not in str(err.value)


def test_budget_on_unknown_table_names_the_tables():
    with pytest.raises(SearchError, match="tables are"):
        search(tiny(4, 3), Budget("cpu", "0.5x"))


def test_teacher_fraction_needs_teacher_ops():
    t = plain([[0.0, 0.1]], [[1.0, 0.5]]).restrict([[False, True]])
    with pytest.raises(SearchError, match="no teacher op"):
        search(t, Budget("ms", "0.9x"))
    assert search(t, Budget("ms", 0.6)).best.objective == pytest.approx(0.1)


def test_single_shot_keeps_teacher_and_identity_only():
    t = tiny(6, 8, seed=2)
    s = t.single_shot()
    assert s.n_ops == [2] * 6
    assert all(set(f) == {"teacher", "identity"} for f in s.families)
    assert np.array_equal(s.teacher_choice(), np.zeros(6))


def test_a_lut_without_a_budget_is_said_to_be_unlimited():
    from lana.search.errors import SearchWarning
    from lana.search.report import build_targets

    with pytest.warns(SearchWarning, match="no --budget for cpu-torch: its latency is predicted"):
        targets = build_targets(["cpu-ort", "cpu-torch"], ["0.5x"])
    assert [[b.table for b in t] for t in targets] == [["cpu-ort"]]


def test_files_of_a_newer_lana_say_to_upgrade(tmp_path):
    import json

    from lana.assemble import ArchError, read_arch
    from lana.search.files import read_scores

    (tmp_path / "s.json").write_text(json.dumps({"schema": "lana.scores/2", "layers": []}))
    with pytest.raises(SearchError, match="written by a newer lana: upgrade lana"):
        read_scores(tmp_path / "s.json")
    (tmp_path / "a.json").write_text(json.dumps({"schema": "lana.arch/2", "teacher": "demo",
                                                 "ops": []}))
    with pytest.raises(ArchError, match="written by a newer lana: upgrade lana"):
        read_arch(tmp_path / "a.json")
    (tmp_path / "s.json").write_text(json.dumps({"schema": "lana.scores/0", "layers": []}))
    with pytest.raises(SearchError, match="pass the file written by lana score"):
        read_scores(tmp_path / "s.json")

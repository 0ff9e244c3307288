"""Selection: search results are read however nested, and the lowest-loss architecture wins."""

from __future__ import annotations

import json

import pytest

from lana.select import (SelectError, SelectWarning, build_candidate, measure_loss,
                         read_architectures, select)


def _ops(teacher, replace: dict[int, str]) -> list[str]:
    from lana.pool import build_pool

    pools = build_pool(teacher, "small")
    ops = []
    for i, lp in enumerate(pools):
        fam = replace.get(i)
        spec = next(s for s in lp.specs if s.family == (fam or "teacher"))
        ops.append(spec.key)
    return ops


def _search_doc(teacher, solutions: list[list[str]], budgets=("0.5x",)) -> dict:
    # The nesting lana search uses may change; select must not depend on it.
    return {"schema": "lana.search/1", "teacher": "demo", "pool": "small",
            "budgets": [{"budget": label, "budget_ms": 1.5 + b,
                         "solutions": [{"ops": ops, "objective": 0.1 * k,
                                        "predicted_ms": {"cpu-ort": 1.0 + k}}
                                       for k, ops in enumerate(solutions)]}
                        for b, label in enumerate(budgets)]}


def test_reads_nested_search_results_and_single_files(teacher, same_shape, tmp_path):
    a = _ops(teacher, {same_shape[0]: "identity"})
    b = _ops(teacher, {same_shape[0]: "efn"})
    doc = _search_doc(teacher, [a, b], budgets=("0.5x", "0.7x"))
    path = tmp_path / "search.json"
    path.write_text(json.dumps(doc))
    with pytest.warns(SelectWarning, match="using the first, 0.5x"):
        assert [c.budget for c in read_architectures(path)] == ["0.5x", "0.5x"]
    got = read_architectures(path, "0.7x")
    assert [c.arch.ops for c in got] == [tuple(a), tuple(b)]
    assert got[0].arch.teacher == "demo" and got[0].arch.pool == "small"
    assert got[1].arch.objective == pytest.approx(0.1)
    assert got[0].arch.predicted_ms == {"cpu-ort": 1.0}
    assert [c.index for c in read_architectures(path, 1.5)] == [0, 1]  # budget in ms
    with pytest.raises(SelectError, match="0.5x, 0.7x"):
        read_architectures(path, "0.9x")
    # A mapping keyed by budget label, and a bare list.
    path.write_text(json.dumps({"teacher": "demo", "results": {"0.5x": [{"ops": a}]}}))
    assert read_architectures(path)[0].budget == "0.5x"
    path.write_text(json.dumps([{"teacher": "demo", "ops": a}, {"teacher": "demo", "ops": b}]))
    assert len(read_architectures(path)) == 2
    # A single architecture file.
    single = {"schema": "lana.arch/1", "teacher": "demo", "pool": "small", "ops": b,
              "layer_names": [l.name for l in teacher.layers], "predicted_ms": {"x": 2.0},
              "objective": 0.3, "budget_ms": 2.5}
    path.write_text(json.dumps(single))
    (c,) = read_architectures(path)
    assert c.arch.ops == tuple(b) and c.arch.budget_ms == 2.5
    path.write_text(json.dumps({"schema": "lana.search/1", "budgets": []}))
    with pytest.raises(SelectError, match="no architecture"):
        read_architectures(path)


def test_reads_the_lana_search_report_format(teacher, same_shape, tmp_path):
    from lana.assemble import ARCH_SCHEMA

    names = [l.name for l in teacher.layers]

    def entry(ops, obj, limit):
        arch = {"schema": ARCH_SCHEMA, "teacher": "demo", "pool": "small", "ops": ops,
                "layer_names": names, "predicted_ms": {"cpu-ort": limit * 0.9},
                "objective": obj, "budget_ms": limit}
        return {"arch": arch, "ops": ops, "objective": obj, "predicted_loss": 0.1 + obj,
                "predicted_ms": {"cpu-ort": limit * 0.9}, "costs": {"cpu-ort": limit * 0.9},
                "status": "optimal"}

    a = _ops(teacher, {same_shape[0]: "identity"})
    b = _ops(teacher, {same_shape[1]: "identity"})
    doc = {"schema": "lana.search-report/1", "teacher": "demo", "pool": "small",
           "targets": [{"budgets": {"cpu-ort": {"given": "0.5x", "limit": 1.25}}, "found": 2,
                        "architectures": [entry(a, 0.2, 1.25), entry(b, 0.3, 1.25)]},
                       {"budgets": {"cpu-ort": {"given": "0.7x", "limit": 1.75}}, "found": 1,
                        "architectures": [entry(b, 0.1, 1.75)]}],
           "pareto": [{"cost": 1.0, "objective": 0.2}]}
    path = tmp_path / "search.json"
    path.write_text(json.dumps(doc))
    got = read_architectures(path, "0.5x")
    assert [c.arch.ops for c in got] == [tuple(a), tuple(b)]
    assert got[0].arch.budget_ms == 1.25 and got[0].arch.layer_names == tuple(names)
    assert [c.arch.objective for c in read_architectures(path, 1.75)] == [0.1]
    with pytest.warns(SelectWarning):
        assert len(read_architectures(path)) == 2


def test_select_picks_the_lowest_loss_architecture(teacher, same_shape, tiny, pretrained,
                                                   tmp_path):
    archs = [_ops(teacher, {i: "identity" for i in same_shape}),
             _ops(teacher, {3: "efn", 9: "cb_stack"}),
             _ops(teacher, {0: "vit", 1: "vit", 4: "vit", 7: "vit"})]
    path = tmp_path / "search.json"
    path.write_text(json.dumps(_search_doc(teacher, archs)))
    out = tmp_path / "select.json"
    result = select(path, pretrained, "demo", tiny, out, images=128, batch_size=64,
                    progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["schema"] == "lana.arch/1"
    ranking = result["selection"]["ranking"]
    assert [r["loss"] for r in ranking] == sorted(r["loss"] for r in ranking)
    assert sorted(r["index"] for r in ranking) == [0, 1, 2]
    # Measured independently, the chosen architecture has the lowest loss.
    from lana.distributed import as_split

    split = as_split(tiny.train).plain().subset(128, 0)
    losses = []
    for c in read_architectures(path):
        model = build_candidate(c.arch, teacher, pretrained, "small")
        losses.append(measure_loss(model, split, batch_size=64, device=__import__(
            "torch").device("cpu"))[0])
    best = min(range(3), key=losses.__getitem__)
    assert result["ops"] == archs[best]
    assert result["selection"]["loss"] == pytest.approx(losses[best], rel=1e-5)
    assert result["layer_names"] == [l.name for l in teacher.layers]


def test_select_refuses_another_teacher(teacher, tmp_path):
    path = tmp_path / "search.json"
    path.write_text(json.dumps(_search_doc(teacher, [_ops(teacher, {})])))
    with pytest.raises(SelectError, match="--teacher demo"):
        select(path, None, "efficientnet_b0", None, None, progress=False)


def test_select_needs_the_pretrained_ops(teacher, same_shape, tmp_path):
    path = tmp_path / "search.json"
    path.write_text(json.dumps(_search_doc(teacher, [_ops(teacher, {same_shape[0]: "efn"})])))
    with pytest.raises(SelectError, match="--pretrain"):
        select(path, None, "demo", None, None, progress=False)

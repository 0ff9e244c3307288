"""Budget sweeps (warm-start strategies) and the random / evolutionary baselines."""

from __future__ import annotations

import numpy as np
import pytest

from lana.search import Budget, SearchError, search
from lana.search.baselines import evolutionary_search, random_search
from lana.search.sweep import search_many

from .conftest import tiny


def _targets(*fracs):
    return [[Budget("gpu", f)] for f in fracs]


def test_sweep_strategies_agree_and_front_is_monotone():
    t = tiny(10, 6, seed=21)
    targets = _targets("0.4x", "0.5x", "0.6x", "0.8x")
    runs = {s: search_many(t, targets, k=3, strategy=s, gap=0.0)
            for s in ("cold", "top-down", "bottom-up")}
    objs = {s: [x.objective for r in run.results for x in r.solutions]
            for s, run in runs.items()}
    assert objs["top-down"] == pytest.approx(objs["cold"])
    assert objs["bottom-up"] == pytest.approx(objs["cold"])
    assert runs["top-down"].order == [3, 2, 1, 0]
    assert runs["bottom-up"].order == [0, 1, 2, 3]
    front = runs["cold"].front()
    assert [c for c, _ in front] == sorted(c for c, _ in front)
    best = [o for _, o in front]
    assert all(b2 <= b1 + 1e-12 for b1, b2 in zip(best, best[1:]))  # more budget, less loss


def test_sweep_checks_every_target_before_solving():
    t = tiny(6, 4, seed=2)
    with pytest.raises(SearchError, match="below the smallest"):
        search_many(t, _targets("0.5x", "0.001x"), k=1)
    with pytest.raises(SearchError, match="strategy"):
        search_many(t, _targets("0.5x"), strategy="sideways")


def test_sweep_single_shot_uses_the_restricted_table():
    t = tiny(8, 7, seed=4)
    sweep = search_many(t, _targets("0.6x", "0.8x"), k=2, single_shot=True)
    assert sweep.table.n_ops == [2] * 8
    for r in sweep.results:
        for s in r.solutions:
            assert all(k.split(":")[0] in ("teacher", "identity") for k in s.keys)


def test_baselines_are_feasible_and_not_better_than_the_ilp():
    t = tiny(20, 12, seed=6)
    budgets = [Budget("gpu", "0.5x")]
    ilp = search(t, budgets, k=1, gap=0.0).best
    rnd = random_search(t, budgets, samples=300, seed=1)
    evo = evolutionary_search(t, budgets, time_s=0.3, seed=1)
    limit = search(t, budgets).limits["gpu"]
    for res in (rnd, evo):
        assert res.choices.shape[1] == 20 and res.evaluated > 0
        for c in res.choices[:20]:
            assert t.total("gpu", c) <= limit * (1 + 1e-9)
        assert np.all(np.diff(res.objectives) >= 0)
        assert res.best >= ilp.objective - 1e-12
    assert evo.best <= rnd.best  # evolution improves on random sampling

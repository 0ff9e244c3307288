"""Tabu search for incumbents: feasible answers, never worse than the start, and on tables small
enough to enumerate, the exact optimum of solves with earlier solutions to stay away from."""

from __future__ import annotations

import numpy as np
import pytest

from lana.search import Budget
from lana.search.dense import Dense, Dominance
from lana.search.oracles import brute_force
from lana.search.solver import max_shared_layers, resolve_limits
from lana.search.tabu import TabuSearch

from .conftest import tiny


def _setup(t, budget, prev, overlap=0.7):
    limits = resolve_limits(t, [budget])
    dense = Dense.build(t, limits)
    dom = Dominance(dense, t.dominance(dense.tables))
    for p in prev:
        dom.protect(np.asarray(p))
    shared = max_shared_layers(t.n_layers, overlap)
    return dense, dom.kept, shared


def _feasible(dense, prev, shared, z):
    ok = dense.feasible(z)
    return ok and all(int((np.asarray(p) == z).sum()) <= shared for p in prev)


@pytest.mark.parametrize("seed", range(6))
def test_reaches_the_exact_optimum_after_earlier_solutions(seed):
    t = tiny(6, 5, seed=50 + seed, correlated=seed % 2 == 0)
    budget = Budget("gpu", "0.5x")
    ref = brute_force(t, [budget], k=4, overlap=0.5)
    prev = [c for c, _ in ref[:3]]
    dense, kept, shared = _setup(t, budget, prev, overlap=0.5)
    search = TabuSearch(dense, np.array(prev), shared, kept, patience=3000)
    start = t.teacher_choice()  # usually over budget and sharing too much: tabu must repair it
    z = search.run(start, np.random.default_rng(seed), stop=lambda best: False)
    assert z is not None and _feasible(dense, prev, shared, z)
    assert t.objective(z) == pytest.approx(ref[3][1], rel=1e-12, abs=1e-15)


def test_never_returns_worse_than_a_feasible_start_and_honours_stop():
    from lana.search import search

    t = tiny(10, 8, seed=60, correlated=False)
    budget = Budget("gpu", "0.5x")
    res = search(t, budget, k=3, overlap=0.7)
    prev, start = res.choices()[:2], res.choices()[2]
    dense, kept, shared = _setup(t, budget, prev)
    assert _feasible(dense, prev, shared, start)
    search_ = TabuSearch(dense, prev, shared, kept)
    calls = []
    z = search_.run(start, np.random.default_rng(0),
                    stop=lambda best: calls.append(best) is None and len(calls) > 5)
    assert len(calls) == 6  # asked before every move, stopped when told to
    assert calls[0] == pytest.approx(t.objective(start))  # the start is the first best
    assert z is not None and _feasible(dense, prev, shared, z)
    assert t.objective(z) <= t.objective(start) + 1e-12

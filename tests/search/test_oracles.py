"""The solver against exact references: brute force, dynamic programming, PuLP + CBC."""

from __future__ import annotations

import numpy as np
import pytest

from lana.search import Budget, search
from lana.search.oracles import brute_force, dp_oracle, pulp_search

from .conftest import tiny


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("correlated", [True, False])
def test_matches_brute_force_sequence(seed, correlated):
    t = tiny(6, 4, seed=seed, correlated=correlated)
    budgets = [Budget("gpu", "0.55x")]
    ref = brute_force(t, budgets, k=6, overlap=0.7)
    got = search(t, budgets, k=6, overlap=0.7, gap=0.0)
    assert len(got.solutions) == len(ref)
    for sol, (choice, obj) in zip(got.solutions, ref):
        assert sol.objective == pytest.approx(obj, rel=1e-9, abs=1e-12)
        assert np.array_equal(sol.choice, choice)
        assert sol.status == "optimal" and sol.gap <= 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_with_two_tables_and_low_overlap(seed):
    t = tiny(6, 5, seed=10 + seed, tables=("gpu", "cpu"))
    budgets = [Budget("gpu", "0.6x"), Budget("cpu", "0.7x")]
    ref = brute_force(t, budgets, k=5, overlap=0.5)
    got = search(t, budgets, k=5, overlap=0.5, gap=0.0)
    assert [s.objective for s in got.solutions] == pytest.approx([o for _, o in ref], rel=1e-9)
    for s in got.solutions:
        assert s.costs["gpu"] <= got.limits["gpu"] * (1 + 1e-9)
        assert s.costs["cpu"] <= got.limits["cpu"] * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_matches_dynamic_program_on_integer_costs(seed):
    t = tiny(12, 9, seed=seed, integer=True)
    for frac in ("0.35x", "0.5x", "0.8x"):
        b = Budget("gpu", frac)
        choice, obj = dp_oracle(t, b)
        got = search(t, b, gap=0.0).solutions[0]
        assert got.objective == pytest.approx(obj, rel=1e-9, abs=1e-12)


def test_within_gap_solutions_respect_their_bound():
    t = tiny(10, 8, seed=4)
    res = search(t, Budget("gpu", "0.5x"), k=4, gap=0.05)
    for s in res.solutions:
        assert s.dual_bound <= s.objective + 1e-12
        assert s.gap <= 0.05 + 1e-9
        assert s.status in ("optimal", "within_gap")


def test_pulp_cbc_agrees():
    pytest.importorskip("pulp")
    t = tiny(8, 6, seed=7)
    budgets = [Budget("gpu", "0.5x")]
    ref = pulp_search(t, budgets, k=4)
    got = search(t, budgets, k=4, gap=0.0)
    assert [s.objective for s in got.solutions] == pytest.approx([o for _, o in ref], rel=1e-7)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gap", [0.005, 0.05])
def test_every_certificate_brackets_the_true_optimum(seed, gap):
    """For every solve, the exact optimum given the earlier solutions it found lies between the
    reported dual bound and the reported objective (LP-certified and branch-and-bound solves)."""
    import itertools

    t = tiny(7, 5, seed=30 + seed, correlated=seed % 2 == 0)
    res = search(t, Budget("gpu", "0.5x"), k=8, overlap=0.7, gap=gap)
    grid = np.array(list(itertools.product(*[range(m) for m in t.n_ops])))
    obj = sum(t.scores[i][grid[:, i]] for i in range(t.n_layers))
    cost = t.fixed["gpu"] + sum(t.costs["gpu"][i][grid[:, i]] for i in range(t.n_layers))
    ok = cost <= res.limits["gpu"] * (1 + 1e-9)
    for s in res.solutions:
        exact = obj[ok].min()
        assert s.dual_bound <= exact + 1e-12 <= s.objective + 2e-12
        assert s.objective - s.dual_bound <= gap * abs(s.objective) + 1e-12
        ok &= (grid == s.choice).sum(axis=1) <= res.max_shared

"""Solver behaviour: constraints held, certificates, infeasible budgets, fewer than K, warm starts,
single-shot, dominance pruning."""

from __future__ import annotations


import numpy as np
import pytest

from lana.search import Budget, InfeasibleBudgetError, SearchError, SearchWarning, search
from lana.search.dense import Dense, Dominance
from lana.search.oracles import brute_force
from lana.search.solver import max_shared_layers

from .conftest import plain, tiny


def test_k_solutions_hold_budget_and_overlap(table46):
    res = search(table46, Budget("gpu", "0.5x"), k=12, overlap=0.7)
    assert len(res.solutions) == 12
    assert res.max_shared == 32  # floor(0.7 * 46)
    choices = res.choices()
    shared = (choices[:, None, :] == choices[None, :, :]).sum(axis=2)
    np.fill_diagonal(shared, 0)
    assert shared.max() <= 32
    for s in res.solutions:
        assert s.costs["gpu"] <= res.limits["gpu"] * (1 + 1e-9)
        assert s.dual_bound <= s.objective
        assert s.gap <= 0.005 + 1e-9 and s.status in ("optimal", "within_gap")
        assert s.time_s > 0 and s.bound_source in ("lp", "mip")
        assert list(s.keys) == table46.keys(s.choice)
    objs = [s.objective for s in res.solutions]
    # each solve is near-optimal for a shrinking feasible set: bounds never decrease
    bounds = [s.dual_bound for s in res.solutions]
    assert all(b2 >= b1 - 1e-9 * abs(b1) for b1, b2 in zip(bounds, bounds[1:]))
    assert min(objs) == pytest.approx(res.best.objective)
    assert set(res.timings) >= {"lp", "mip", "heuristic", "prune"}


def test_overlap_one_still_gives_distinct_architectures():
    t = tiny(5, 4, seed=3)
    res = search(t, Budget("gpu", "0.6x"), k=5, overlap=1.0, gap=0.0)
    assert res.max_shared == 4
    assert len({s.choice.tobytes() for s in res.solutions}) == len(res.solutions)


def test_infeasible_budget_reports_the_minimum():
    t = plain([[0.0, 1.0], [0.0, 2.0]], [[3.0, 1.0], [4.0, 2.0]], fixed=1.0)
    with pytest.raises(InfeasibleBudgetError) as err:
        search(t, Budget("ms", 3.5))
    assert err.value.minimum == {"ms": 4.0}
    assert "4" in str(err.value) and "raise the budget" in str(err.value)
    assert "0.500x the teacher" in str(err.value)  # 4 of the teacher's 8
    assert search(t, Budget("ms", 4.0)).best.objective == pytest.approx(3.0)


def test_budgets_jointly_infeasible_fail_with_both_minima():
    # op 1 is cheap on ms, op 2 cheap on cpu: each budget alone is reachable, both together not
    t = plain([[0.0, 0.1, 0.1]], [[2.0, 1.0, 2.0]]).with_costs("cpu", [[2.0, 2.0, 1.0]])
    assert search(t, Budget("ms", 1.0)).best.choice[0] == 1
    with pytest.raises(InfeasibleBudgetError, match="together"):
        search(t, [Budget("ms", 1.0), Budget("cpu", 1.0)])


def test_fewer_than_k_warns_and_returns_what_exists():
    t = tiny(4, 2, seed=5)  # 16 architectures in all
    with pytest.warns(SearchWarning, match="found"):
        res = search(t, Budget("gpu", "1.0x"), k=40, overlap=0.5, gap=0.0)
    ref = brute_force(t, [Budget("gpu", "1.0x")], k=40, overlap=0.5)
    assert 1 <= len(res.solutions) == len(ref) < 40
    assert res.warnings and "found" in res.warnings[0]
    assert "larger overlap" in res.warnings[0]  # fewer shared layers would find fewer still


def test_warm_start_gives_the_same_optima():
    t = tiny(9, 6, seed=8)
    cold = search(t, Budget("gpu", "0.5x"), k=5, gap=0.0)
    other = search(t, Budget("gpu", "0.7x"), k=5, gap=0.0)
    warm = search(t, Budget("gpu", "0.5x"), k=5, gap=0.0, warm=list(other.choices()))
    assert [s.objective for s in warm.solutions] == pytest.approx(
        [s.objective for s in cold.solutions], rel=1e-9)
    assert np.array_equal(warm.choices(), cold.choices())


def test_single_shot_picks_only_teacher_or_identity():
    t = tiny(10, 12, seed=9)
    res = search(t, Budget("gpu", "0.7x"), k=3, single_shot=True, gap=0.0)
    for s in res.solutions:
        fams = {k.split(":")[0] for k in s.keys}
        assert fams <= {"teacher", "identity"}
    ref = brute_force(t.single_shot(), [Budget("gpu", "0.7x")], k=3)
    assert [s.objective for s in res.solutions] == pytest.approx([o for _, o in ref])


def test_multi_table_budgets_all_hold(table46):
    from lana.search.synthetic import synthetic_table

    t = synthetic_table(30, 20, seed=11, tables=("gpu", "cpu"))
    res = search(t, [Budget("gpu", "0.55x"), Budget("cpu", "0.5x")], k=4)
    gpu_only = search(t, Budget("gpu", "0.55x"), k=1)
    for s in res.solutions:
        assert s.costs["gpu"] <= res.limits["gpu"] * (1 + 1e-9)
        assert s.costs["cpu"] <= res.limits["cpu"] * (1 + 1e-9)
    assert res.best.objective >= gpu_only.best.dual_bound - 1e-12


def test_dominance_keeps_an_optimum_and_releases_used_ops():
    t = plain([[0.0, 0.5, 0.6, 0.2]], [[4.0, 1.0, 1.5, 2.0]])  # op 2 is dominated by op 1
    d = Dense.build(t, {"ms": 10.0})
    dom = Dominance(d, t.dominance(d.tables))
    assert list(dom.kept[0]) == [True, True, False, True]
    new = dom.protect(np.array([1]))  # op 1 used by an earlier solution: op 2 may be needed now
    assert list(new[0]) == [False, False, True, False]


def test_max_shared_layers():
    assert max_shared_layers(46, 0.7) == 32
    assert max_shared_layers(10, 1.0) == 9
    assert max_shared_layers(3, 0.1) == 0


def test_time_limited_solves_report_their_gap():
    from lana.search.synthetic import synthetic_table

    t = synthetic_table(30, 40, seed=12, correlated=False)
    res = search(t, Budget("gpu", "0.5x"), k=4, gap=0.0, time_limit=0.02)
    assert len(res.solutions) == 4
    for r, s in enumerate(res.solutions):
        assert s.status in ("optimal", "within_gap", "time_limit")
        assert s.dual_bound <= s.objective
        if s.status == "time_limit":
            assert s.gap > 0 and any(f"solve {r} stopped" in w for w in res.warnings)
    with pytest.raises(SearchError, match="time_budget"):
        search(t, Budget("gpu", "0.5x"), time_budget=0.0)


def test_time_budget_shares_time_across_solves():
    t = tiny(12, 8, seed=13)
    res = search(t, Budget("gpu", "0.5x"), k=6, time_budget=5.0)
    assert len(res.solutions) == 6 and res.max_gap <= 0.005 + 1e-9


def test_unaffordable_ops_are_dropped_before_solving():
    # op 1 of layer 0 costs 5 alone; with the cheapest op of layer 1 (1) it exceeds a budget of 5.5
    t = plain([[0.0, 0.0, 0.3], [0.0, 0.2]], [[3.0, 5.0, 1.0], [2.0, 1.0]])
    d = Dense.build(t, {"ms": 5.5})
    assert list(d.valid[0][:3]) == [True, False, True]


def test_verify_rejects_a_misreported_solution():
    from dataclasses import replace

    from lana.search.check import verify

    t = tiny(5, 4, seed=14)
    res = search(t, Budget("gpu", "0.6x"), k=2, gap=0.0)
    good = res.solutions
    verify(t, good, res.limits, res.max_shared)
    with pytest.raises(SearchError, match="internal check failed"):
        verify(t, [replace(good[0], objective=good[0].objective + 1.0)], res.limits, res.max_shared)
    with pytest.raises(SearchError, match="share"):
        verify(t, [good[0], good[0]], res.limits, res.max_shared)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_carry_forward_and_stay_below_the_true_optimum(seed):
    """Each solve's bound is at least every earlier one's (later feasible sets are subsets), and
    still no more than the exact optimum of its own problem."""
    import itertools

    t = tiny(7, 5, seed=40 + seed, correlated=False)
    res = search(t, Budget("gpu", "0.5x"), k=10, overlap=0.6, gap=0.05)
    bounds = [s.dual_bound for s in res.solutions]
    assert all(b2 >= b1 for b1, b2 in zip(bounds, bounds[1:]))
    grid = np.array(list(itertools.product(*[range(m) for m in t.n_ops])))
    obj = sum(t.scores[i][grid[:, i]] for i in range(t.n_layers))
    cost = t.fixed["gpu"] + sum(t.costs["gpu"][i][grid[:, i]] for i in range(t.n_layers))
    ok = cost <= res.limits["gpu"] * (1 + 1e-9)
    for s in res.solutions:
        assert s.dual_bound <= obj[ok].min() + 1e-12
        ok &= (grid == s.choice).sum(axis=1) <= res.max_shared


def test_dominance_relation_is_cached_and_keeps_exactly_the_undominated_ops():
    t = tiny(8, 12, seed=15, tables=("gpu", "cpu"))
    rel = t.dominance(("gpu", "cpu"))
    assert t.dominance(("gpu", "cpu")) is rel and t.dominance(("gpu",)) is not rel
    limits = {"gpu": 1.3 * t.minimum("gpu"), "cpu": 2.0 * t.minimum("cpu")}
    d = Dense.build(t, limits)
    assert not d.valid[:, :12].all()  # the budgets drop some ops: the relation must not care
    used = np.zeros(d.valid.shape, dtype=bool)
    used[np.arange(8), np.argmin(np.where(d.valid, d.score, np.inf), axis=1)] = True
    dom = Dominance(d, rel)
    dom.protect(used.argmax(axis=1))
    for i in range(8):
        for b in np.flatnonzero(d.valid[i]):
            beaten = False
            for a in np.flatnonzero(d.valid[i] & ~used[i]):
                s_a, s_b = t.scores[i][a], t.scores[i][b]
                c_a = [t.costs[n][i][a] for n in ("gpu", "cpu")]
                c_b = [t.costs[n][i][b] for n in ("gpu", "cpu")]
                no_worse = s_a <= s_b and all(x <= y for x, y in zip(c_a, c_b))
                tie = s_a == s_b and c_a == c_b
                beaten |= a != b and no_worse and (not tie or a < b)
            assert dom.kept[i, b] == (not beaten)


def test_time_is_measured_on_the_given_clock():
    ticks = iter(np.arange(0.0, 1e6, 0.25))
    t = tiny(6, 4, seed=16)
    res = search(t, Budget("gpu", "0.6x"), k=3, gap=0.0, clock=lambda: float(next(ticks)))
    assert len(res.solutions) == 3
    for s in res.solutions:
        assert s.time_s > 0 and (s.time_s / 0.25) == pytest.approx(round(s.time_s / 0.25))

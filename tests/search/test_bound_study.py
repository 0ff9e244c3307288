"""The bound study behind ``benchmarks/solver.py --prove``: keeping overlap rows exact gives a valid
bound, between the LP bound and the optimum."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lana.search import Budget
from lana.search.engine import Engine
from lana.search.oracles import brute_force
from lana.search.solver import max_shared_layers, resolve_limits

from .conftest import tiny


def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "solver.py"
    spec = importlib.util.spec_from_file_location("solver_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(4))
def test_kept_rows_bound_lies_between_lp_and_optimum(seed):
    table = tiny(6, 5, seed=20 + seed, correlated=False)
    budgets = [Budget("gpu", "0.6x")]
    ref = brute_force(table, budgets, k=6, overlap=0.5)
    assert len(ref) == 6
    engine = Engine(table, resolve_limits(table, budgets), max_shared_layers(6, 0.5), gap=0.0,
                    time_limit=10.0, threads=1, seed=0)
    for choice, _ in ref[:5]:
        engine.chosen.append(np.asarray(choice))
        engine._extend()
    lp = engine.lp.solve()
    choice, optimum = ref[5]
    kept_rows_bound = _benchmark()._kept_rows_bound
    bounds = [kept_rows_bound(engine, keep, choice) for keep in (1, 2, 5)]
    for b in bounds:
        assert lp.bound - 1e-9 <= b <= optimum + 1e-9
    assert bounds[2] >= bounds[0] - 1e-9  # every row kept: at least as tight as one


def test_prove_reports_a_certified_gap_and_the_optimum(capsys):
    """--prove solves the uncorrelated case's solve N with HiGHS: to optimality by default (the
    LP's distance from the optimum is then known), or only to --prove-gap."""
    import json

    def run(*extra):
        argv = ["--cases", "", "--layers", "10", "--ops", "12", "--prove", "4", "--json", *extra]
        assert _benchmark().main(argv) == 0
        return json.loads(capsys.readouterr().out)["prove"]

    exact = run()
    assert exact["highs_status"] == "optimal" and exact["highs_gap"] <= 1e-9
    assert 0.0 <= exact["optimum_lp_gap"] < 1.0
    assert exact["search_excess"] >= -1e-9  # nothing beats the proven optimum
    loose = run("--prove-gap", "0.05")
    assert loose["prove_gap"] == 0.05 and loose["optimum_lp_gap"] is None
    assert loose["highs_gap"] <= 0.05 + 1e-9
    assert loose["highs_bound"] <= exact["highs_objective"] + 1e-9

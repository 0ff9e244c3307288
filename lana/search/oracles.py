"""Reference solvers for tests and cross-checks: exhaustive enumeration (tiny tables), dynamic
programming over integer costs (one budget), and PuLP + CBC (when PuLP is installed).  Each
solves the same sequential problem as :func:`lana.search.search`: the k-th architecture is the best
one sharing at most ``max_shared`` layers with every earlier one."""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from lana.search.budget import Budget
from lana.search.errors import SearchError
from lana.search.solver import max_shared_layers, resolve_limits
from lana.search.table import SearchTable


def brute_force(table: SearchTable, budgets: Sequence[Budget], k: int = 1, overlap: float = 0.7,
                *, limit: int = 2_000_000) -> list[tuple[np.ndarray, float]]:
    """Exact K architectures by enumerating every combination (at most ``limit`` of them)."""
    total = math.prod(table.n_ops)
    if total > limit:
        raise SearchError(f"brute force would enumerate {total} architectures (limit {limit})")
    limits = resolve_limits(table, budgets)
    grids = np.array(list(itertools.product(*[range(m) for m in table.n_ops])), dtype=np.int64)
    n = table.n_layers
    obj = sum(table.scores[i][grids[:, i]] for i in range(n))
    ok = np.ones(len(grids), dtype=bool)
    for name, lim in limits.items():
        cost = table.fixed[name] + sum(table.costs[name][i][grids[:, i]] for i in range(n))
        ok &= cost <= lim + 1e-9 * max(1.0, abs(lim))
    max_shared = max_shared_layers(n, overlap)
    out: list[tuple[np.ndarray, float]] = []
    for _ in range(k):
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            break
        best = cand[np.argmin(obj[cand])]
        out.append((grids[best].copy(), float(obj[best])))
        ok &= (grids == grids[best]).sum(axis=1) <= max_shared
    return out


def dp_oracle(table: SearchTable, budget: Budget) -> tuple[np.ndarray, float] | None:
    """The single best architecture under one budget whose costs are whole numbers (exact DP)."""
    name = budget.table
    limit = budget.resolve(table) - table.fixed[name]
    costs = [np.asarray(c) for c in table.costs[name]]
    if any(np.any(c != np.round(c)) or np.any(c < 0) for c in costs):
        raise SearchError("the DP oracle needs non-negative whole-number costs")
    cap = int(math.floor(limit + 1e-9))
    if cap < 0:
        return None
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    picks = []
    for i, c in enumerate(costs):
        c = c.astype(np.int64)
        new = np.full(cap + 1, np.inf)
        arg = np.full(cap + 1, -1, dtype=np.int64)
        for j, cj in enumerate(c):
            if cj > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[cj:] = best[:cap + 1 - cj] + table.scores[i][j]
            better = cand < new
            new[better], arg[better] = cand[better], j
        best = new
        picks.append(arg)
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        return None
    choice = np.empty(len(costs), dtype=np.int64)
    for i in range(len(costs) - 1, -1, -1):
        choice[i] = picks[i][end]
        end -= int(costs[i][choice[i]])
    return choice, float(best.min())


def pulp_search(table: SearchTable, budgets: Sequence[Budget], k: int = 1, overlap: float = 0.7,
                *, time_limit: float = 60.0) -> list[tuple[np.ndarray, float]]:
    """The same sequential integer programs solved with PuLP's CBC (the paper's tool)."""
    try:
        import pulp
    except ImportError as exc:
        raise SearchError("PuLP is not installed; pip install pulp to cross-check with CBC") from exc
    limits = resolve_limits(table, budgets)
    n = table.n_layers
    prob = pulp.LpProblem("lana", pulp.LpMinimize)
    z = [[pulp.LpVariable(f"z_{i}_{j}", cat="Binary") for j in range(m)]
         for i, m in enumerate(table.n_ops)]
    prob += pulp.lpSum(float(table.scores[i][j]) * z[i][j] for i in range(n)
                       for j in range(table.n_ops[i]))
    for i in range(n):
        prob += pulp.lpSum(z[i]) == 1
    for name, lim in limits.items():
        prob += pulp.lpSum(float(table.costs[name][i][j]) * z[i][j] for i in range(n)
                           for j in range(table.n_ops[i])) <= lim - table.fixed[name]
    max_shared = max_shared_layers(n, overlap)
    out: list[tuple[np.ndarray, float]] = []
    for _ in range(k):
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=0))
        if pulp.LpStatus[prob.status] != "Optimal":
            break
        choice = np.array([max(range(len(row)), key=lambda j: row[j].value() or 0) for row in z])
        out.append((choice, table.objective(choice)))
        prob += pulp.lpSum(z[i][choice[i]] for i in range(n)) <= max_shared
    return out

"""The search itself (paper Eq. 4): K times, the architecture of least predicted loss change that
meets every budget and shares at most ``max_shared`` layers with each earlier one.

This module checks the input, resolves budgets, fails early on unreachable budgets, runs the K
solves (:mod:`lana.search.engine`) and re-checks every answer with NumPy (:mod:`lana.search.check`).
The bound reported with every solution is certified by HiGHS: the LP relaxation's optimum, the
dual bound of branch and bound on a model that provably contains every better architecture, or such
a bound from an earlier solve of the same search (whose feasible set contains this one's).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Callable, Sequence

import numpy as np

from lana.search.budget import Budget
from lana.search.check import verify
from lana.search.engine import Engine
from lana.search.errors import InfeasibleBudgetError, SearchError, SearchWarning
from lana.search.result import SearchResult
from lana.search.table import SearchTable


def max_shared_layers(n_layers: int, overlap: float) -> int:
    """floor(O * N), capped at N - 1 so that every solution is a new architecture."""
    return max(0, min(int(math.floor(overlap * n_layers + 1e-9)), n_layers - 1))


def resolve_limits(table: SearchTable, budgets: Sequence[Budget]) -> dict[str, float]:
    """Absolute limit per constrained table (the tightest when a table has several budgets)."""
    limits: dict[str, float] = {}
    for b in budgets:
        value = b.resolve(table)
        limits[b.table] = min(value, limits.get(b.table, math.inf))
    return limits


def check_reachable(table: SearchTable, budgets: Sequence[Budget], limits: dict[str, float]) -> None:
    """Raise :class:`InfeasibleBudgetError` when a budget is below every architecture's cost."""
    minimum = {name: table.minimum(name) for name in limits}
    for b in budgets:
        limit, low = limits[b.table], minimum[b.table]
        if low > limit + 1e-9 * max(1.0, abs(limit)):
            unit = table.units.get(b.table) or ""
            rel = ""
            try:
                teacher = table.total(b.table, table.teacher_choice())
                rel = f" = {low / teacher:.3f}x the teacher"
            except SearchError:
                pass
            raise InfeasibleBudgetError(
                f"budget {b.label()} on {b.table!r} ({limit:.4g}{unit}) is below the smallest "
                f"total any architecture reaches, {low:.4g}{unit}{rel} (the cheapest op at every "
                f"layer, {_fixed_text(table.fixed[b.table], unit)}); raise the budget to at least "
                f"that", minimum)


def _fixed_text(fixed: float, unit: str) -> str:
    """How the fixed part enters a total (negative when a LUT's calibration offset is folded in)."""
    if fixed >= 0:
        return f"plus the fixed {fixed:.4g}{unit}"
    return f"with the LUT's calibration applied (fixed part and offset {fixed:.4g}{unit})"


def _validate_options(k: int, overlap: float, gap: float, time_limit: float,
                      time_budget: float | None, threads: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise SearchError(f"k must be a whole number >= 1 (got {k!r}); ask for at least one "
                          f"architecture")
    if not (isinstance(overlap, (int, float)) and 0 < overlap <= 1):
        raise SearchError(f"overlap must be in (0, 1] (got {overlap!r}); 0.7 lets a new "
                          f"architecture share at most 70% of its layers with each earlier one")
    if not (isinstance(gap, (int, float)) and 0 <= gap < 1):
        raise SearchError(f"gap must be in [0, 1) (got {gap!r}); 0.005 accepts solutions proved "
                          f"within 0.5% of optimal")
    if not (time_limit > 0):
        raise SearchError(f"time_limit must be positive seconds (got {time_limit!r})")
    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise SearchError(f"threads must be a whole number >= 1 (got {threads!r}); 1 runs HiGHS "
                          f"on one core")
    if threads > (cpus := os.cpu_count() or 1):
        raise SearchError(f"threads {threads} is more than this machine's {cpus} CPUs; pass at "
                          f"most {cpus} (more threads only contend for the same cores)")
    if time_budget is not None and not (time_budget > 0):
        raise SearchError(f"time_budget must be positive seconds (got {time_budget!r})")


def search(table: SearchTable, budgets: Sequence[Budget] | Budget, k: int = 1,
           overlap: float = 0.7, *, single_shot: bool = False, gap: float = 0.005,
           time_limit: float = 2.0, time_budget: float | None = None, threads: int = 1,
           warm: Sequence[Sequence[int]] = (), seed: int = 0,
           clock: Callable[[], float] = time.perf_counter) -> SearchResult:
    """Find ``k`` diverse architectures under ``budgets`` (paper Eq. 4), each certified by HiGHS.

    ``overlap`` is O of the paper: a new architecture shares at most floor(O * N) layers with each
    earlier one.  ``gap`` is the relative optimality gap each solve must be proved within;
    ``time_limit`` caps each solve (a solve stopped by it returns status "time_limit" with its gap);
    ``time_budget`` additionally caps all K solves together, sharing what is left evenly among the
    solves still to come (easy solves finish early and leave their time to later ones).
    ``warm`` are architectures (op indices of ``table``) to start the incumbents from, e.g. the
    solutions of a neighbouring budget.  ``single_shot`` restricts every layer to its teacher op
    and identity (paper Table 7); solutions then index the restricted table, whose keys they carry.
    ``clock`` is what the time limits count: wall time by default; ``time.process_time`` makes them
    CPU seconds of this process, for comparable figures on a machine shared with other work
    (HiGHS still stops its own runs on wall time, which only shortens them there).
    """
    budgets = [budgets] if isinstance(budgets, Budget) else list(budgets)
    if not budgets:
        raise SearchError("give at least one budget, e.g. Budget('cpu-ort', '0.5x')")
    _validate_options(k, overlap, gap, time_limit, time_budget, threads)
    if single_shot:
        table = table.single_shot()
    limits = resolve_limits(table, budgets)
    check_reachable(table, budgets, limits)
    max_shared = max_shared_layers(table.n_layers, overlap)
    engine = Engine(table, limits, max_shared, gap=gap, time_limit=time_limit, threads=threads,
                    seed=seed, clock=clock)
    engine.add_candidates(warm)
    result = SearchResult([], limits, budgets, max_shared, int(k))
    start = clock()
    for r in range(int(k)):
        if time_budget is not None:
            left = time_budget - (clock() - start)
            engine.time_limit = max(1e-2, min(time_limit, left / (int(k) - r)))
        sol = engine.next()
        if sol is None:
            if r == 0 and engine.infeasible:
                minimum = {name: table.minimum(name) for name in limits}
                raise InfeasibleBudgetError(
                    "no architecture meets all budgets together (" + ", ".join(
                        f"{n} <= {v:.4g}, cheapest alone {minimum[n]:.4g}" for n, v in limits.items())
                    + "); loosen one of them", minimum)
            if r == 0:
                raise SearchError(f"{engine.stop_reason}; raise the time limit")
            msg = (f"found {r} of {k} architectures: {engine.stop_reason}; allow more shared "
                   f"layers (a larger overlap), loosen the budget or ask for fewer")
            warnings.warn(msg, SearchWarning, stacklevel=2)
            result.warnings.append(msg)
            break
        result.solutions.append(sol)
        if sol.status == "time_limit":
            result.warnings.append(
                f"solve {r} stopped at its {engine.time_limit:.3g} s time limit with gap "
                f"{sol.gap:.2%} (asked {gap:.2%}); allow more time for a tighter certificate")
    t0 = clock()
    verify(table, result.solutions, limits, max_shared)
    engine.timings["check"] += clock() - t0
    result.timings = dict(engine.timings)
    result.stats = engine.stats()
    return result

"""Many budgets in one call: a Pareto front of latency against predicted loss change.

Targets are solved in order of their first budget's limit, each warm-started from its neighbour's
architectures (the top-down and bottom-up strategies of "Efficient incorporation of multiple
latency targets in the once-for-all network"): top-down goes from the loosest budget to the
tightest, so the neighbour's architectures are repaired down into the new budget; bottom-up goes
the other way, so they are feasible from the start and only improved.  "cold" solves every target
from scratch.  Whatever the strategy, the targets share the table's dominance relation
(:meth:`SearchTable.dominance`, independent of the budgets), computed once.

Warm starting only helps where the incumbent is what a solve waits for.  On tables shaped like the
paper's, every solve is certified by its own LP solution rounded, so the neighbour's architectures
are never needed; on tables with scores independent of latency, solves wait on the bound (the LP
relaxation is weak under many overlap rows), which the neighbour's architectures do not raise.
``benchmarks/solver.py --sweep`` measures all three strategies in one run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from lana.search.budget import Budget
from lana.search.errors import SearchError
from lana.search.result import SearchResult
from lana.search.solver import check_reachable, resolve_limits, search
from lana.search.table import SearchTable

STRATEGIES = ("top-down", "bottom-up", "cold")


@dataclass(eq=False)
class SweepResult:
    """One :class:`SearchResult` per target, in the order the targets were given."""

    table: SearchTable  # the table the choices index (restricted in single-shot mode)
    targets: list[list[Budget]]
    results: list[SearchResult]
    strategy: str
    order: list[int]  # the order the targets were solved in
    time_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def front(self, table: str | None = None) -> list[tuple[float, float]]:
        """(cost on ``table``, objective) of every target's best architecture, by cost."""
        name = table or self.targets[0][0].table
        points = [(r.best.costs[name], r.best.objective) for r in self.results if r.solutions]
        return sorted(points)


def search_many(table: SearchTable, targets: Sequence[Sequence[Budget]], k: int = 1,
                overlap: float = 0.7, *, strategy: str = "top-down", single_shot: bool = False,
                **options) -> SweepResult:
    """Solve :func:`~lana.search.solver.search` for every target (a list of budgets each)."""
    if strategy not in STRATEGIES:
        raise SearchError(f"unknown sweep strategy {strategy!r}; use one of {list(STRATEGIES)}")
    targets = [list(t) for t in targets]
    if not targets or not all(targets):
        raise SearchError("give at least one budget per target")
    if single_shot:
        table = table.single_shot()
    primary = []
    for t in targets:  # fail before solving anything when some target is out of reach
        limits = resolve_limits(table, t)
        check_reachable(table, t, limits)
        primary.append(limits[t[0].table])
    order = sorted(range(len(targets)), key=lambda i: primary[i],
                   reverse=strategy == "top-down")
    if strategy == "cold":
        order = list(range(len(targets)))
    results: list[SearchResult | None] = [None] * len(targets)
    clock = options.get("clock", time.perf_counter)
    start = clock()
    warm: list = []
    for i in order:
        res = search(table, targets[i], k, overlap, warm=warm, **options)
        results[i] = res
        if strategy != "cold":
            warm = list(res.choices())
    sweep = SweepResult(table, targets, results, strategy, order,  # type: ignore[arg-type]
                        clock() - start)
    for i, r in enumerate(sweep.results):
        sweep.warnings += [f"{targets[i][0].label()}: {w}" for w in r.warnings]
    return sweep

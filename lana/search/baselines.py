"""Baselines the integer program is compared with (paper Table 5): random architectures sampled
within the budget, and regularised evolution (aging evolution) on the same objective for the same
time.  Both return feasible architectures only."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lana.search.budget import Budget
from lana.search.dense import Dense, _tol
from lana.search.solver import check_reachable, resolve_limits
from lana.search.table import SearchTable


@dataclass(frozen=True, eq=False)
class BaselineResult:
    """Feasible architectures a baseline found, best first."""

    choices: np.ndarray  # (M, N) op indices
    objectives: np.ndarray  # (M,)
    evaluated: int  # architectures looked at
    time_s: float

    @property
    def best(self) -> float:
        return float(self.objectives[0]) if self.objectives.size else float("inf")


def _dense(table: SearchTable, budgets: Sequence[Budget]) -> Dense:
    limits = resolve_limits(table, budgets)
    check_reachable(table, budgets, limits)
    return Dense.build(table, limits)


def _sample(d: Dense, rng: np.random.Generator, cheapest: np.ndarray) -> np.ndarray | None:
    """One random architecture within the budget: layers in random order, each op drawn uniformly
    among those that still leave room for the cheapest ops of the layers not drawn yet."""
    n = d.n
    choice = np.full(n, -1, dtype=np.int64)
    left = d.limit + _tol(d.limit) - cheapest.sum(axis=1)  # (T,) room beyond the cheapest picks
    for i in rng.permutation(n):
        extra = d.cost[:, i, :] - cheapest[:, i][:, None]  # (T, W)
        ok = d.valid[i] & (extra <= left[:, None]).all(axis=0)
        options = np.flatnonzero(ok)
        if options.size == 0:
            return None
        j = int(rng.choice(options))
        choice[i] = j
        left -= extra[:, j]
    return choice


def _cheapest(d: Dense) -> np.ndarray:
    """(T, N) cheapest op cost per layer and table."""
    return np.where(d.valid[None], d.cost, np.inf).min(axis=2)


def random_search(table: SearchTable, budgets: Sequence[Budget], *, samples: int = 1000,
                  time_s: float | None = None, seed: int = 0) -> BaselineResult:
    """``samples`` random architectures within the budget (or as many as fit in ``time_s``)."""
    d = _dense(table, budgets)
    rng = np.random.default_rng(seed)
    cheapest = _cheapest(d)
    start = time.perf_counter()
    found = []
    count = 0
    while count < samples if time_s is None else time.perf_counter() - start < time_s:
        count += 1
        c = _sample(d, rng, cheapest)
        if c is not None and d.feasible(c):
            found.append(c)
    return _result(d, found, count, time.perf_counter() - start)


def evolutionary_search(table: SearchTable, budgets: Sequence[Budget], *, time_s: float,
                        population: int = 64, tournament: int = 16, mutations: int = 2,
                        seed: int = 0, top: int = 100) -> BaselineResult:
    """Aging evolution (Real et al. 2019) minimising the summed score within the budget.

    A child copies the best of ``tournament`` random members and redraws ``mutations`` layers
    among the ops that keep it within the budget; the oldest member dies.  Runs for ``time_s``.
    """
    d = _dense(table, budgets)
    rng = np.random.default_rng(seed)
    cheapest = _cheapest(d)
    rows = np.arange(d.n)
    start = time.perf_counter()
    pop = [c for c in (_sample(d, rng, cheapest) for _ in range(population)) if c is not None]
    fitness = [d.score_of(c) for c in pop]
    seen = {c.tobytes(): f for c, f in zip(pop, fitness)}
    count = len(pop)
    while pop and time.perf_counter() - start < time_s:
        picks = rng.choice(len(pop), size=min(tournament, len(pop)), replace=False)
        parent = pop[min(picks, key=lambda p: fitness[p])]
        child = parent.copy()
        used = d.cost[:, rows, child].sum(axis=1)
        for i in rng.choice(d.n, size=min(mutations, d.n), replace=False):
            room = d.limit + _tol(d.limit) - (used - d.cost[:, i, child[i]])
            options = np.flatnonzero(d.valid[i] & (d.cost[:, i, :] <= room[:, None]).all(axis=0))
            if options.size:
                j = int(rng.choice(options))
                used += d.cost[:, i, j] - d.cost[:, i, child[i]]
                child[i] = j
        count += 1
        f = d.score_of(child)
        seen.setdefault(child.tobytes(), f)
        pop.append(child)
        fitness.append(f)
        pop.pop(0)
        fitness.pop(0)
    found = sorted(seen.items(), key=lambda kv: kv[1])[:top]
    choices = [np.frombuffer(k, dtype=np.int64).copy() for k, _ in found]
    return _result(d, choices, count, time.perf_counter() - start)


def _result(d: Dense, choices: list, count: int, elapsed: float) -> BaselineResult:
    if not choices:
        return BaselineResult(np.zeros((0, d.n), dtype=np.int64), np.zeros(0), count, elapsed)
    arr = np.array(choices, dtype=np.int64)
    obj = d.score[np.arange(d.n)[None, :], arr].sum(axis=1)
    order = np.argsort(obj, kind="stable")
    return BaselineResult(arr[order], obj[order], count, elapsed)

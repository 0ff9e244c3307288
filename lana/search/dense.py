"""A search table as padded arrays for one set of budgets, and the exact reductions done on it.

Layers are rows, candidate ops columns (padded to the widest layer).  Two reductions keep the integer
program small without changing its optimum:

* an op that cannot be in any architecture meeting a budget (its cost plus the cheapest ops
  everywhere else already exceeds it) is dropped;
* dominance: an op is dropped when another op of the same layer is no worse in score and in every
  constrained cost (strictly better somewhere, ties broken by index) *and is not used by any earlier
  solution*.  Swapping a dropped op for such a dominator keeps every budget, does not raise the
  objective, and cannot raise the overlap with any earlier solution, so some optimum survives.  As
  solutions accumulate, ops they use stop counting as dominators, and the kept set only grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lana.search.table import SearchTable


@dataclass
class Dense:
    """Padded arrays of one search (scores, constrained costs, limits net of the fixed part)."""

    score: np.ndarray  # (N, W) score, +inf where a layer has fewer ops
    cost: np.ndarray  # (T, N, W) constrained costs, 0 where a layer has fewer ops
    limit: np.ndarray  # (T,) budget minus the fixed part of each constrained table
    valid: np.ndarray  # (N, W) an op exists (and can meet every budget)
    tables: tuple[str, ...]  # constrained table names, in the order of ``cost``

    @property
    def n(self) -> int:
        return self.score.shape[0]

    @property
    def width(self) -> int:
        return self.score.shape[1]

    @classmethod
    def build(cls, table: SearchTable, limits: dict[str, float]) -> "Dense":
        n, width = table.n_layers, max(table.n_ops)
        valid = np.zeros((n, width), dtype=bool)
        score = np.full((n, width), np.inf)
        names = tuple(limits)
        cost = np.zeros((len(names), n, width))
        for i, s in enumerate(table.scores):
            valid[i, :s.size] = True
            score[i, :s.size] = s
            for t, name in enumerate(names):
                cost[t, i, :s.size] = table.costs[name][i]
        limit = np.array([limits[name] - table.fixed[name] for name in names], dtype=np.float64)
        dense = cls(score, cost, limit, valid, names)
        dense._drop_unaffordable()
        return dense

    def _drop_unaffordable(self) -> None:
        if not self.tables:
            return
        big = np.where(self.valid[None], self.cost, np.inf)
        cheapest = big.min(axis=2)  # (T, N)
        rest = cheapest.sum(axis=1, keepdims=True) - cheapest  # cheapest total of the other layers
        ok = (self.cost + rest[:, :, None] <= self.limit[:, None, None] + _tol(self.limit)[:, None, None])
        keep = self.valid & ok.all(axis=0)
        # Never empty a layer here: an infeasible budget is reported by the caller with numbers.
        empty = ~keep.any(axis=1)
        keep[empty] = self.valid[empty]
        self.valid = keep
        self.score = np.where(keep, self.score, np.inf)

    def cheapest_totals(self) -> np.ndarray:
        """(T,) smallest reachable sum of op costs per constrained table (fixed part excluded)."""
        return np.where(self.valid[None], self.cost, np.inf).min(axis=2).sum(axis=1)

    def costs_of(self, choice: np.ndarray) -> np.ndarray:
        """(T,) summed op costs of an architecture."""
        return self.cost[:, np.arange(self.n), choice].sum(axis=1)

    def score_of(self, choice: np.ndarray) -> float:
        return float(self.score[np.arange(self.n), choice].sum())

    def feasible(self, choice: np.ndarray) -> bool:
        return bool(np.all(self.costs_of(choice) <= self.limit + _tol(self.limit)))


def _tol(limit: np.ndarray) -> np.ndarray:
    """Slack allowed on a budget for floating-point sums (relative 1e-9)."""
    return 1e-9 * np.maximum(1.0, np.abs(limit))


class Dominance:
    """Which ops to keep, given which ops earlier solutions used (see the module docstring)."""

    def __init__(self, dense: Dense, relation: np.ndarray) -> None:
        """``relation`` is :meth:`SearchTable.dominance` for the constrained tables of ``dense``."""
        self.dom = relation  # dom[i, a, b]: a dominates b
        self.valid = dense.valid
        self.used = np.zeros(dense.valid.shape, dtype=bool)
        self.kept = self._compute(np.arange(dense.n))

    def _compute(self, layers: np.ndarray) -> np.ndarray:
        kept = getattr(self, "kept", np.zeros_like(self.valid)).copy()
        for i in layers:
            free = self.valid[i] & ~self.used[i]
            kept[i] = self.valid[i] & ~self.dom[i][free].any(axis=0)
        return kept

    def protect(self, choice: np.ndarray) -> np.ndarray:
        """Mark an architecture's ops as used; return the (N, W) mask of ops newly kept."""
        rows = np.arange(choice.size)
        changed = np.flatnonzero(~self.used[rows, choice])
        self.used[rows, choice] = True
        before = self.kept
        self.kept = self._compute(changed)
        return self.kept & ~before

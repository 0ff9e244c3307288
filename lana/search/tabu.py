"""Tabu search with adaptive penalties, for incumbents that local search cannot reach.

A move changes one layer's op.  Unlike :class:`~lana.search.local.LocalSearch`, the search may
break budgets and overlap limits on the way, at a price per unit of violation that grows while the
constraint is broken and decays while it holds (strategic oscillation), so it crosses the infeasible
regions that separate good architectures.  That matters where near-optimal architectures recombine
the deviations of earlier solutions: with scores independent of latency, a new solution differs
from a local optimum of single and paired feasible moves in a dozen layers at once.  A layer just
changed is tabu for a few moves, unless changing it again gives a new best feasible architecture.
Every move is priced at once with NumPy over the kept ops of every layer (stored compactly, a few
per layer where dominance prunes hard), a fraction of a millisecond per move.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lana.search.dense import Dense, _tol


class TabuSearch:
    """One solve's tabu search: fixed earlier solutions and allowed ops."""

    def __init__(self, dense: Dense, prev: np.ndarray, max_shared: int, allowed: np.ndarray, *,
                 tenure: int = 5, patience: int | None = None) -> None:
        n = dense.n
        self.n, self.rows = n, np.arange(n)
        allowed = allowed & dense.valid
        width = max(1, int(allowed.sum(axis=1).max()))
        self.ops = np.zeros((n, width), dtype=np.int64)  # compact column -> op index
        self.ok = np.zeros((n, width), dtype=bool)
        for i in range(n):
            ops = np.flatnonzero(allowed[i])
            self.ops[i, :ops.size], self.ok[i, :ops.size] = ops, True
        self.score = np.where(self.ok, dense.score[self.rows[:, None], self.ops], np.inf)
        self.cost = dense.cost[:, self.rows[:, None], self.ops]  # (T, N, width)
        self.cap = dense.limit + _tol(dense.limit)
        self.unit_cost = np.maximum(np.abs(dense.limit), 1e-12) / n  # one layer's budget share
        prev = prev.reshape(-1, n)
        self.agree = (prev[:, :, None] == self.ops[None]) & self.ok[None]  # (K, N, width)
        self.max_shared = int(max_shared)
        self.tenure = max(1, min(int(tenure), n // 3))  # moves a changed layer stays tabu
        self.patience = 5 * n if patience is None else int(patience)  # moves without a new best

    def run(self, z0: np.ndarray, rng: np.random.Generator,
            stop: Callable[[float], bool]) -> np.ndarray | None:
        """The best feasible architecture met from ``z0`` (None if none): moves until ``stop``
        (called with the best feasible score so far) says so, or ``patience`` moves without a new
        best."""
        rows, n = self.rows, self.n
        if not self.ok[rows, 0].all():
            return None
        # compact position of z0's op in every layer (the first allowed op where it has none)
        match = (self.ops == np.asarray(z0)[:, None]) & self.ok
        pos = np.where(match.any(axis=1), match.argmax(axis=1), 0)
        score = float(self.score[rows, pos].sum())
        used = self.cost[:, rows, pos].sum(axis=1)
        shared = self.agree[:, rows, pos].sum(axis=1)
        positive = self.score[self.ok & (self.score > 0)]
        unit = 0.1 * float(positive.mean()) if positive.size else 1.0
        w_cost = np.full(used.shape, unit)
        w_share = np.full(shared.shape, unit)
        tabu = np.zeros(n, dtype=np.int64)
        best, best_val, since, step = None, np.inf, 0, 0
        while True:
            over = np.maximum(used - self.cap, 0.0) / self.unit_cost
            excess = np.maximum(shared - self.max_shared, 0)
            better = score < best_val - 1e-12 * max(1.0, abs(score))
            if better and not over.any() and not excess.any():
                best, since = self.ops[rows, pos].copy(), 0
                best_val = score = float(self.score[rows, pos].sum())
            if since >= self.patience or stop(best_val):
                return best
            step += 1
            since += 1
            d_score = self.score - self.score[rows, pos][:, None]
            new_used = used[:, None, None] + self.cost - self.cost[:, rows, pos][:, :, None]
            new_over = (np.maximum(new_used - self.cap[:, None, None], 0.0)
                        / self.unit_cost[:, None, None])
            d_agree = self.agree.astype(np.int64) - self.agree[:, rows, pos][:, :, None]
            new_shared = shared[:, None, None] + d_agree
            new_excess = np.maximum(new_shared - self.max_shared, 0)
            value = (d_score + np.tensordot(w_cost, new_over - over[:, None, None], 1)
                     + np.tensordot(w_share, new_excess - excess[:, None, None], 1))
            value[rows, pos] = np.inf
            value[~self.ok] = np.inf
            feasible = (new_over <= 0).all(axis=0) & (new_excess <= 0).all(axis=0)
            record = best_val - 1e-12 * max(1.0, abs(best_val)) if best is not None else np.inf
            aspire = feasible & (score + d_score < record)
            value = np.where((tabu > step)[:, None] & ~aspire, np.inf, value)
            flat = int(np.argmin(value + 1e-12 * unit * rng.random(value.shape)))
            i, j = divmod(flat, value.shape[1])
            if not np.isfinite(value[i, j]):
                return best
            tabu[i] = step + self.tenure + int(rng.integers(0, 1 + self.tenure))
            score += float(d_score[i, j])
            used = new_used[:, i, j]
            shared = new_shared[:, i, j]
            pos[i] = j
            broken = used > self.cap
            w_cost = np.where(broken, w_cost * 1.05, np.maximum(w_cost / 1.02, unit * 1e-3))
            broken = shared > self.max_shared
            w_share = np.where(broken, w_share * 1.05, np.maximum(w_share / 1.02, unit * 1e-3))

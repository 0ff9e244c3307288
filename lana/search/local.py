"""Incumbents for the integer program: repair an architecture into feasibility, then improve it.

Feasible means every budget met and at most ``max_shared`` layers in common with each earlier
solution.  Repair first leaves over-shared earlier solutions by the moves of least *priced* score
increase (score plus the LP's budget price times cost, so that saving budget counts) per overlap
removed, then takes the move with the best score increase per unit of violation removed until
every budget holds; improvement takes the best single move, then the best pair of moves (one that
lowers the score and one that pays for it in budget or overlap), until neither helps.  All moves are
evaluated at once with NumPy over the (layers x ops) grid.  On tables shaped like the paper's,
starting from the LP relaxation rounded per layer lands within a fraction of a percent of the LP
bound, which then certifies it without branch and bound.
"""

from __future__ import annotations

import numpy as np

from lana.search.dense import Dense, _tol

_EPS = 1e-12


class LocalSearch:
    """Repair + improvement moves for one solve (fixed earlier solutions and allowed ops)."""

    def __init__(self, dense: Dense, prev: np.ndarray, max_shared: int, allowed: np.ndarray,
                 *, price: np.ndarray | None = None, pair_candidates: int = 16) -> None:
        self.d = dense
        self.n, self.w = dense.n, dense.width
        self.rows = np.arange(self.n)
        self.allowed = allowed & dense.valid
        self.score = np.where(self.allowed, dense.score, np.inf)
        self.cost = dense.cost
        self.cap = dense.limit + _tol(dense.limit)  # (T,)
        self.prev = prev.reshape(-1, self.n).astype(np.int64)  # (K, N)
        self.flat = self.rows[None, :] * self.w + self.prev  # (K, N) flat op ids
        self.max_shared = int(max_shared)
        share = np.maximum(np.abs(dense.limit), 1e-12) / self.n
        self.scale = share  # budget violation unit: one layer's share of the budget
        self.pairs = int(pair_candidates)
        # LP dual prices of the budgets: what a unit of each cost is worth in score
        self.price = np.zeros(len(dense.limit)) if price is None else np.maximum(price, 0.0)

    # ------------------------------------------------------------------------------- helpers
    def _count(self, rows: np.ndarray) -> np.ndarray:
        """(N, W): how many of the selected earlier solutions use each op."""
        if not rows.any():
            return np.zeros((self.n, self.w), dtype=np.int64)
        return np.bincount(self.flat[rows].ravel(), minlength=self.n * self.w).reshape(self.n, self.w)

    def _overlap(self, z: np.ndarray) -> np.ndarray:
        return (self.prev == z[None, :]).sum(axis=1)

    def feasible(self, z: np.ndarray) -> bool:
        if not self.allowed[self.rows, z].all():
            return False
        if np.any(self.cost[:, self.rows, z].sum(axis=1) > self.cap):
            return False
        return bool(np.all(self._overlap(z) <= self.max_shared))

    # -------------------------------------------------------------------------------- phases
    def run(self, z0: np.ndarray, *, max_moves: int | None = None) -> np.ndarray | None:
        """A feasible, locally improved architecture from ``z0``, or None when repair fails."""
        z = np.array(z0, dtype=np.int64)
        bad = ~self.allowed[self.rows, z]
        if bad.any():  # start from the cheapest allowed op where z0 has none
            first = np.where(self.allowed[bad], self.cost[:, bad, :].sum(axis=0), np.inf)
            z[bad] = first.argmin(axis=1)
        limit = max_moves or 20 * self.n
        if not self._repair(z, limit):
            return None
        self._improve(z, limit)
        return z

    def _repair(self, z: np.ndarray, limit: int) -> bool:
        self._repair_overlap(z, limit)
        return self._repair_all(z, limit)

    def _repair_overlap(self, z: np.ndarray, limit: int) -> None:
        """Leave over-shared earlier solutions by the moves of least priced score increase
        (score plus budget price times cost) per overlap removed, never over-sharing anew."""
        rows, L = self.rows, self.max_shared
        for _ in range(limit):
            ov = self._overlap(z)
            viol = ov > L
            if not viol.any():
                return
            cnt_v = self._count(viol)
            d = cnt_v - cnt_v[rows, z][:, None] + self._count(ov == L)
            d[rows, z] = 0
            cand = self.allowed & (d < 0)
            if not cand.any():
                return
            dc = self.cost - self.cost[:, rows, z][:, :, None]
            priced = self.score - self.score[rows, z][:, None] + np.tensordot(self.price, dc, 1)
            ratio = np.where(cand, priced / np.where(cand, -d, 1.0), np.inf)
            i, j = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
            z[i] = j

    def _repair_all(self, z: np.ndarray, limit: int) -> bool:
        rows, L = self.rows, self.max_shared
        for _ in range(limit):
            used = self.cost[:, rows, z].sum(axis=1)
            over = used - self.cap
            ov = self._overlap(z)
            viol_b = (np.maximum(over, 0.0) / self.scale).sum()
            viol_o = ov > L
            if viol_b <= 0 and not viol_o.any():
                return True
            dc = self.cost - self.cost[:, rows, z][:, :, None]
            new_b = (np.maximum(over[:, None, None] + dc, 0.0) / self.scale[:, None, None]).sum(axis=0)
            cnt_v = self._count(viol_o)
            d = new_b - viol_b + cnt_v - cnt_v[rows, z][:, None] + self._count(ov == L)
            d[rows, z] = 0.0
            cand = self.allowed & (d < -1e-9)
            if not cand.any():
                return False
            ds = self.score - self.score[rows, z][:, None]
            ratio = np.where(cand, ds / np.where(cand, -d, 1.0), np.inf)
            i, j = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
            z[i] = j
        return self.feasible(z)

    def _improve(self, z: np.ndarray, limit: int) -> None:
        rows, L = self.rows, self.max_shared
        for _ in range(limit):
            used = self.cost[:, rows, z].sum(axis=1)
            ov = self._overlap(z)
            dc = self.cost - self.cost[:, rows, z][:, :, None]
            ds = self.score - self.score[rows, z][:, None]
            ds[rows, z] = np.inf
            slack = self.cap - used
            ok = (dc <= slack[:, None, None]).all(axis=0) & (self._count(ov >= L) == 0)
            single = np.where(ok, ds, np.inf)
            best = int(np.argmin(single))
            if single.flat[best] < -_EPS * max(1.0, abs(float(self.score[rows, z].sum()))):
                i, j = np.unravel_index(best, single.shape)
                z[i] = j
                continue
            if not self._pair(z, used, ov, dc, ds):
                return

    def _pair(self, z, used, ov, dc, ds) -> bool:
        rows, L = self.rows, self.max_shared
        cand = np.flatnonzero(ds.ravel() < 0)
        if cand.size == 0:
            return False
        if cand.size > self.pairs:
            cand = cand[np.argpartition(ds.ravel()[cand], self.pairs)[:self.pairs]]
        best_val, best = -_EPS * max(1.0, abs(float(self.score[rows, z].sum()))), None
        for flat in cand:
            i1, j1 = divmod(int(flat), self.w)
            slack = self.cap - used - dc[:, i1, j1]
            ov1 = ov + (self.prev[:, i1] == j1) - (self.prev[:, i1] == z[i1])
            ok = (dc <= slack[:, None, None]).all(axis=0) & (self._count(ov1 == L) == 0)
            viol = ov1 > L
            if viol.any():
                leaves = (self.prev[viol] == z[None, :]).sum(axis=0) == viol.sum()
                ok &= leaves[:, None]
            ok[i1] = False
            tot = np.where(ok, ds, np.inf)
            j = int(np.argmin(tot))
            val = tot.flat[j] + ds[i1, j1]
            if val < best_val:
                best_val, best = val, (i1, j1, *np.unravel_index(j, tot.shape))
        if best is None:
            return False
        i1, j1, i2, j2 = best
        z[i1], z[i2] = j1, j2
        return True

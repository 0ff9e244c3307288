"""One HiGHS model reused across the K solves of a search: columns are the kept ops, rows are one
"exactly one op" row per layer, one row per budget, and one overlap row per earlier solution, added
incrementally (``addCols`` as dominance releases ops, ``addRow`` per solution).  The same class holds
the LP relaxation (continuous columns, warm-started dual simplex) and the integer program."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lana.search.dense import Dense


@dataclass
class RawSolve:
    """What one HiGHS run returned."""

    status: str  # "optimal", "infeasible", "time_limit", or HiGHS's own status text
    choice: np.ndarray | None  # op index per layer when a solution exists (MIP), else None
    x: np.ndarray | None  # (N, W) column values (LP), else None
    objective: float  # HiGHS objective of the returned solution (nan without one)
    bound: float  # certified lower bound: LP optimum, or the MIP dual bound
    nodes: int = 0
    reduced: np.ndarray | None = None  # (N, W) LP reduced costs (+inf where no column)
    price: np.ndarray | None = None  # (T,) LP dual prices of the budget rows (>= 0)
    n_cols: int = 0  # columns the solve could use (after reduced-cost fixing)


class HighsModel:
    """An incrementally built HiGHS model of the search; ``integer`` picks MIP or LP relaxation."""

    def __init__(self, dense: Dense, *, integer: bool, threads: int = 1, seed: int = 0) -> None:
        import highspy

        self._hs = highspy
        self.dense = dense
        self.integer = integer
        h = self.h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", int(threads))
        h.setOptionValue("random_seed", int(seed))
        h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        h.setOptionValue("mip_pool_soft_limit", 20)
        n = dense.n
        inf = highspy.kHighsInf
        self.col = -np.ones((n, dense.width), dtype=np.int64)
        self.col_layer = np.zeros(0, dtype=np.int64)
        self.col_op = np.zeros(0, dtype=np.int64)
        h.addRows(n, np.ones(n), np.ones(n), 0, np.zeros(n, dtype=np.int32),
                  np.zeros(0, dtype=np.int32), np.zeros(0))
        t = len(dense.limit)
        if t:
            h.addRows(t, np.full(t, -inf), dense.limit.astype(np.float64), 0,
                      np.zeros(t, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0))
        self.n_overlap = 0

    @property
    def n_cols(self) -> int:
        return int(self.col_layer.size)

    def add_ops(self, mask: np.ndarray) -> int:
        """Add a column for every op in ``mask`` that has none yet; return how many were added."""
        layers, ops = np.nonzero(mask & (self.col < 0))
        m = layers.size
        if not m:
            return 0
        d = self.dense
        t = d.cost.shape[0]
        starts = (np.arange(m) * (1 + t)).astype(np.int32)
        rows = np.empty((m, 1 + t), dtype=np.int32)
        vals = np.empty((m, 1 + t))
        rows[:, 0] = layers
        vals[:, 0] = 1.0
        for k in range(t):
            rows[:, 1 + k] = d.n + k
            vals[:, 1 + k] = d.cost[k, layers, ops]
        first = self.n_cols
        self.h.addCols(m, d.score[layers, ops].astype(np.float64), np.zeros(m), np.ones(m),
                       m * (1 + t), starts, rows.ravel(), vals.ravel())
        if self.integer:
            idx = np.arange(first, first + m, dtype=np.int32)
            self.h.changeColsIntegrality(m, idx, np.full(m, self._hs.HighsVarType.kInteger))
        self.col[layers, ops] = np.arange(first, first + m)
        self.col_layer = np.concatenate([self.col_layer, layers])
        self.col_op = np.concatenate([self.col_op, ops])
        return m

    def add_overlap(self, choice: np.ndarray, max_shared: int) -> None:
        """At most ``max_shared`` layers may pick the same op as ``choice``."""
        cols = self.col[np.arange(choice.size), choice]
        assert (cols >= 0).all(), "an earlier solution uses an op without a column"
        self.h.addRow(-self._hs.kHighsInf, float(max_shared), cols.size, cols.astype(np.int32),
                      np.ones(cols.size))
        self.n_overlap += 1

    def _vector(self, choice: np.ndarray) -> np.ndarray:
        x = np.zeros(self.n_cols)
        x[self.col[np.arange(choice.size), choice]] = 1.0
        return x

    def solve(self, *, incumbent: np.ndarray | None = None, time_limit: float = np.inf,
              gap: float = 0.0, allowed: np.ndarray | None = None) -> RawSolve:
        """Run HiGHS; for the MIP, ``allowed`` (N, W) fixes every other column to 0."""
        hs, h = self._hs, self.h
        # HiGHS checks an LP's time limit against its cumulative run clock (a MIP's per run), so the
        # LP, which is re-solved many times and is fast, runs without one.
        limit = float(time_limit) if self.integer and np.isfinite(time_limit) else hs.kHighsInf
        h.setOptionValue("time_limit", limit)
        n_open = self.n_cols
        if self.integer:
            upper = np.ones(self.n_cols)
            if allowed is not None:
                upper = allowed[self.col_layer, self.col_op].astype(np.float64)
                n_open = int(upper.sum())
            h.changeColsBounds(self.n_cols, np.arange(self.n_cols, dtype=np.int32),
                               np.zeros(self.n_cols), upper)
            h.setOptionValue("mip_rel_gap", float(gap))
            h.setOptionValue("mip_abs_gap", 0.0 if gap == 0 else 1e-12)
            if incumbent is not None and (self.col[np.arange(incumbent.size), incumbent] >= 0).all():
                sol = hs.HighsSolution()
                sol.col_value = self._vector(incumbent)
                sol.value_valid = True
                h.setSolution(sol)
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        names = {hs.HighsModelStatus.kOptimal: "optimal", hs.HighsModelStatus.kInfeasible: "infeasible",
                 hs.HighsModelStatus.kTimeLimit: "time_limit"}
        text = names.get(status, h.modelStatusToString(status))
        has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
        if not has_sol:
            return RawSolve(text, None, None, float("nan"),
                            float(info.mip_dual_bound) if self.integer else float("nan"))
        values = np.asarray(h.getSolution().col_value)
        if self.integer:
            choice = np.full(self.dense.n, -1, dtype=np.int64)
            on = np.flatnonzero(values > 0.5)
            choice[self.col_layer[on]] = self.col_op[on]
            return RawSolve(text, choice, None, float(info.objective_function_value),
                            float(info.mip_dual_bound), nodes=int(info.mip_node_count),
                            n_cols=n_open)
        x = np.zeros(self.col.shape)
        x[self.col_layer, self.col_op] = values
        reduced = np.full(self.col.shape, np.inf)
        solution = h.getSolution()
        reduced[self.col_layer, self.col_op] = np.asarray(solution.col_dual)
        t = len(self.dense.limit)
        price = -np.asarray(solution.row_dual)[self.dense.n:self.dense.n + t]
        obj = float(info.objective_function_value)
        return RawSolve(text, None, x, obj, obj if text == "optimal" else float("nan"),
                        reduced=reduced, price=np.maximum(price, 0.0), n_cols=n_open)


"""The K solves of one search, each: LP relaxation, incumbent, and (when no bound certifies the
incumbent) HiGHS branch and bound on a reduced-cost-restricted model.

Per solve, on models grown incrementally across solves:

1. the LP relaxation in HiGHS (dual simplex, warm-started from the previous solve's basis);
2. an incumbent: the LP solution rounded per layer (by largest value, then at random in
   proportion to the values) and earlier good architectures, each repaired and improved by
   :class:`~lana.search.local.LocalSearch` priced with the LP's budget duals; when no bound
   certifies the best of them yet, :class:`~lana.search.tabu.TabuSearch` continues from it;
3. if a bound certifies the incumbent within ``gap``, done; otherwise HiGHS on the integer program
   restricted to columns of small reduced cost, given the incumbent (``setSolution``),
   ``mip_rel_gap=gap`` and the time left (``bound_source="mip"``).

The bound of a solve is the largest of: its LP optimum; HiGHS's dual bound on a model that provably
contains every better architecture (see :meth:`Engine._branch_and_bound`); and the largest bound
certified by an earlier solve of the same search, which holds because every later solve's feasible
set is a subset of an earlier one's (rows are only ever added).  ``bound_source`` says which kind
("lp" or "mip") gave it.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

from lana.search.dense import Dense, Dominance
from lana.search.highs_model import HighsModel
from lana.search.local import LocalSearch
from lana.search.result import Solution
from lana.search.tabu import TabuSearch
from lana.search.table import SearchTable

PHASES = ("prune", "model", "lp", "heuristic", "tabu", "mip", "check")


def rel_gap(objective: float, bound: float) -> float:
    """(objective - bound) / |objective|, HiGHS's definition; 0 when both are 0."""
    diff = max(0.0, objective - bound)
    if diff <= 1e-12 * max(1.0, abs(objective)):
        return 0.0
    return diff / abs(objective) if objective != 0 else math.inf


def _reduced_cost_fixing(lp, theta: float) -> np.ndarray:
    """(N, W) columns kept when every architecture using a dropped one must cost more than LB + theta.

    LP duality: for any feasible x, c.x >= LB + sum over columns at 0 in the LP optimum of their
    reduced cost times x_j (columns at 1 contribute |reduced cost| * (1 - x_j) >= 0).  So an
    architecture using a column at 0 whose reduced cost exceeds theta costs more than LB + theta.
    Columns within a margin of theta are kept: HiGHS's dual feasibility tolerance (1e-7) summed
    over the N columns an architecture uses.
    """
    n = lp.x.shape[0]
    margin = theta + 1e-7 * n + 1e-9 * abs(lp.bound)
    return (lp.x > 1e-9) | (lp.reduced <= margin)


class Engine:
    """State carried between the K solves of one search."""

    def __init__(self, table: SearchTable, limits: dict[str, float], max_shared: int, *,
                 gap: float, time_limit: float, threads: int, seed: int,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock  # what time limits and timings are measured on
        self.timings = {p: 0.0 for p in PHASES}
        t0 = clock()
        self.table = table
        self.dense = Dense.build(table, limits)
        self.dominance = Dominance(self.dense, table.dominance(self.dense.tables))
        self.timings["prune"] += clock() - t0
        t0 = clock()
        self.lp = HighsModel(self.dense, integer=False, threads=threads, seed=seed)
        self.mip = HighsModel(self.dense, integer=True, threads=threads, seed=seed)
        self.lp.add_ops(self.dominance.kept)
        self.mip.add_ops(self.dominance.kept)
        self.timings["model"] += clock() - t0
        self.max_shared, self.gap, self.time_limit = max_shared, gap, time_limit
        self.chosen: list[np.ndarray] = []
        self.pool: list[np.ndarray] = []  # good architectures not chosen yet (incumbent seeds)
        self.stop_reason = ""  # why the last solve returned nothing
        self.infeasible = False  # ... and whether that was proved infeasibility
        self.n_mip = 0
        self.mip_cols: list[int] = []
        self.random_starts = 6
        self.pool_size = 50
        self.polish_share = 0.25  # of the time limit, for restricted MIPs that only improve
        self.heuristic_share = 0.3  # of the time limit, for local search from several starts
        self.tabu_share = 0.7  # of the time limit, by when tabu search stops
        self.rng = np.random.default_rng(seed)
        self.n_lp_only = 0
        self.floor = -math.inf  # the largest bound certified so far: valid for every later solve
        self.floor_source = "lp"

    def add_candidates(self, choices: Sequence[Sequence[int]]) -> None:
        for c in choices:
            c = np.asarray(c, dtype=np.int64)
            if c.shape == (self.dense.n,) and np.all(c >= 0) and np.all(c < self.dense.width):
                self.pool.append(c)

    def stats(self) -> dict:
        return {"n_layers": self.dense.n, "n_ops": int(self.dense.valid.sum()),
                "kept_ops": int(self.dominance.kept.sum()), "lp_only_solves": self.n_lp_only,
                "mip_solves": self.n_mip,
                "mip_cols_mean": float(np.mean(self.mip_cols)) if self.mip_cols else 0.0}

    def _feasible(self, choice: np.ndarray) -> bool:
        """Every budget and the overlap limit hold exactly (HiGHS works within tolerances)."""
        if (choice < 0).any() or not self.dense.feasible(choice):
            return False
        return all(int((c == choice).sum()) <= self.max_shared for c in self.chosen)

    def _extend(self) -> None:
        """Add the last solution's overlap row (and the ops dominance now keeps) to both models."""
        last = self.chosen[-1]
        t0 = self.clock()
        new = self.dominance.protect(last)
        self.timings["prune"] += self.clock() - t0
        t0 = self.clock()
        for model in (self.lp, self.mip):
            model.add_ops(new)
            model.add_overlap(last, self.max_shared)
        self.timings["model"] += self.clock() - t0

    def _incumbent(self, lp, lower: float) -> np.ndarray | None:
        """The best architecture local search reaches from the LP solution rounded (by largest
        value, then at random in proportion to the values) and from earlier good ones; stops as
        soon as one is certified by ``lower``."""
        t0 = self.clock()
        prev = np.array(self.chosen, dtype=np.int64).reshape(-1, self.dense.n)
        kept = self.dominance.kept
        ls = LocalSearch(self.dense, prev, self.max_shared, kept, price=lp.price)
        x = np.where(kept, np.maximum(lp.x, 0.0), 0.0) if lp.x is not None else None

        def starts():
            if x is not None:
                yield x.argmax(axis=1)
            yield from sorted(self.pool, key=self.dense.score_of)[:3]
            if x is not None:
                cum = np.cumsum(x, axis=1)
                for _ in range(self.random_starts):
                    u = self.rng.random((self.dense.n, 1)) * cum[:, -1:]
                    yield np.minimum((cum < u).sum(axis=1), self.dense.width - 1)

        best, best_val, seen = None, math.inf, set()
        deadline = t0 + self.heuristic_share * self.time_limit
        for z0 in starts():
            if seen and self.clock() > deadline:
                break
            if z0.tobytes() in seen:
                continue
            seen.add(z0.tobytes())
            z = ls.run(z0)
            if z is not None and (val := self.dense.score_of(z)) < best_val:
                best, best_val = z, val
                if rel_gap(best_val, lower) <= self.gap:
                    break
        if best is not None:
            self.pool.append(best)
        self.timings["heuristic"] += self.clock() - t0
        return best

    def _tabu(self, z0: np.ndarray, choice: np.ndarray | None, lower: float,
              start: float) -> np.ndarray | None:
        """The better of ``choice`` and what :class:`~lana.search.tabu.TabuSearch` reaches from
        ``z0`` (which may break constraints) until ``lower`` certifies it, it stalls, or
        ``tabu_share`` of the time limit has passed since ``start``."""
        t0 = self.clock()
        prev = np.array(self.chosen, dtype=np.int64).reshape(-1, self.dense.n)
        search = TabuSearch(self.dense, prev, self.max_shared, self.dominance.kept)
        deadline = start + self.tabu_share * self.time_limit

        def stop(best: float) -> bool:
            return self.clock() > deadline or (best < math.inf
                                                and rel_gap(best, lower) <= self.gap)

        z = search.run(z0, self.rng, stop)
        if (z is not None and self._feasible(z)
                and (choice is None or self.dense.score_of(z) < self.dense.score_of(choice))):
            choice = z
            self.pool.append(z)
        self.timings["tabu"] += self.clock() - t0
        return choice

    def next(self) -> Solution | None:
        start = self.clock()
        if self.chosen:
            self._extend()
        t0 = self.clock()
        lp = self.lp.solve()
        self.timings["lp"] += self.clock() - t0
        if lp.status == "infeasible":
            self.stop_reason = "no further architecture meets the budget and overlap limits"
            self.infeasible = True
            return None
        lower, source = (lp.bound if math.isfinite(lp.bound) else -math.inf), "lp"
        if self.floor > lower:
            lower, source = self.floor, self.floor_source
        choice = self._incumbent(lp, lower)
        if choice is not None and rel_gap(self.dense.score_of(choice), lower) > self.gap:
            choice = self._tabu(choice, choice, lower, start)
        elif choice is None and lp.x is not None:  # local search found nothing feasible
            choice = self._tabu(lp.x.argmax(axis=1), None, lower, start)
        bound, status, nodes = lower, "", 0
        if choice is not None and rel_gap(self.dense.score_of(choice), bound) <= self.gap:
            self.n_lp_only += source == "lp"
        else:
            source = "mip"
            choice, bound, status, nodes = self._branch_and_bound(lp, choice, start, bound)
            if choice is None:
                return None
        objective = self.table.objective(choice)
        bound = min(bound, objective)
        gap = rel_gap(objective, bound)
        if not status:  # certified: by a bound, or HiGHS proved the (restricted) optimum
            status = "optimal" if gap <= 1e-6 else "within_gap"
        if bound > self.floor:
            self.floor, self.floor_source = bound, source
        self.chosen.append(choice)
        self.pool = [c for c in self.pool if not np.array_equal(c, choice)][-self.pool_size:]
        return Solution(choice=choice.copy(), keys=tuple(self.table.keys(choice)),
                        objective=objective, costs=self.table.totals(choice), status=status,
                        dual_bound=float(bound), gap=float(gap),
                        time_s=self.clock() - start, bound_source=source, nodes=nodes)

    def _branch_and_bound(self, lp, choice, start, floor):
        """HiGHS on the columns whose reduced cost is below a threshold, widened until certified.

        Every column left out has reduced cost above ``theta``, so any architecture using one costs
        more than LB + theta (see :func:`_reduced_cost_fixing`); the certified bound is therefore
        min(HiGHS's dual bound on the restricted model, LB + theta), or ``floor`` (a bound already
        certified) when that is larger.  ``theta`` starts at 0 (the LP support: a small model that
        can only improve the incumbent, given a share of the time), then becomes what certifies the
        incumbent within the gap, and grows until the restricted optimum is certified or the model
        is the whole one.
        """
        value = self.dense.score_of(choice) if choice is not None else math.inf
        if lp.reduced is None or not math.isfinite(lp.bound):  # no LP certificate: plain MIP
            lower, theta, top = -math.inf, math.inf, math.inf
        else:
            lower = lp.bound
            theta = 0.0 if choice is not None else self.gap * max(abs(lower), 1e-12)
            top = float(np.max(lp.reduced[np.isfinite(lp.reduced)], initial=0.0))
        bound, status, nodes, infeasible = max(lower, floor), "time_limit", 0, False
        while True:
            t0 = self.clock()
            left = self.time_limit - (t0 - start)
            if left <= 1e-3:
                break
            allowed = (np.ones(self.mip.col.shape, dtype=bool) if math.isinf(theta)
                       else _reduced_cost_fixing(lp, theta))
            if choice is not None:
                allowed[np.arange(self.dense.n), choice] = True
            every = bool(allowed[self.mip.col_layer, self.mip.col_op].all())
            self.n_mip += 1
            if not every and choice is not None and lower + theta < _target(value, self.gap):
                # this restricted model cannot certify the incumbent, only improve on it: give it
                # a share of the time and keep the rest for a model that can
                left = min(left, self.polish_share * self.time_limit)
            raw = self.mip.solve(incumbent=choice, time_limit=left, gap=self.gap,
                                 allowed=None if every else allowed)
            self.timings["mip"] += self.clock() - t0
            self.mip_cols.append(raw.n_cols)
            nodes += raw.nodes
            if (raw.choice is not None and self.dense.score_of(raw.choice) < value
                    and self._feasible(raw.choice)):
                choice, value = raw.choice, self.dense.score_of(raw.choice)
            solved = raw.status in ("optimal", "infeasible")
            restricted = math.inf if raw.status == "infeasible" else (
                raw.bound if math.isfinite(raw.bound) else lower)
            bound = max(bound, restricted if every else min(restricted, lower + theta))
            if choice is not None and (rel_gap(value, bound) <= max(self.gap, 1e-9)
                                       or (every and raw.status == "optimal")):
                status = ""
                break
            if every or (not solved and self.clock() - start >= self.time_limit - 1e-3):
                infeasible = raw.status == "infeasible"
                break  # the whole model was solved, or time ran out
            wanted = (_target(value, self.gap) - lower) if choice is not None else 4 * theta
            grown = max(wanted, 2 * theta, 1e-9 * max(1.0, abs(lower)))
            if _reduced_cost_fixing(lp, grown).sum() <= allowed.sum():
                grown = top  # nothing new would be allowed: solve the whole model
            theta = grown
        if choice is None:
            self.infeasible = infeasible
            self.stop_reason = ("no further architecture meets the budget and overlap limits"
                                if infeasible else
                                f"HiGHS found no architecture within {self.time_limit:.3g} s")
        return choice, bound, status, nodes


def _target(value: float, gap: float) -> float:
    """The bound that certifies ``value`` within relative ``gap``."""
    return value - gap * abs(value)

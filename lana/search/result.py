"""What a search returns: the K architectures with their certificates, and how the time was spent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Solution:
    """One architecture and the evidence for it."""

    choice: np.ndarray  # op index per layer (into SearchTable.ops[i])
    keys: tuple[str, ...]  # op key per layer
    objective: float  # sum of the chosen scores (predicted loss change)
    costs: dict[str, float]  # total (fixed part included) on every cost table
    status: str  # "optimal", "within_gap" (proved within the gap asked for), "time_limit"
    dual_bound: float  # lower bound on this solve's optimum, certified by HiGHS (LP or MIP)
    gap: float  # (objective - dual_bound) / |objective|
    time_s: float  # wall time of this solve
    bound_source: str = "mip"  # "lp": the LP relaxation already proved the gap; "mip": branch and bound
    nodes: int = 0  # branch-and-bound nodes HiGHS explored

    def to_dict(self) -> dict[str, Any]:
        return {"ops": list(self.keys), "choice": [int(c) for c in self.choice],
                "objective": self.objective, "costs": dict(self.costs), "status": self.status,
                "dual_bound": self.dual_bound, "gap": self.gap, "time_s": self.time_s,
                "bound_source": self.bound_source, "nodes": self.nodes}


@dataclass(eq=False)
class SearchResult:
    """The solutions of one budget (in the order found), the limits used, and diagnostics."""

    solutions: list[Solution]
    limits: dict[str, float]  # absolute limit per constrained cost table
    budgets: list[Any]  # the Budget objects as given
    max_shared: int  # a new solution shares at most this many layers with any earlier one
    k: int  # how many were asked for
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, summed over solves
    stats: dict[str, Any] = field(default_factory=dict)  # model sizes, LP/MIP counts

    @property
    def best(self) -> Solution:
        return min(self.solutions, key=lambda s: s.objective)

    @property
    def max_gap(self) -> float:
        return max((s.gap for s in self.solutions), default=float("nan"))

    @property
    def time_s(self) -> float:
        return float(sum(s.time_s for s in self.solutions))

    def choices(self) -> np.ndarray:
        return np.array([s.choice for s in self.solutions], dtype=np.int64)

"""Independent NumPy re-check of returned architectures: one op per layer, every budget met, the
overlap limit held between every pair, and the reported objective and costs recomputed."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lana.search.errors import SearchError
from lana.search.result import Solution
from lana.search.table import SearchTable


def verify(table: SearchTable, solutions: Sequence[Solution], limits: dict[str, float],
           max_shared: int) -> None:
    """Raise :class:`SearchError` if any solution breaks a constraint or misreports a number."""
    n = table.n_layers
    choices = np.array([s.choice for s in solutions], dtype=np.int64).reshape(-1, n)
    for r, sol in enumerate(solutions):
        c = choices[r]
        if c.shape != (n,) or np.any(c < 0) or np.any(c >= np.array(table.n_ops)):
            _fail(f"solution {r} does not pick exactly one existing op per layer")
        if list(sol.keys) != table.keys(c):
            _fail(f"solution {r} reports op keys that do not match its choices")
        obj = float(sum(table.scores[i][c[i]] for i in range(n)))
        if not np.isclose(obj, sol.objective, rtol=1e-9, atol=1e-12):
            _fail(f"solution {r} reports objective {sol.objective} but its ops sum to {obj}")
        for name, limit in limits.items():
            total = table.total(name, c)
            if total > limit + 1e-9 * max(1.0, abs(limit)):
                _fail(f"solution {r} costs {total:.6g} on {name!r}, over its budget {limit:.6g}")
            if not np.isclose(total, sol.costs[name], rtol=1e-9, atol=1e-12):
                _fail(f"solution {r} reports cost {sol.costs[name]} on {name!r}, recomputed {total}")
        if sol.dual_bound > sol.objective + 1e-9 * max(1.0, abs(sol.objective)):
            _fail(f"solution {r} has a bound {sol.dual_bound} above its objective {sol.objective}")
    if len(choices) > 1:
        shared = (choices[:, None, :] == choices[None, :, :]).sum(axis=2)
        np.fill_diagonal(shared, 0)
        if shared.max() > max_shared:
            a, b = np.unravel_index(int(shared.argmax()), shared.shape)
            _fail(f"solutions {a} and {b} share {shared[a, b]} layers, more than {max_shared}")


def _fail(message: str) -> None:
    raise SearchError(f"internal check failed: {message}; this is a bug in lana.search, please "
                      f"report it with the scores and LUT files")

"""Synthetic search tables for benchmarks and tests, shaped the way the paper describes real ones.

Per layer: the teacher op (score 0, the layer's teacher latency), identity (nearly free, and the
largest loss change of the layer), and ``n_ops - 2`` candidates with a random speed ratio r to the
teacher (0.08..1.4).  With ``correlated=True`` a faster op loses more: its score grows with
(1 - r)^1.5 plus exponential noise, scaled by a per-layer sensitivity; with ``correlated=False``
scores are uniform and independent of latency, a harder case for the integer program (objective
near 0, many near-ties).  Extra cost tables ("cpu", ...) give each op another latency whose
ratio to the teacher is related to, but not the same as, the first table's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lana.search.table import SearchTable


def synthetic_table(n_layers: int = 46, n_ops: int = 197, *, seed: int = 0,
                    correlated: bool = True, tables: Sequence[str] = ("gpu",),
                    fixed_fraction: float = 0.1, integer_costs: bool = False) -> SearchTable:
    """A random :class:`SearchTable` (``integer_costs`` rounds costs to whole units, for DP oracles)."""
    from lana.spec import OpSpec, op_key

    rng = np.random.default_rng(seed)
    n_ops = max(2, int(n_ops))
    teacher_ms = rng.lognormal(np.log(0.5), 0.6, size=n_layers)
    alpha = rng.lognormal(np.log(0.02), 0.8, size=n_layers)
    names, ops, scores = [], [], []
    costs: dict[str, list[np.ndarray]] = {t: [] for t in tables}
    for i in range(n_layers):
        shape = (16 * (1 + i % 4), 8, 8)
        keys = [op_key(OpSpec.make("teacher", shape, shape, 1, sig=f"l{i:03d}")),
                op_key(OpSpec.make("identity", shape, shape, 1))]
        keys += [op_key(OpSpec.make("syn", shape, shape, 1, v=j)) for j in range(n_ops - 2)]
        r = rng.uniform(0.08, 1.4, size=n_ops)
        r[0], r[1] = 1.0, rng.uniform(0.005, 0.02)
        if correlated:
            s = alpha[i] * (3.0 * np.maximum(0.0, 1.0 - r) ** 1.5 + rng.exponential(0.3, n_ops))
            s[1] = alpha[i] * rng.uniform(4.0, 10.0)
        else:
            s = alpha[i] * rng.uniform(0.0, 4.0, n_ops)
        s[0] = 0.0
        for t_idx, t in enumerate(tables):
            ratio = r if t_idx == 0 else np.clip(r ** rng.uniform(0.6, 1.4) *
                                                 rng.lognormal(0, 0.25, n_ops), 0.01, None)
            ratio[0] = 1.0
            scale = teacher_ms[i] * (1.0 if t_idx == 0 else rng.uniform(2.0, 6.0))
            c = scale * ratio
            if integer_costs:
                c = np.maximum(1.0, np.round(c * 20.0))
            costs[t].append(c)
        names.append(f"blocks.{i}")
        ops.append(keys)
        scores.append(s)
    fixed = {t: fixed_fraction * float(sum(c[0] for c in costs[t])) for t in tables}
    if integer_costs:
        fixed = {t: float(round(v)) for t, v in fixed.items()}
    return SearchTable(layer_names=names, ops=ops, scores=scores, costs=costs, fixed=fixed,
                       units={t: "ms" for t in tables}, teacher="synthetic", pool="synthetic")

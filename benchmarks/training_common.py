"""Helpers the training benchmarks share: per-op costs, a small ILP (paper Eq. 4), random
architectures under a budget, and timing.

Costs come from a LUT when one is given (``lana.lut.Lut``: median ms per op plus the fixed part);
otherwise from a FLOP count per op (``lana.pool.op_stats``), a proxy good enough to rank ops on a
CPU.  The ILP is solved with HiGHS, the solver ``lana search`` uses; it is written out here so the
benchmarks run whatever state the search module is in.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence


@dataclass(frozen=True)
class CostTable:
    """Per layer: op key -> cost; ``fixed`` is the part no choice changes; ``unit`` names it."""

    layers: tuple[dict[str, float], ...]
    fixed: float
    unit: str  # "ms" (LUT) or "MFLOPs" (proxy)
    source: str  # LUT path or "flops"

    def total(self, ops: Sequence[str]) -> float:
        return self.fixed + sum(layer[k] for layer, k in zip(self.layers, ops))

    def teacher_total(self) -> float:
        return self.fixed + sum(next(v for k, v in layer.items() if k.startswith("teacher:"))
                                for layer in self.layers)


def cost_table(teacher, pools, lut: str | Path | None = None) -> CostTable:
    """Costs of every candidate op of ``pools`` (from ``lana.pool.build_pool``)."""
    if lut is not None:
        from lana.lut import Lut

        table = Lut.load(lut, teacher=teacher.name)
        keys = [k for lp in pools for k in lp.keys]
        table.require(keys)
        return CostTable(tuple({k: table.latency(k) for k in lp.keys} for lp in pools),
                         table.fixed_ms, "ms", str(lut))
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lana.pool import op_stats

    layers = []
    for i, lp in enumerate(pools):
        costs = {}
        for spec in lp.specs:
            module = teacher.layer_module(i) if spec.family == "teacher" else None
            costs[spec.key] = op_stats(spec, module)[1] / 1e6
        layers.append(costs)
    skeleton = teacher.skeleton().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        skeleton(teacher.example_input(1))
    return CostTable(tuple(layers), counter.get_total_flops() / 1e6, "MFLOPs", "flops")


def score_matrix(scores: dict) -> list[dict[str, float]]:
    return [dict(layer["scores"]) for layer in scores["layers"]]


def solve_ilp(scores: Sequence[dict[str, float]], costs: CostTable, budget: float, *, k: int = 1,
              overlap: float = 0.7) -> list[tuple[list[str], float]]:
    """Up to ``k`` solutions of Eq. 4: min sum of scores, cost <= budget, pairwise overlap <= O.

    Returns ``[(ops, objective), ...]`` in the order found (best first); stops early when the
    problem turns infeasible.
    """
    import highspy

    n = len(scores)
    found: list[tuple[list[str], float]] = []
    for _ in range(k):
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        x = []
        for i in range(n):
            keys = [key for key in scores[i] if key in costs.layers[i]]
            x.append({key: h.addBinary(obj=float(scores[i][key])) for key in keys})
            h.addConstr(sum(x[i].values()) == 1)
        h.addConstr(sum(costs.layers[i][key] * v for i in range(n) for key, v in x[i].items())
                    <= budget - costs.fixed)
        for ops, _ in found:
            h.addConstr(sum(x[i][key] for i, key in enumerate(ops)) <= int(overlap * n))
        h.minimize()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            break
        ops = [max(x[i], key=lambda key: h.val(x[i][key])) for i in range(n)]
        found.append((ops, sum(scores[i][key] for i, key in enumerate(ops))))
    return found


def random_architecture(costs: CostTable, budget: float, rng: random.Random,
                        tries: int = 10000) -> list[str] | None:
    """A uniformly drawn feasible choice (rejection sampling on a per-layer random order)."""
    n = len(costs.layers)
    cheapest = [min(layer.values()) for layer in costs.layers]
    for _ in range(tries):
        left = budget - costs.fixed
        ops: list[str | None] = [None] * n
        order = list(range(n))
        rng.shuffle(order)
        rest = sum(cheapest)
        ok = True
        for i in order:
            rest -= cheapest[i]
            choices = [k for k, c in costs.layers[i].items() if c + rest <= left]
            if not choices:
                ok = False
                break
            ops[i] = rng.choice(choices)
            left -= costs.layers[i][ops[i]]
        if ok:
            return [o for o in ops if o is not None]
    return None


def write_search(path: Path, teacher_name: str, pool: str, layer_names: Sequence[str],
                 solutions: Sequence[tuple[list[str], float]], costs: CostTable,
                 budget: float, label: str) -> Path:
    """A search result in the nested form ``lana select`` reads."""
    doc = {"schema": "lana.search/1", "teacher": teacher_name, "pool": pool,
           "layer_names": list(layer_names),
           "budgets": [{"budget": label, "budget_ms": budget if costs.unit == "ms" else None,
                        "solutions": [{"ops": ops, "objective": obj,
                                       "predicted_ms": {costs.source: costs.total(ops)}}
                                      for ops, obj in solutions]}]}
    path.write_text(json.dumps(doc, indent=1))
    return path


@contextmanager
def timed(store: dict, name: str, cpu: dict | None = None) -> Iterator[None]:
    """Record the wall time of the block in ``store[name]`` (and its CPU time in ``cpu[name]``:
    on a shared machine the wall time includes waiting for the cores, the CPU time does not)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        store[name] = round(time.perf_counter() - start, 2)
        if cpu is not None:
            cpu[name] = round(time.process_time() - start_cpu, 2)

"""Small search tables shared by the search tests."""

from __future__ import annotations

import numpy as np
import pytest

from lana.search import SearchTable
from lana.search.synthetic import synthetic_table


def tiny(n: int = 6, m: int = 4, seed: int = 0, *, correlated: bool = True,
         tables: tuple[str, ...] = ("gpu",), integer: bool = False) -> SearchTable:
    """A random table small enough to enumerate (m ** n architectures)."""
    return synthetic_table(n, m, seed=seed, correlated=correlated, tables=tables,
                           integer_costs=integer)


def plain(scores, costs, fixed=0.0) -> SearchTable:
    """A table from nested lists, layer names l0.., op keys built from specs."""
    from lana.spec import OpSpec, op_key

    ops = []
    for i, s in enumerate(scores):
        shape = (8, 4, 4)
        keys = [op_key(OpSpec.make("teacher", shape, shape, 1, sig=f"t{i}"))]
        keys += [op_key(OpSpec.make("syn", shape, shape, 1, v=j)) for j in range(len(s) - 1)]
        ops.append(keys)
    return SearchTable(layer_names=[f"l{i}" for i in range(len(scores))], ops=ops,
                       scores=[np.asarray(s, float) for s in scores],
                       costs={"ms": [np.asarray(c, float) for c in costs]}, fixed={"ms": fixed},
                       units={"ms": "ms"})


@pytest.fixture
def table46():
    """The paper-sized case, smaller pool: 46 layers x 24 ops."""
    return synthetic_table(46, 24, seed=3)

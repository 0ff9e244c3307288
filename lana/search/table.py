"""The search input: for every layer, its candidate ops with a score and one cost per cost table.

A :class:`SearchTable` is ragged (layers have different numbers of candidates) and file-free: the
solver takes a table and returns architectures.  Scores are the loss changes ``a_i`` of paper Eq. 3
(teacher op 0, lower is better); each cost table is one vector ``b_i`` per layer (latency from one
LUT in ms, parameters, FLOPs) plus the cost of the never-replaced parts (``fixed``), so that
``fixed + sum of the chosen ops`` is the predicted total.  :meth:`SearchTable.from_files` builds one
from a scores file and LUT files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np

from lana.search.errors import SearchError

TEACHER_FAMILY = "teacher"
IDENTITY_FAMILY = "identity"


def _family(key: str) -> str:
    """The op family of a key: by the key grammar of :func:`lana.spec.op_key`, the text before
    the first ':' (keys are made and checked by lana.spec; this only reads them)."""
    return key.partition(":")[0]


@dataclass(frozen=True, eq=False)
class SearchTable:
    """Per-layer candidate ops with scores and costs; validated on construction, never mutated."""

    layer_names: tuple[str, ...]  # one per layer, in execution order
    ops: tuple[tuple[str, ...], ...]  # op keys per layer
    scores: tuple[np.ndarray, ...]  # loss change per op, aligned with ``ops``
    costs: Mapping[str, tuple[np.ndarray, ...]]  # cost table name -> per-layer cost vectors
    fixed: Mapping[str, float] = field(default_factory=dict)  # cost of the never-replaced parts
    units: Mapping[str, str] = field(default_factory=dict)  # cost table name -> unit ("ms", ...)
    teacher: str = ""  # teacher name, copied into architecture files
    pool: str = ""  # candidate pool name
    teacher_loss: float | None = None  # loss of the teacher itself, when the scores file has it
    # The layer selector and input shape the LUTs were measured with (a user module's layout,
    # which counting its parameters or FLOPs needs); None: the teacher's own.
    selector: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.layer_names)
        ops = tuple(tuple(str(k) for k in layer) for layer in self.ops)
        n = len(names)
        if n == 0:
            raise SearchError("the search table has no layers; pass scores for at least one layer")
        if len(ops) != n or len(self.scores) != n:
            raise SearchError(f"the search table has {n} layer names, {len(ops)} op lists and "
                              f"{len(self.scores)} score vectors; give one of each per layer")
        scores = tuple(self._vector(s, ops[i], names[i], "score") for i, s in enumerate(self.scores))
        if not self.costs:
            raise SearchError("the search table has no cost table; pass at least one LUT")
        costs: dict[str, tuple[np.ndarray, ...]] = {}
        for name, per_layer in self.costs.items():
            if len(per_layer) != n:
                raise SearchError(f"cost table {name!r} covers {len(per_layer)} layers but the scores "
                                  f"cover {n}; use a LUT and scores made for the same teacher and "
                                  f"layer selector")
            costs[str(name)] = tuple(self._vector(c, ops[i], names[i], f"{name} cost")
                                     for i, c in enumerate(per_layer))
        fixed = {name: float(self.fixed.get(name, 0.0)) for name in costs}
        for name, value in fixed.items():
            if not math.isfinite(value):
                raise SearchError(f"the fixed part of cost table {name!r} is {value}; re-measure it "
                                  f"(the LUT's 'fixed' entry)")
        unknown = sorted(set(self.fixed) - set(costs))
        if unknown:
            raise SearchError(f"fixed costs given for unknown cost table(s) {unknown}; tables are "
                              f"{sorted(costs)}")
        for i, layer in enumerate(ops):
            if not layer:
                raise SearchError(f"layer {names[i]!r} has no candidate op; every layer needs at "
                                  f"least its teacher op")
            if len(set(layer)) != len(layer):
                raise SearchError(f"layer {names[i]!r} lists an op twice; give each op once")
        object.__setattr__(self, "layer_names", names)
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "fixed", fixed)
        object.__setattr__(self, "units", {name: str(self.units.get(name, "")) for name in costs})

    @staticmethod
    def _vector(values: Sequence[float], ops: Sequence[str], layer: str, what: str) -> np.ndarray:
        arr = np.array(values, dtype=np.float64).reshape(-1)
        if arr.shape[0] != len(ops):
            raise SearchError(f"layer {layer!r} has {len(ops)} ops but {arr.shape[0]} {what} "
                              f"values; give one per op")
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            fix = ("re-run lana score" if what == "score" else
                   "re-profile that entry: delete it from its LUT and run the LUT's "
                   "lana-profile command with --resume")
            raise SearchError(f"{what} of op {ops[bad[0]]} at layer {layer!r} is {arr[bad[0]]} "
                              f"({bad.size} non-finite value(s) in that layer); {fix}")
        arr.setflags(write=False)
        return arr

    # ---------------------------------------------------------------------------------- queries
    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def n_ops(self) -> list[int]:
        """Number of candidate ops per layer."""
        return [len(layer) for layer in self.ops]

    @property
    def table_names(self) -> list[str]:
        return list(self.costs)

    @cached_property
    def families(self) -> tuple[tuple[str, ...], ...]:
        """The op family of every candidate (parsed from its key)."""
        return tuple(tuple(_family(k) for k in layer) for layer in self.ops)

    def dominance(self, tables: Sequence[str]) -> np.ndarray:
        """(N, W, W) booleans, W the widest layer: ``[i, a, b]`` when op a of layer i is no worse
        than op b in score and in every cost table of ``tables`` and strictly better in one of them
        (exact ties: the lower index dominates).  It does not depend on the budgets, so it is
        computed once per set of constrained tables and shared by every search on this table (the
        targets of a sweep); :class:`lana.search.dense.Dominance` applies it."""
        key = tuple(tables)
        if key not in self._dominance:
            width = max(self.n_ops)
            rel = np.zeros((self.n_layers, width, width), dtype=bool)
            for i, s in enumerate(self.scores):
                idx = np.arange(s.size)
                le = s[:, None] <= s[None, :]
                eq = s[:, None] == s[None, :]
                for name in key:
                    c = self.costs[name][i]
                    le &= c[:, None] <= c[None, :]
                    eq &= c[:, None] == c[None, :]
                d = le & (~eq | (idx[:, None] < idx[None, :]))
                np.fill_diagonal(d, False)
                rel[i, :s.size, :s.size] = d
            rel.setflags(write=False)
            self._dominance[key] = rel
        return self._dominance[key]

    @cached_property
    def _dominance(self) -> dict[tuple[str, ...], np.ndarray]:
        return {}

    def teacher_choice(self) -> np.ndarray:
        """Index of the teacher op ("teacher" family) in every layer: the teacher architecture."""
        choice = np.empty(self.n_layers, dtype=np.int64)
        for i, fams in enumerate(self.families):
            if TEACHER_FAMILY not in fams:
                raise SearchError(f"layer {self.layer_names[i]!r} has no teacher op, so budgets "
                                  f"relative to the teacher ('0.5x') are undefined; give the budget "
                                  f"in absolute units or include the teacher op")
            choice[i] = fams.index(TEACHER_FAMILY)
        return choice

    def keys(self, choice: Sequence[int]) -> list[str]:
        """The op key chosen at every layer."""
        return [self.ops[i][int(j)] for i, j in enumerate(choice)]

    def objective(self, choice: Sequence[int]) -> float:
        """Sum of the chosen ops' scores (the predicted loss change)."""
        return float(sum(self.scores[i][int(j)] for i, j in enumerate(choice)))

    def total(self, table: str, choice: Sequence[int]) -> float:
        """Fixed part plus the chosen ops' costs on one cost table."""
        per_layer = self.costs[table]
        return self.fixed[table] + float(sum(per_layer[i][int(j)] for i, j in enumerate(choice)))

    def totals(self, choice: Sequence[int]) -> dict[str, float]:
        return {name: self.total(name, choice) for name in self.costs}

    def minimum(self, table: str) -> float:
        """The smallest total any architecture reaches on one cost table."""
        return self.fixed[table] + float(sum(c.min() for c in self.costs[table]))

    def choice_of(self, keys: Sequence[str]) -> np.ndarray:
        """Indices of the given op keys (one per layer)."""
        if len(keys) != self.n_layers:
            raise SearchError(f"an architecture needs {self.n_layers} op keys, got {len(keys)}")
        out = np.empty(self.n_layers, dtype=np.int64)
        for i, key in enumerate(keys):
            try:
                out[i] = self.ops[i].index(key)
            except ValueError:
                raise SearchError(f"op {key} is not a candidate of layer {self.layer_names[i]!r}"
                                  ) from None
        return out

    # ------------------------------------------------------------------------------ derivations
    def restrict(self, keep: Sequence[Sequence[bool]]) -> "SearchTable":
        """A table with only the ops marked in ``keep`` (one boolean vector per layer)."""
        masks = [np.asarray(k, dtype=bool) for k in keep]
        for i, m in enumerate(masks):
            if not m.any():
                raise SearchError(f"no candidate op is left at layer {self.layer_names[i]!r}")
        return replace(
            self,
            ops=[tuple(k for k, keep_it in zip(self.ops[i], m) if keep_it)
                 for i, m in enumerate(masks)],
            scores=[s[m] for s, m in zip(self.scores, masks)],
            costs={name: [c[m] for c, m in zip(per_layer, masks)]
                   for name, per_layer in self.costs.items()})

    def single_shot(self) -> "SearchTable":
        """Only the teacher op and identity at every layer (single-shot LANA, paper Table 7)."""
        keep = [[f in (TEACHER_FAMILY, IDENTITY_FAMILY) for f in fams] for fams in self.families]
        for i, k in enumerate(keep):
            if not any(k):
                raise SearchError(f"layer {self.layer_names[i]!r} has neither a teacher nor an "
                                  f"identity op, so single-shot search is impossible; include them")
        return self.restrict(keep)

    def with_costs(self, name: str, per_layer: Sequence[Sequence[float]], fixed: float = 0.0,
                   unit: str = "") -> "SearchTable":
        """A copy with one more cost table (e.g. parameters next to latency)."""
        if name in self.costs:
            raise SearchError(f"cost table {name!r} already exists")
        return replace(self, costs={**self.costs, name: tuple(per_layer)},
                       fixed={**self.fixed, name: fixed}, units={**self.units, name: unit})

    @classmethod
    def from_files(cls, scores: str, luts: Sequence[str], **kwargs) -> "SearchTable":
        """Build a table from a scores file and LUT files; see :func:`lana.search.files.load_table`."""
        from lana.search.files import load_table

        return load_table(scores, luts, **kwargs)

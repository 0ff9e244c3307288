"""Search tables from files (a scores file and LUTs), and architecture files out.

The solver itself never touches files; this module is the bridge used by ``lana search``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lana.errors import UPGRADE, newer_schema, read_json_file
from lana.search.errors import SearchError, SearchWarning
from lana.search.table import TEACHER_FAMILY, SearchTable

SCORES_SCHEMA = "lana.scores/1"
ARCH_SCHEMA = "lana.arch/1"


def read_scores(path: str | Path) -> dict[str, Any]:
    """The scores file as a dict, with its schema and per-layer scores checked."""
    path = Path(path)
    data = read_json_file(path, SearchError, "scores file",
                          missing=f"write it with lana score --out {path}",
                          invalid="re-run lana score")
    if not isinstance(data, dict) or data.get("schema") != SCORES_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else None
        fix = UPGRADE if newer_schema(got, SCORES_SCHEMA) else "pass the file written by lana score"
        raise SearchError(f"{path} is not a {SCORES_SCHEMA} scores file (schema {got!r}); {fix}")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers or not all(
            isinstance(layer, dict) and isinstance(layer.get("scores"), dict) and layer["scores"]
            for layer in layers):
        raise SearchError(f"{path} has no per-layer scores (every layer needs a non-empty "
                          f"'scores' map); re-run lana score")
    from lana.spec import parse_key

    for i, layer in enumerate(layers):
        for key, value in layer["scores"].items():
            try:
                parse_key(key)
            except ValueError as exc:
                raise SearchError(f"{path}: layer {layer.get('name', i)!r} scores an invalid op "
                                  f"key ({exc}); re-run lana score") from None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise SearchError(f"{path}: score of op {key} at layer "
                                  f"{layer.get('name', i)!r} is {value!r}, not a finite number; "
                                  f"re-run lana score")
    loss = data.get("teacher_loss")
    if loss is not None and (not isinstance(loss, (int, float)) or isinstance(loss, bool)
                             or not math.isfinite(loss)):
        raise SearchError(f"{path}: teacher_loss is {loss!r}, not a finite number; re-run lana "
                          f"score (or delete the field: predicted losses are then left out)")
    return data


def _table_names(luts: Sequence[Any]) -> list[str]:
    names: list[str] = []
    for lut in luts:
        base = str(lut.preset or "lut")
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _linear_costs(lut: Any, ops: Sequence[Sequence[str]]) -> tuple[list[np.ndarray], float]:
    """Per-op costs and fixed part whose sum is ``lut.predict`` (calibration folded in)."""
    from lana.search.table import _family

    cal = lut.calibration or {}
    slope = float(cal.get("slope", 1.0))
    offset = float(cal.get("offset_ms", 0.0))
    family_ms = {str(k): float(v) for k, v in (cal.get("family_ms") or {}).items()}
    costs = [np.array([slope * lut.latency(k) + family_ms.get(_family(k), 0.0) for k in layer])
             for layer in ops]
    return costs, offset + slope * lut.fixed_ms


def load_table(scores: str | Path, luts: Sequence[str | Path], *, check_fingerprint: bool = True
               ) -> SearchTable:
    """A :class:`SearchTable` from a scores file and one or more LUT files (one cost table each,
    named by the LUT's device preset).  Ops whose LUT entry failed to profile are left out."""
    from lana.lut import Lut

    if not luts:
        raise SearchError("give at least one LUT (--lut luts/<device>/<teacher>.json)")
    data = read_scores(scores)
    names = [str(layer.get("name", f"layer{i}")) for i, layer in enumerate(data["layers"])]
    loaded = [Lut.load(p, check_fingerprint=check_fingerprint) for p in luts]
    for path, lut in zip(luts, loaded):
        if data.get("teacher") and lut.teacher != data["teacher"]:
            raise SearchError(f"scores file {scores} is for teacher {data['teacher']!r} but LUT "
                              f"{path} is for {lut.teacher!r}; use files made for the same teacher")
        lut_names = [str(layer.get("name")) for layer in lut.layers]
        if lut_names and lut_names != names:
            i = next((i for i, (a, b) in enumerate(zip(names, lut_names)) if a != b),
                     min(len(names), len(lut_names)))
            a = names[i] if i < len(names) else "<end>"
            b = lut_names[i] if i < len(lut_names) else "<end>"
            raise SearchError(f"scores file {scores} ({len(names)} layers) and LUT {path} "
                              f"({len(lut_names)} layers) list different layers (first difference "
                              f"at index {i}: {a!r} vs {b!r}); use files made for the same teacher "
                              f"and layer selector")
        lut.require(k for layer in data["layers"] for k in layer["scores"])
        for layer in data["layers"]:
            for key in layer["scores"]:
                if key.startswith(f"{TEACHER_FAMILY}:") and lut.failed(key):
                    raise SearchError(
                        f"the teacher op of layer {layer.get('name')!r} failed to profile in LUT "
                        f"{path} ({lut.failed(key)}); the search needs it (to keep a layer, and "
                        f"for budgets like 0.5x): fix that and re-measure: {lut.command(force=True)}")
    ops, scores_per_layer, dropped = [], [], 0
    for layer in data["layers"]:
        keys = [k for k in layer["scores"] if all(lut.has(k) for lut in loaded)]
        dropped += len(layer["scores"]) - len(keys)
        if not keys:
            lacking = [lut for lut in loaded if not any(lut.has(k) for k in layer["scores"])]
            raise SearchError(f"every op of layer {layer.get('name')!r} failed to profile in the "
                              f"LUT(s); --resume tries failed ops again: "
                              f"{'; '.join(lut.command(resume=True) for lut in lacking)}")
        ops.append(keys)
        scores_per_layer.append([float(layer["scores"][k]) for k in keys])
    if dropped:
        warnings.warn(f"{dropped} scored op(s) failed to profile on some device and are left out "
                      f"of the search", SearchWarning, stacklevel=2)
    costs, fixed = {}, {}
    for name, lut in zip(_table_names(loaded), loaded):
        costs[name], fixed[name] = _linear_costs(lut, ops)
    table = SearchTable(layer_names=names, ops=ops, scores=scores_per_layer, costs=costs,
                        fixed=fixed, units={n: "ms" for n in costs},
                        teacher=str(data.get("teacher", "")), pool=str(data.get("pool", "")),
                        teacher_loss=data.get("teacher_loss"),
                        selector=loaded[0].data.get("selector"),
                        input_shape=tuple(loaded[0].input_shape) or None)
    _check_predictions(table, loaded)
    return table


def _check_predictions(table: SearchTable, luts: Sequence[Any]) -> None:
    """The table's totals must equal ``Lut.predict`` (guards the calibration folding)."""
    try:
        choice = table.teacher_choice()
    except SearchError:
        choice = np.zeros(table.n_layers, dtype=np.int64)
    keys = table.keys(choice)
    for name, lut in zip(table.table_names, luts):
        want, got = lut.predict(keys), table.total(name, choice)
        if not math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-9):
            raise SearchError(f"LUT {lut.path} predicts {want} ms for the teacher but its linear "
                              f"cost table sums to {got} ms; its calibration is not affine per op")


def add_model_tables(table: SearchTable, *, params: bool = True, flops: bool = False,
                     option: str = "--max-params") -> SearchTable:
    """Add cost tables of parameter counts ("params") and/or FLOPs at batch 1 ("flops") per op.

    Ops are counted on the meta device (:func:`lana.pool.op_params`, and :func:`lana.pool.op_stats`
    for FLOPs, which runs each op once), once per distinct op key; the fixed part is the teacher's
    skeleton (every layer replaced by a shape adapter), as for a LUT's fixed latency.  A user
    module's layers and input are the table's (those its LUTs were measured with).
    """
    from lana.pool import count_flops, op_params, op_stats
    from lana.spec import parse_key
    from lana.teachers import create_teacher, recorded_layout

    selector, input_shape = recorded_layout(
        table.teacher, {"selector": table.selector, "input_shape": table.input_shape})
    try:
        teacher = create_teacher(table.teacher, selector=selector, input_shape=input_shape,
                                 pretrained=False)
    except Exception as exc:  # noqa: BLE001 - any failure means nothing can be counted
        raise SearchError(f"{option} needs the teacher {table.teacher!r} to count its ops "
                          f"({type(exc).__name__}: {exc}); drop {option} or fix the teacher"
                          ) from exc
    if len(teacher.layers) != table.n_layers:
        raise SearchError(f"teacher {table.teacher} has {len(teacher.layers)} layers but the "
                          f"scores have {table.n_layers}; drop {option} or re-score")
    stats: dict[tuple[int, str], tuple[int, int]] = {}
    per_layer: list[list[tuple[int, int]]] = []
    for i, keys in enumerate(table.ops):
        row = []
        for k in keys:
            spec = parse_key(k)
            # only the teacher op depends on the layer it copies; other ops on their key alone
            slot = (i if spec.family == "teacher" else -1, k)
            if slot not in stats:
                layer = teacher.layer_module(i)
                stats[slot] = op_stats(spec, layer) if flops else (op_params(spec, layer), 0)
            row.append(stats[slot])
        per_layer.append(row)
    skeleton = teacher.skeleton()
    fixed = (float(sum(p.numel() for p in skeleton.parameters())),
             float(count_flops(skeleton, teacher.example_input())) if flops else 0.0)
    for index, (name, wanted) in enumerate((("params", params), ("flops", flops))):
        if wanted:
            table = table.with_costs(name, [[float(s[index]) for s in row] for row in per_layer],
                                     fixed=fixed[index], unit="")
    return table


def arch_dict(table: SearchTable, choice: Sequence[int], *, objective: float,
              budget_ms: float | None) -> dict[str, Any]:
    """One architecture in the ``lana.arch/1`` form that assemble and validate read."""
    return {"schema": ARCH_SCHEMA, "teacher": table.teacher, "pool": table.pool,
            "ops": table.keys(choice), "layer_names": list(table.layer_names),
            "predicted_ms": {name: table.total(name, choice) for name in table.table_names
                             if table.units.get(name) == "ms"},
            "objective": float(objective), "budget_ms": budget_ms}

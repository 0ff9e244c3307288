"""Assembly: the student network an architecture file describes, built, weighted, saved and rebuilt.

An architecture (``lana.arch/1``, written by ``lana search``) names a teacher and one op key per
teacher layer.  :func:`build_student` swaps every layer whose op is not the teacher's own for a fresh
op built from its key, loads the op's pretrained weights from a ``lana pretrain`` directory when
they are there, and keeps the teacher's layers, stem and head as they are.  :func:`assemble` writes
what a user ships and what later stages read::

    <out>/arch.json      the architecture, checked against the teacher
    <out>/student.pt     {"arch": ..., "state_dict": ..., "teacher": {...}, "weights": {...}}
    <out>/student.onnx   the deployed form (re-parameterisable blocks fused), dynamic batch
    <out>/assembly.json  per layer: op key and where its weights came from

The four files are written into a hidden folder first and replace the previous set together (a
set without ONNX removes an older ``student.onnx``), so an interruption leaves the old set or the
new one, never a mix; other files in ``<out>`` are left alone.

:func:`load_student` rebuilds the same module from ``student.pt`` alone (bit for bit: the same
state_dict, the same outputs).  A weight that is missing is never an error: the layer keeps its
random initialisation and a warning says so, because latency does not depend on weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from lana.errors import UPGRADE, LanaError, newer_schema, read_json_file, refuse_other_kind
from lana.spec import OpSpec, parse_key

if TYPE_CHECKING:
    from torch import nn

    from lana.teachers import Teacher

ARCH_SCHEMA = "lana.arch/1"
STUDENT_SCHEMA = "lana.student/1"


class ArchError(LanaError):
    """An architecture file that does not fit its teacher, pool or LUT."""


class AssemblyWarning(UserWarning):
    """Something assembly could do only partly (random weights); latency is unaffected."""


# ---------------------------------------------------------------------------------------------
# Architecture files


@dataclass(frozen=True)
class Architecture:
    """One searched network: the teacher and the op (canonical key) chosen for each of its layers."""

    teacher: str  # teacher registry name or "path/file.py:factory"
    pool: str  # the candidate pool the ops come from
    ops: tuple[str, ...]  # one op key per teacher layer, in layer order
    layer_names: tuple[str, ...] = ()  # the teacher's layer module paths, for checking
    predicted_ms: Mapping[str, float] = field(default_factory=dict)  # LUT device -> predicted ms
    objective: float | None = None  # the search objective (summed score) of this choice
    budget_ms: float | None = None  # the latency budget it was searched for
    extra: Mapping[str, Any] = field(default_factory=dict)  # other fields, kept when saved

    def __hash__(self) -> int:
        return hash((self.teacher, self.pool, self.ops))

    @property
    def specs(self) -> list[OpSpec]:
        return [parse_key(k) for k in self.ops]

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": ARCH_SCHEMA, "teacher": self.teacher, "pool": self.pool,
               "ops": list(self.ops), "layer_names": list(self.layer_names),
               "predicted_ms": dict(self.predicted_ms), "objective": self.objective,
               "budget_ms": self.budget_ms}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "architecture") -> "Architecture":
        if not isinstance(data, Mapping):
            raise ArchError(f"{where} is not an architecture (expected a JSON object with "
                            f"schema {ARCH_SCHEMA!r})")
        schema = str(data.get("schema", ""))
        if schema.partition("/")[0] != "lana.arch":
            raise ArchError(f"{where} has schema {schema or 'none'!r}, expected {ARCH_SCHEMA!r}; "
                            f"pass a file written by lana search")
        if schema != ARCH_SCHEMA:
            fix = (UPGRADE if newer_schema(schema, ARCH_SCHEMA)
                   else "re-run lana search with this version")
            raise ArchError(f"{where} has schema {schema}, this lana reads {ARCH_SCHEMA}; {fix}")
        missing = [f for f in ("teacher", "ops") if f not in data]
        if missing:
            raise ArchError(f"{where} lacks {', '.join(missing)}; pass a file written by lana search")
        ops = data["ops"]
        if not isinstance(ops, list) or not all(isinstance(k, str) for k in ops):
            raise ArchError(f"{where}: 'ops' must be a list of op keys, one per teacher layer")
        budget = data.get("budget_ms")
        if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool)
                                   or not math.isfinite(budget) or budget <= 0):
            raise ArchError(f"{where}: budget_ms must be a positive number or null, got {budget!r}")
        known = {"schema", "teacher", "pool", "ops", "layer_names", "predicted_ms", "objective",
                 "budget_ms"}
        return cls(teacher=str(data["teacher"]), pool=str(data.get("pool", "")), ops=tuple(ops),
                   layer_names=tuple(data.get("layer_names") or ()),
                   predicted_ms=dict(data.get("predicted_ms") or {}),
                   objective=data.get("objective"),
                   budget_ms=float(budget) if budget is not None else None,
                   extra={k: v for k, v in data.items() if k not in known})

    def replace(self, **changes: Any) -> "Architecture":
        return dataclasses.replace(self, **changes)


def _collect_archs(data: Any, ctx: Mapping[str, Any] | None = None
                   ) -> list[tuple[Mapping, Mapping[str, Any]]]:
    """Every ``lana.arch`` object in a document, in order (a file may hold one, a list, or
    budgets), each with the budget context around it, as :func:`lana.select.read_architectures`
    reads it (a search report's ``budgets`` ``given``, a verify result's ``budget``, lists keyed
    by budget labels)."""
    from lana.select import _CONTAINERS, _budget_context

    ctx = {} if ctx is None else ctx
    if isinstance(data, Mapping):
        if str(data.get("schema", "")).startswith("lana.arch/"):
            return [(data, ctx)]
        here = _budget_context(data, ctx)
        found: list[tuple[Mapping, Mapping[str, Any]]] = []
        for key, value in data.items():
            if isinstance(value, (list, Mapping)):
                sub = here
                if isinstance(value, list) and key not in _CONTAINERS and key != "pareto":
                    sub = {**here, "budget": str(key)}
                found += _collect_archs(value, sub)
        return found
    if isinstance(data, list):
        return [a for item in data for a in _collect_archs(item, ctx)]
    return []


def read_arch(path: str | Path, index: int | None = None) -> Architecture:
    """Read an architecture file.

    A file written by ``lana search`` may hold several architectures (K per budget); ``index``
    picks one (0 = the first).  With several and no index the first is used and a warning says so.
    """
    return read_arch_budget(path, index)[0]


def read_arch_budget(path: str | Path, index: int | None = None
                     ) -> tuple[Architecture, str | None]:
    """:func:`read_arch`, and the budget label the file records around that architecture (a search
    report's target, a verify result's budget), as written; None when it records none.  A budget
    the architecture records itself (``budget``, ``selection``) stays in its ``extra``."""
    path = Path(path)
    data = read_json_file(path, ArchError, "architecture file",
                          missing=f"write one with lana search --out {path}",
                          invalid="re-run lana search")
    refuse_other_kind(data, path, ("lana.search", "lana.arch", "lana.verify"),
                      "an architecture file", "pass the --out of lana search or select", ArchError)
    return arch_in_document(data, path, index)


def arch_in_document(data: Any, path: str | Path, index: int | None = None
                     ) -> tuple[Architecture, str | None]:
    """:func:`read_arch_budget` of an already parsed document ``data`` (read from ``path``)."""
    path = Path(path)
    found = _collect_archs(data)
    if not found:
        if isinstance(data, Mapping) and "schema" in data and "ops" in data:
            return Architecture.from_dict(data, f"architecture file {path}"), None
        if isinstance(data, (Mapping, list)) and not (isinstance(data, Mapping)
                                                      and "schema" in data):
            # A search result whose solutions carry no schema of their own (teacher, pool and
            # budgets in the enclosing document): lana select reads those.
            from lana.select import architectures_in

            cands = architectures_in(data, path)
            chosen = cands[_index(len(cands), index, path)]
            return chosen.arch, chosen.budget
        raise ArchError(f"{path} holds no architecture (schema {ARCH_SCHEMA!r}); pass a file "
                        f"written by lana search")
    index = _index(len(found), index, path)
    node, ctx = found[index]
    return Architecture.from_dict(node, f"architecture {index} of {path}"), ctx.get("budget")


def _index(n: int, index: int | None, path: Path) -> int:
    if index is None:
        if n > 1:
            warnings.warn(f"{path} holds {n} architectures; using the first (pass --index N to "
                          f"pick another)", AssemblyWarning, stacklevel=3)
        return 0
    if not 0 <= index < n:
        raise ArchError(f"{path} holds {n} architectures; --index must be 0..{n - 1}, got {index}")
    return index


def write_arch(arch: Architecture, path: str | Path) -> Path:
    """Write ``arch`` atomically as a single-architecture file."""
    from lana.atomic import write_text

    path = Path(path)
    write_text(path, json.dumps(arch.to_dict(), indent=1) + "\n")
    return path


def teacher_architecture(teacher: "Teacher", pool: str = "") -> Architecture:
    """The architecture that keeps every teacher layer (the teacher itself)."""
    return Architecture(teacher.name, pool, tuple(teacher.teacher_spec(i).key
                                                  for i in range(len(teacher.layers))),
                        tuple(l.name for l in teacher.layers))


def check_arch(arch: Architecture, teacher: "Teacher", *, pool: str | None = None) -> None:
    """Refuse an architecture that cannot be built on ``teacher`` (one line saying what to do).

    Checks the teacher name, the layer count and names, that every key is a canonical op key whose
    shapes and stride match its layer, that teacher ops carry this teacher's layer signature, and
    (when ``pool`` or the architecture names one) that every op is a candidate of that pool.
    """
    from lana.ops import POOLS, candidate_specs

    if arch.teacher != teacher.name:
        raise ArchError(f"the architecture is for teacher {arch.teacher!r}, not {teacher.name!r}; "
                        f"pass --teacher {arch.teacher} or an architecture searched for "
                        f"{teacher.name}")
    n = len(teacher.layers)
    if len(arch.ops) != n:
        raise ArchError(f"the architecture has {len(arch.ops)} op keys but teacher {teacher.name} "
                        f"has {n} layers; re-run lana search with a LUT and scores of this teacher")
    if arch.layer_names and tuple(arch.layer_names) != tuple(l.name for l in teacher.layers):
        bad = next(i for i, (a, l) in enumerate(zip(arch.layer_names, teacher.layers))
                   if a != l.name) if len(arch.layer_names) == n else None
        detail = (f"layer {bad} is {arch.layer_names[bad]!r} there, {teacher.layers[bad].name!r} "
                  f"here" if bad is not None else f"{len(arch.layer_names)} names for {n} layers")
        raise ArchError(f"the architecture's layer names do not match teacher {teacher.name} "
                        f"({detail}); pass the same --selector the search used")
    pool = pool or arch.pool or None
    if pool is not None and pool not in POOLS:
        raise ArchError(f"the architecture names unknown pool {pool!r}; valid pools: "
                        f"{', '.join(POOLS)}")
    for i, (layer, key) in enumerate(zip(teacher.layers, arch.ops)):
        try:
            spec = parse_key(key)
        except ValueError as exc:
            raise ArchError(f"layer {i} ({layer.name}): {exc}") from None
        if (spec.in_shape, spec.out_shape, spec.stride) != (layer.in_shape, layer.out_shape,
                                                           layer.stride):
            raise ArchError(
                f"layer {i} ({layer.name}) maps {layer.in_shape} -> {layer.out_shape} stride "
                f"{layer.stride}, but its op {key} maps {spec.in_shape} -> {spec.out_shape} stride "
                f"{spec.stride}; the architecture was searched for another teacher or input size")
        if spec.family == "teacher":
            if spec != teacher.teacher_spec(i):
                raise ArchError(f"layer {i} ({layer.name}): teacher op {key} has signature "
                                f"{spec.param('sig')!r}, this teacher's layer has "
                                f"{layer.signature!r}; the teacher changed since the search, re-run it")
            continue
        if pool is not None:
            allowed = candidate_specs(layer.in_shape, layer.out_shape, layer.stride, pool)
            if spec not in allowed:
                raise ArchError(f"layer {i} ({layer.name}): op {key} is not in the {pool!r} pool "
                                f"of this layer (see lana ops --teacher {teacher.name} --pool "
                                f"{pool} --layer {i}); re-run lana search with a LUT of that pool")


# ---------------------------------------------------------------------------------------------
# Building


@dataclass(frozen=True)
class LayerWeights:
    """Where the weights of one student layer came from."""

    index: int  # teacher layer index
    name: str  # teacher layer module path
    op: str  # op key
    source: str  # "teacher", "none" (no parameters), "random", or the checkpoint path

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _load_op_weights(module: "nn.Module", path: Path, key: str, index: int, teacher: "Teacher",
                     pool: str) -> None:
    from lana.checkpoints import CheckpointError, load_checkpoint

    state, meta = load_checkpoint(path)
    for name, want in (("key", key), ("layer", index), ("teacher", teacher.name),
                       ("pool", pool or None)):
        have = meta.get(name)
        if want is not None and have is not None and have != want:
            raise CheckpointError(f"checkpoint {path} is for {name}={have!r}, not {want!r}; pass "
                                  f"the --pretrain directory of this teacher and pool")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit op {key} ({first}); delete it and "
                              f"re-run lana pretrain") from exc


def build_student(arch: Architecture, teacher: "Teacher", *,
                  pretrain_dir: str | Path | None = None, check: bool = True,
                  ) -> tuple["nn.Module", list[LayerWeights]]:
    """The student network of ``arch`` (eval mode) and where each layer's weights came from.

    Teacher layers keep the teacher's weights; other ops load ``pretrain_dir``'s checkpoint of
    (layer, op) when there is one and otherwise stay randomly initialised, with one
    :class:`AssemblyWarning` naming how many layers that is.
    """
    import torch

    from lana.checkpoints import op_checkpoint_path
    from lana.ops import create_op

    if check:
        check_arch(arch, teacher)
    modules: dict[int, nn.Module] = {}
    report: list[LayerWeights] = []
    random_layers: list[int] = []
    for i, (layer, key) in enumerate(zip(teacher.layers, arch.ops)):
        spec = parse_key(key)
        if spec.family == "teacher":
            report.append(LayerWeights(i, layer.name, key, "teacher"))
            continue
        # A fixed seed per (layer, op) makes an assembly without weights reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(i, key))
            module = create_op(spec)
        source = "none" if not any(True for _ in module.parameters()) and not list(
            module.buffers()) else "random"
        if source == "random" and pretrain_dir is not None:
            path = op_checkpoint_path(pretrain_dir, i, key)
            if path.is_file():
                _load_op_weights(module, path, key, i, teacher, arch.pool)
                source = str(path)
        if source == "random":
            random_layers.append(i)
        modules[i] = module.eval()
        report.append(LayerWeights(i, layer.name, key, source))
    if random_layers:
        where = (f"no checkpoint for them under {pretrain_dir} (run lana pretrain)"
                 if pretrain_dir is not None else "no --pretrain directory was given")
        warnings.warn(f"{len(random_layers)} of {len(arch.ops)} layers have random weights "
                      f"(layers {', '.join(map(str, random_layers))}): {where}; latency is "
                      f"unaffected, accuracy is not", AssemblyWarning, stacklevel=2)
    return teacher.replaced(modules), report


def _seed(index: int, key: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{index}|{key}".encode()).digest()[:4], "little")


def open_teacher(name: str, *, selector: str | None = None, input_shape: Any = None,
                 weights: str | Path | None = None, pretrained: bool = True) -> "Teacher":
    """``create_teacher`` that falls back to random weights (with a warning) when none ship.

    Latency never depends on weights, so a missing shipped weights file must not stop assembly or
    validation; a weights file the user names must exist.
    """
    from lana.teachers import WeightsError, create_teacher

    if weights is not None or not pretrained:
        return create_teacher(name, selector=selector, weights=weights, pretrained=pretrained,
                              input_shape=input_shape)
    try:
        teacher = create_teacher(name, selector=selector, pretrained=True, input_shape=input_shape)
    except WeightsError as exc:
        warnings.warn(f"{exc}; the teacher's layers, stem and head have random weights",
                      AssemblyWarning, stacklevel=2)
        return create_teacher(name, selector=selector, pretrained=False, input_shape=input_shape)
    if not teacher.pretrained:
        warnings.warn(f"teacher {name} has no weights here (pass --teacher-weights FILE); its "
                      f"layers, stem and head have random weights", AssemblyWarning, stacklevel=2)
    return teacher


# ---------------------------------------------------------------------------------------------
# Saving and loading students


def _is_deployed(model: "nn.Module") -> bool:
    return any(getattr(m, "fused", None) is not None for m in model.modules()
               if callable(getattr(m, "fuse", None)))


def _teacher_record(teacher: "Teacher") -> dict[str, Any]:
    return {"name": teacher.name, "selector": teacher.selector,
            "input_shape": list(teacher.input_shape), "num_classes": teacher.num_classes,
            "weights": teacher.weights}


def save_student(model: "nn.Module", arch: Architecture, teacher: "Teacher", path: str | Path,
                 *, weights: Sequence[LayerWeights] = (), **meta: Any) -> Path:
    """Write ``{"arch", "state_dict", "teacher", "weights", "deployed", ...}`` atomically."""
    import io

    import torch

    path = Path(path)
    payload = {"schema": STUDENT_SCHEMA, "arch": arch.to_dict(),
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "teacher": _teacher_record(teacher), "deployed": _is_deployed(model),
               "weights": [w.to_dict() for w in weights], **meta}
    buf = io.BytesIO()
    torch.save(payload, buf)
    from lana.atomic import write_bytes

    write_bytes(path, buf.getvalue())
    return path


def read_student(path: str | Path) -> dict[str, Any]:
    """The payload of a ``student.pt`` (checked, tensors on the CPU)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArchError(f"student file {path} does not exist; make one with lana assemble "
                        f"--arch ARCH --out DIR")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        raise ArchError(f"cannot read student file {path} ({type(exc).__name__}); re-run lana "
                        f"assemble") from exc
    if not isinstance(payload, dict) or "arch" not in payload or "state_dict" not in payload:
        raise ArchError(f"{path} is not a student file (no 'arch'/'state_dict'); pass the "
                        f"student.pt written by lana assemble")
    return payload


def load_student(path: str | Path, *, deploy: bool = False) -> "nn.Module":
    """Rebuild the student saved in ``path`` from that file alone (eval mode).

    The teacher is rebuilt without weights (every tensor comes from the file), the ops from their
    keys, and the state_dict is loaded strictly.  ``deploy`` fuses re-parameterisable blocks.
    """
    from lana.ops import deploy as deploy_module

    payload = read_student(path)
    model, _ = _rebuild(payload, where=str(path))
    return deploy_module(model) if deploy else model


def student_architecture(path: str | Path) -> Architecture:
    """The architecture a ``student.pt`` was assembled from."""
    return Architecture.from_dict(read_student(path)["arch"], f"student file {path}")


def _rebuild(payload: Mapping[str, Any], where: str) -> tuple["nn.Module", "Teacher"]:
    from lana.ops import create_op
    from lana.ops import deploy as deploy_module
    from lana.teachers import create_teacher

    arch = Architecture.from_dict(payload["arch"], f"the architecture in {where}")
    record = payload.get("teacher") or {}
    teacher = create_teacher(record.get("name", arch.teacher), selector=record.get("selector"),
                             pretrained=False, input_shape=record.get("input_shape"))
    check_arch(arch, teacher)
    modules = {i: create_op(parse_key(key)) for i, key in enumerate(arch.ops)
               if parse_key(key).family != "teacher"}
    model = teacher.replaced(modules)
    if payload.get("deployed"):
        deploy_module(model)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArchError(f"the weights in {where} do not fit its architecture ({first}); the op "
                        f"code changed since it was saved, re-run lana assemble") from exc
    return model.eval(), teacher


# ---------------------------------------------------------------------------------------------
# The assemble stage


@dataclass(frozen=True)
class Assembly:
    """What :func:`assemble` wrote."""

    arch: Architecture
    out_dir: Path
    arch_path: Path
    student_path: Path
    onnx_path: Path | None
    weights: tuple[LayerWeights, ...]
    input_shape: tuple[int, int, int]

    @property
    def random_layers(self) -> list[int]:
        return [w.index for w in self.weights if w.source == "random"]

    def to_dict(self) -> dict[str, Any]:
        return {"teacher": self.arch.teacher, "pool": self.arch.pool,
                "arch": str(self.arch_path), "student": str(self.student_path),
                "onnx": str(self.onnx_path) if self.onnx_path else None,
                "input_shape": list(self.input_shape), "random_layers": self.random_layers,
                "layers": [w.to_dict() for w in self.weights]}


def assemble(arch: Architecture | str | Path, out_dir: str | Path, *, teacher: str | None = None,
             pretrain_dir: str | Path | None = None, teacher_weights: str | Path | None = None,
             selector: str | None = None, input_shape: Any = None, index: int | None = None,
             onnx: bool = True) -> Assembly:
    """Build the student of ``arch`` and write it to ``out_dir`` (see the module docstring)."""
    from lana.export import export_onnx
    from lana.atomic import write_text
    from lana.ops import deploy
    from lana.pretrain import check_manifest, read_manifest
    from lana.teachers import recorded_layout

    if not isinstance(arch, Architecture):
        arch = _with_budget(*read_arch_budget(arch, index))
    if teacher is not None and teacher != arch.teacher:
        raise ArchError(f"the architecture is for teacher {arch.teacher!r}, not {teacher!r}; "
                        f"pass --teacher {arch.teacher} or an architecture searched for {teacher}")
    if pretrain_dir is not None:
        if not Path(pretrain_dir).is_dir():
            what = "is a file" if Path(pretrain_dir).exists() else "does not exist"
            raise ArchError(f"pretrain directory {pretrain_dir} {what}; pass the --out directory "
                            f"of lana pretrain, or leave --pretrain out for random weights")
    # a folder lana pretrain did not write is refused before the teacher is built
    manifest = read_manifest(pretrain_dir) if pretrain_dir is not None else None
    selector, input_shape = recorded_layout(arch.teacher, manifest, selector, input_shape)
    t = open_teacher(arch.teacher, selector=selector, input_shape=input_shape,
                     weights=teacher_weights)
    if manifest is not None and t.pretrained:
        check_manifest(manifest, pretrain_dir, t)  # ops distilled from other teacher weights
    check_arch(arch, t)
    if not arch.layer_names:
        arch = arch.replace(layer_names=tuple(l.name for l in t.layers))
    out = Path(out_dir)
    _prepare_out(out)
    model, weights = build_student(arch, t, pretrain_dir=pretrain_dir, check=False)
    names = ("arch.json", "student.pt", *(("student.onnx",) if onnx else ()), "assembly.json")
    result = Assembly(arch, out, out / "arch.json", out / "student.pt",
                      out / "student.onnx" if onnx else None, tuple(weights), t.input_shape)
    stage = out / f"{_STAGE}{os.getpid()}" if out.is_dir() else (
        out.parent / f".{out.name}.{_STAGE[1:]}{os.getpid()}")
    try:
        stage.mkdir(parents=True)
        write_arch(arch, stage / "arch.json")
        save_student(model, arch, t, stage / "student.pt", weights=weights)
        if onnx:
            export_onnx(deploy(copy.deepcopy(model)), (1, *t.input_shape), stage / "student.onnx",
                        dynamic_batch=True)
        write_text(stage / "assembly.json", json.dumps(result.to_dict(), indent=1) + "\n")
        with _signals_held():
            if not out.is_dir():
                stage.rename(out)  # out did not exist: the whole folder appears at once
            else:
                ready = stage.with_name(stage.name + _READY)
                stage.rename(ready)  # complete: an assemble killed from here on is finished later
                stage = ready
                _commit(ready, out, names)
    except BaseException:
        if not stage.name.endswith(_READY):  # a complete set stays for the next run to move in
            shutil.rmtree(stage, ignore_errors=True)
        raise
    return result


def _with_budget(arch: Architecture, label: str | None) -> Architecture:
    """``arch`` holding the budget as the search was given it (``"0.5x"``), from ``label`` (what
    the file it came from records around it, a search report's target), so ``lana validate`` of
    the assembled ``arch.json`` judges that budget rather than its predicted limit."""
    from lana.validate import arch_budget

    if arch.extra.get("budget") is not None or "selection" in arch.extra:
        return arch
    given = arch_budget(arch, label)
    return arch.replace(extra={**arch.extra, "budget": given}) if given is not None else arch


# What assemble writes into <out>, in the order a new set replaces the old one (manifest last).
_OWNED = ("arch.json", "student.pt", "student.onnx", "assembly.json")
_STAGE = ".assemble-"  # <out>/.assemble-<pid>: a set being written
_READY = ".ready"  # <out>/.assemble-<pid>.ready: a complete set being moved into <out>


def _prepare_out(out: Path) -> None:
    """Finish or discard what an assemble that was killed left in (or beside) ``out``; refuse an
    ``out`` that is a file, or one holding a folder where assemble writes a file."""
    if out.exists() and not out.is_dir():
        raise LanaError(f"--out {out} is a file, not a folder; name a folder, e.g. student")
    for name in _OWNED:
        if (out / name).is_dir():
            raise LanaError(f"{out / name} is a folder, but lana assemble writes a file there; "
                            f"move it away or pass another --out")
    places = ([(out, _STAGE)] if out.is_dir() else []) + (
        [(out.parent, f".{out.name}.{_STAGE[1:]}")] if out.name and out.parent.is_dir() else [])
    for folder, prefix in places:
        for stage in folder.iterdir():
            if not stage.name.startswith(prefix):
                continue
            pid = stage.name[len(prefix):].removesuffix(_READY)
            if not pid.isdigit() or not stage.is_dir() or _running(int(pid)):
                continue
            if folder == out and stage.name.endswith(_READY):
                with _signals_held():
                    _commit(stage, out)
            else:
                shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, out: Path, names: Sequence[str] | None = None) -> None:
    """Move the complete set in ``stage`` over the one in ``out`` and remove ``stage``.

    ``names`` are the set's files; None reads them from the staged manifest (a commit that was
    killed part way: what has been moved already is skipped).  SIGINT and SIGTERM are held by the
    caller, so only a kill splits the renames, and the next assemble completes them.
    """
    manifest = stage / "assembly.json"
    if names is None and manifest.is_file():
        with contextlib.suppress(ValueError, OSError):
            onnx = json.loads(manifest.read_text()).get("onnx")
            names = [n for n in _OWNED if n != "student.onnx" or onnx]
    if names is not None and manifest.is_file():
        for name in _OWNED:
            if name not in names:
                (out / name).unlink(missing_ok=True)  # an older set's file (student.onnx)
        for name in names:
            if (stage / name).exists():
                os.replace(stage / name, out / name)
    shutil.rmtree(stage, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (one that may still be writing its set)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver the first one that came
    (main thread only: other threads do not receive them)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            if hasattr(signal, name):
                sig = getattr(signal, name)
                previous[sig] = signal.signal(sig, lambda signum, frame: came.append(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if came:
            signal.raise_signal(came[0])


__all__ = ["ARCH_SCHEMA", "ArchError", "Architecture", "Assembly", "AssemblyWarning",
           "LayerWeights", "assemble", "build_student", "check_arch", "load_student",
           "open_teacher", "read_arch", "read_student", "save_student", "student_architecture",
           "teacher_architecture", "write_arch"]

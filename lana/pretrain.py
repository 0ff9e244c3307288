"""Layer-wise distillation of every candidate op (paper Eq. 2): each op learns to mimic its layer.

For every teacher layer i and candidate op j, ``s_ij`` is trained to map the teacher's input to
that layer, ``x_{i-1}``, to the teacher layer's output ``t_i(x_{i-1})`` under an MSE loss.  The
N x M problems are independent, so one no-grad teacher forward pass (with hooks on every layer)
feeds all layers at once, and several ops per layer train on the same captured features
(``ops_per_pass``): the whole pool costs about ``M / ops_per_pass`` passes of ``epochs`` epochs.
Batch norm inside candidate ops trains normally (batch statistics, running averages updated).

The teacher op needs no training (it is the teacher's layer) and parameter-free ops such as
identity have nothing to learn; every other op gets one checkpoint, written with
:func:`lana.checkpoints.save_checkpoint` at ``op_checkpoint_path(out, layer, key)`` with metadata
``teacher``, ``pool``, ``key``, ``layer`` (index), ``layer_name``, ``teacher_digest``, ``val_mse``.
``<out>/pretrain.json`` summarises the run::

    {"schema": "lana.pretrain/1", "teacher": T, "pool": P, "teacher_digest": sha256 of the
     teacher's weights, "selector": the layer glob, "input_shape": [C, H, W], "data": source,
     "epochs": E, "batch_size": B, "lr": LR, "images": N, "seed": S, "complete": bool,
     "layers": [{"index": i, "name": layer name,
                 "ops": {op_key: {"status": "teacher" | "no-weights" | "trained" | "pending",
                                  "file": path relative to out, "val_mse": MSE on held-out images,
                                  "rel_mse": val_mse / mean square of the teacher output, ...}}}]}

The manifest is rewritten after every pass.  While a pass runs, its state (every op it trains,
the optimiser, the epoch and step reached) is kept in ``<out>/pass-<digest>.pt``, written
atomically at the end of every epoch and every :data:`PASS_CHECKPOINT_SECONDS` within one, and
removed once the pass's op checkpoints are written.

An interrupted run resumes with ``resume=True``: ops whose checkpoint is there are skipped, an
unfinished pass continues from where its pass checkpoint stopped (as an uninterrupted pass would
have run), and settings left out take the values the manifest recorded; a checkpoint that is
corrupt, or from another teacher, pool or op, and settings or an input shape other than the
recorded ones are errors naming the fix.

Several processes (``torchrun --nproc_per_node 2 -m lana pretrain ...``) split the (layer, op)
problems between them by estimated cost (FLOPs): the problems share no weights, so no gradient is
ever exchanged, every rank writes its own checkpoints, and the only duplicated work is the cheap
no-grad teacher forward.  Sharding the data instead would need an all-reduce of every op's
gradients at every step for the same result.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import itertools
import json
import math
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lana.defaults import (
    PRETRAIN_EPOCHS as DEFAULT_EPOCHS,
    PRETRAIN_BATCH_SIZE as DEFAULT_BATCH_SIZE,
    PRETRAIN_LR as DEFAULT_LR,
)
from lana.distributed import (Split, all_gather_objects, as_split, autocast, barrier,
                              grad_scaler, iter_batches, num_batches, place, place_module,
                              progress_bar, setup, shard_balanced, teardown)
from lana.errors import LanaError, read_json_file
from lana.spec import OpSpec

if TYPE_CHECKING:
    from lana.teachers import Teacher

SCHEMA = "lana.pretrain/1"
MANIFEST = "pretrain.json"
PASS_SCHEMA = "lana.pretrain-pass/1"
PASS_GLOB = "pass-*.pt"
PASS_CHECKPOINT_SECONDS = 300.0  # within an epoch, the most training an interruption can lose
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_EVAL_IMAGES = 256
DEFAULT_SEED = 0


class PretrainError(LanaError):
    """A pretraining run or directory that cannot be used as asked."""


# ---------------------------------------------------------------------------------------------
# Teacher and data, shared by every training stage


def recorded_header(pretrain: str | Path | None) -> dict | None:
    """The manifest of the pretraining in ``pretrain`` as written, or None (none or unreadable:
    :func:`read_manifest` reports why where it matters)."""
    path = Path(pretrain) / MANIFEST if pretrain is not None else None
    if path is None or not path.is_file():
        return None
    with contextlib.suppress(ValueError, OSError):
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else None
    return None


def open_teacher(teacher: "str | Teacher", weights: str | Path | None = None, *,
                 selector: str | None = None, input_shape: Any = None,
                 pretrain: str | Path | None = None) -> "Teacher":
    """A :class:`~lana.teachers.Teacher` from a name (shipped weights) or as given.

    A user module's ``selector`` and ``input_shape`` default to those ``pretrain`` (a directory
    written by :func:`pretrain`) recorded.
    """
    from lana.teachers import Teacher, create_teacher, recorded_layout

    if isinstance(teacher, Teacher):
        return teacher
    selector, input_shape = recorded_layout(str(teacher), recorded_header(pretrain), selector,
                                            input_shape)
    t = create_teacher(str(teacher), weights=weights, selector=selector, input_shape=input_shape)
    if not t.pretrained:
        from lana.teachers import is_user_module

        how = ("load them in the factory" if is_user_module(str(teacher))
               else "train it with lana train-teacher")
        raise PretrainError(f"teacher {teacher} has no trained weights; pass a weights file "
                            f"(weights=... / --teacher-weights) or {how}")
    return t


_DIGESTS: "weakref.WeakKeyDictionary[Teacher, str]" = weakref.WeakKeyDictionary()


def teacher_digest(teacher: "Teacher") -> str:
    """SHA-256 (16 hex) of the teacher's parameters and buffers: other weights, other digest.

    Computed once per :class:`~lana.teachers.Teacher` (its weights are fixed once loaded).
    """
    cached = _DIGESTS.get(teacher)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for name, t in sorted(teacher.model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[:16]
    _DIGESTS[teacher] = digest
    return digest


@dataclass(frozen=True)
class Splits:
    """The data splits of one run, checked against the teacher."""

    train: Split  # augmented training images
    val: Split  # held-out images (reported top-1, held-out MSE)
    calib: Split  # labelled subset of train without augmentation (scoring, selection)
    num_classes: int
    source: str  # "digits" or the data directory


def load_splits(data: Any, teacher: "Teacher", seed: int = 0) -> Splits:
    """``lana.data.load_data`` for ``teacher``'s input shape, checked against its head.

    ``data`` may also be an already loaded bundle (anything with ``train`` and ``val``).
    """
    if hasattr(data, "train") and hasattr(data, "val"):
        bundle = data
    else:
        from lana.data import load_data

        bundle = load_data(data, teacher.input_shape, seed=seed)
    n_classes = int(getattr(bundle, "num_classes", 0) or 0)
    if n_classes and n_classes != teacher.num_classes:
        raise PretrainError(f"the data has {n_classes} classes but teacher {teacher.name}'s head "
                            f"has {teacher.num_classes} outputs; pass data with "
                            f"{teacher.num_classes} classes or a teacher trained on this data")
    train = as_split(bundle.train, "train")
    val = as_split(bundle.val, "val")
    calib_src = getattr(bundle, "calib", None)
    calib = as_split(calib_src, "calib").plain() if calib_src is not None else train.plain()
    for name, split in (("train", train), ("val", val), ("calib", calib)):
        if len(split) == 0:
            raise PretrainError(f"the {name} split of {getattr(bundle, 'source', data)} is empty; "
                                f"add images to it")
        if split.images is not None and tuple(split.images.shape[1:]) != teacher.input_shape:
            raise PretrainError(f"the {name} images are {tuple(split.images.shape[1:])}, teacher "
                                f"{teacher.name} takes {teacher.input_shape}; resize the data")
        if split.labels is not None:
            top = int(split.labels.max())
            if top >= teacher.num_classes or int(split.labels.min()) < 0:
                raise PretrainError(f"the {name} split has label {top}, teacher {teacher.name} "
                                    f"has {teacher.num_classes} classes; fix the labels")
    return Splits(train, val, calib, n_classes or teacher.num_classes,
                  str(getattr(bundle, "source", data)))


# ---------------------------------------------------------------------------------------------
# Ops and their checkpoints


def op_seed(index: int, key: str) -> int:
    """The init seed of op ``key`` at layer ``index`` (the one assembly uses for random weights)."""
    return int.from_bytes(hashlib.sha256(f"{index}|{key}".encode()).digest()[:4], "little")


def build_op(spec: OpSpec, index: int, teacher: "Teacher | None" = None) -> nn.Module:
    """A freshly initialised op (seeded per layer and key); the teacher op copies the layer."""
    from lana.ops import create_op

    if spec.family == "teacher":
        if teacher is None:
            raise PretrainError(f"op {spec.key} is a teacher layer: pass the teacher")
        return create_op(spec, teacher.layer_module(index))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(op_seed(index, spec.key))
        return create_op(spec)


def needs_training(spec: OpSpec) -> bool:
    """Whether an op has weights to distil (the teacher op and parameter-free ops do not)."""
    if spec.family == "teacher":
        return False
    from lana.ops import create_op

    with torch.device("meta"):
        module = create_op(spec)
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _check_meta(path: Path, meta: dict, expect: dict) -> None:
    for name, want in expect.items():
        have = meta.get(name)
        if have != want:
            raise PretrainError(f"checkpoint {path} is for {name}={have!r}, not {want!r}; delete "
                                f"it (or use a fresh --out) and re-run lana pretrain")


def read_op_checkpoint(path: Path, expect: dict) -> tuple[dict, dict]:
    """Load one op checkpoint, verifying its digest and that it belongs to ``expect``."""
    from lana.checkpoints import CheckpointError, load_checkpoint

    try:
        state, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise PretrainError(f"{exc}") from exc
    _check_meta(path, meta, expect)
    return state, meta


def load_op(pretrain_dir: str | Path | None, teacher: "Teacher", index: int, spec: OpSpec,
            pool: str) -> nn.Module:
    """Op ``spec`` of layer ``index`` with its distilled weights (eval mode).

    The teacher op is a copy of the teacher layer, parameter-free ops are built fresh.  With
    ``pretrain_dir`` None every op keeps its seeded random initialisation (the no-pretraining
    baseline).  A missing, corrupt or foreign checkpoint is an error naming the fix.
    """
    from lana.checkpoints import op_checkpoint_path

    module = build_op(spec, index, teacher)
    if pretrain_dir is None or not needs_training(spec):
        return module.eval()
    path = op_checkpoint_path(pretrain_dir, index, spec.key)
    if not path.is_file():
        raise PretrainError(f"no pretrained weights for op {spec.key} of layer {index} in "
                            f"{pretrain_dir}; run lana pretrain --teacher {teacher.name} --pool "
                            f"{pool} --out {pretrain_dir} --resume")
    state, _ = read_op_checkpoint(path, {"teacher": teacher.name, "pool": pool, "key": spec.key,
                                         "layer": index,
                                         "teacher_digest": teacher_digest(teacher)})
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PretrainError(f"checkpoint {path} does not fit op {spec.key} ({first}); the op code "
                            f"changed: delete it and re-run lana pretrain --resume") from exc
    return module.eval()


_JSON_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def read_manifest(pretrain_dir: str | Path, teacher: "Teacher | None" = None,
                  pool: str | None = None) -> dict:
    """``<dir>/pretrain.json``, checked against the teacher (name and weights) and pool."""
    path = Path(pretrain_dir) / MANIFEST
    if not path.is_file():
        raise PretrainError(f"{pretrain_dir} is not a pretraining directory (no {MANIFEST}); run "
                            f"lana pretrain --out {pretrain_dir} first")
    manifest = read_json_file(path, PretrainError, "pretraining manifest",
                              missing=f"run lana pretrain --out {pretrain_dir} first",
                              invalid="delete it and re-run lana pretrain --resume")
    if not isinstance(manifest, dict):
        raise PretrainError(f"{path} is not a pretraining manifest (a JSON "
                            f"{_JSON_KINDS.get(type(manifest), type(manifest).__name__)}, not an "
                            f"object); delete it and re-run lana pretrain --resume")
    if str(manifest.get("schema", "")).partition("/")[0] != SCHEMA.partition("/")[0]:
        raise PretrainError(f"{path} has schema {manifest.get('schema')!r}, expected {SCHEMA!r}; "
                            f"pass the --out directory of lana pretrain")
    return check_manifest(manifest, pretrain_dir, teacher, pool)


def check_manifest(manifest: dict, pretrain_dir: str | Path, teacher: "Teacher | None" = None,
                   pool: str | None = None) -> dict:
    """``manifest`` (read by :func:`read_manifest` from ``pretrain_dir``), refused when its ops
    were distilled from another teacher (name, layers or weights) or another pool."""
    if teacher is not None:
        if manifest.get("teacher") != teacher.name:
            raise PretrainError(f"{pretrain_dir} holds ops distilled from teacher "
                                f"{manifest.get('teacher')!r}, not {teacher.name!r}; pass the "
                                f"matching --teacher or --pretrain directory")
        if manifest.get("selector") not in (None, teacher.selector):
            raise PretrainError(f"{pretrain_dir} holds ops of the layers selected by "
                                f"{manifest.get('selector')!r}, not {teacher.selector!r}; pass "
                                f"--selector {manifest.get('selector')!r} or re-run lana pretrain "
                                f"with a fresh --out")
        if manifest.get("teacher_digest") not in (None, teacher_digest(teacher)):
            raise PretrainError(f"{pretrain_dir} was distilled from other weights of teacher "
                                f"{teacher.name}; re-run lana pretrain with a fresh --out")
    if pool is not None and manifest.get("pool") != pool:
        fix = ("leave --pretrain out: the single-shot pool has nothing to distil" if
               pool == "single-shot" else
               f"pass a --pretrain folder of that pool (lana pretrain --pool {pool} --out DIR)")
        raise PretrainError(f"{pretrain_dir} holds the {manifest.get('pool')!r} pool, not "
                            f"{pool!r}; {fix}")
    return manifest


# ---------------------------------------------------------------------------------------------
# Capturing the teacher's layer inputs and outputs


class _StopForward(Exception):
    """Raised by the last hook that is needed: the rest of the teacher need not run."""


class LayerTaps:
    """Forward hooks on teacher layers recording each layer's input and output of one forward.

    ``run(x)`` returns ``{layer index: (input, output)}``.  The forward stops after the deepest
    tapped layer; tensors are cloned so a later in-place op cannot change them.
    """

    def __init__(self, teacher: "Teacher", indices: Iterable[int]) -> None:
        self.teacher = teacher
        self.indices = sorted(set(int(i) for i in indices))
        self.captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> "LayerTaps":
        last = self.indices[-1] if self.indices else None
        for i in self.indices:
            module = self.teacher.layer_module(i)

            def hook(mod, args, output, i=i):
                self.captured[i] = (args[0].detach().clone(), output.detach().clone())
                if i == last:
                    raise _StopForward()

            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, x: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        self.captured = {}
        with torch.no_grad():
            try:
                self.teacher.model(x)
            except _StopForward:
                pass
        return self.captured


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class WorkItem:
    """One op of one layer to distil."""

    layer: int  # teacher layer index
    spec: OpSpec

    @property
    def key(self) -> str:
        return self.spec.key


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def evaluate_mse(teacher: "Teacher", modules: dict[WorkItem, nn.Module], split: Split,
                 batch_size: int, device: torch.device) -> dict[WorkItem, tuple[float, float]]:
    """Per op: (MSE to the teacher layer output, mean square of that output) on ``split``.

    The ops run in eval mode (batch norm from running statistics), as scoring uses them.
    """
    if not modules:
        return {}
    sums = {item: [0.0, 0.0, 0] for item in modules}
    was = {item: m.training for item, m in modules.items()}
    for m in modules.values():
        m.eval()
    with LayerTaps(teacher, {item.layer for item in modules}) as taps, torch.no_grad():
        for x, _ in iter_batches(split.plain(), batch_size):
            captured = taps.run(place(x, device))
            for item, m in modules.items():
                xin, tout = captured[item.layer]
                with autocast(device):
                    y = m(xin)
                n = tout.shape[0]
                sums[item][0] += float(F.mse_loss(y.float(), tout.float())) * n
                sums[item][1] += float(tout.float().pow(2).mean()) * n
                sums[item][2] += n
    for item, m in modules.items():
        m.train(was[item])
    return {item: (s[0] / max(1, s[2]), s[1] / max(1, s[2])) for item, s in sums.items()}


def _describe(items: Sequence[WorkItem]) -> str:
    layers = sorted({it.layer for it in items})
    fams: dict[str, int] = {}
    for it in items:
        fams[it.spec.family] = fams.get(it.spec.family, 0) + 1
    span = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"
    return f"{span}: " + ", ".join(f"{n}x{f}" for f, n in fams.items())


def _pass_digest(items: Sequence[WorkItem]) -> str:
    names = "\n".join(f"{it.layer}|{it.key}" for it in items)
    return hashlib.sha1(names.encode()).hexdigest()[:16]


def pass_number(items: Sequence[WorkItem]) -> int:
    """The ``pass_index`` of :func:`train_ops` for a pass of ``items``: fixed by its ops, so a
    resumed run trains each pass on the same data order as an uninterrupted one."""
    return int(_pass_digest(items)[:6], 16)


def pass_checkpoint_path(out: str | Path, items: Sequence[WorkItem]) -> Path:
    """Where the unfinished pass training ``items`` keeps its state (named by its ops)."""
    return Path(out) / f"pass-{_pass_digest(items)}.pt"


def read_pass_checkpoint(path: Path, meta: dict) -> dict:
    """The state :func:`train_ops` left in ``path``, checked to belong to the run ``meta`` names.

    ``items`` comes back as ``(layer, key)`` pairs, in the pass's order.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        items = [(int(layer), str(key)) for layer, key in state["items"]]
        schema, recorded = state["schema"], state["meta"]
    except Exception as exc:  # a truncated or foreign file: never reuse it silently
        raise PretrainError(f"pass checkpoint {path} is unreadable ({type(exc).__name__}); delete "
                            f"it (its ops start over) and re-run lana pretrain --resume") from exc
    if schema != PASS_SCHEMA or recorded != meta:
        raise PretrainError(f"pass checkpoint {path} belongs to another pretraining (teacher, "
                            f"data or settings); delete it (its ops start over) and re-run lana "
                            f"pretrain --resume")
    state["items"] = items
    return state


def train_ops(teacher: "Teacher", items: Sequence[WorkItem], train: Split, *, epochs: int,
              batch_size: int, lr: float, weight_decay: float, device: torch.device,
              seed: int = 0, pass_index: int = 0,
              step_callback: Callable[[str], None] | None = None,
              checkpoint: Path | None = None, meta: dict | None = None,
              state: dict | None = None,
              ) -> tuple[dict[WorkItem, nn.Module], dict[WorkItem, float]]:
    """Distil ``items`` together for ``epochs`` epochs of ``train`` (one pass).

    One no-grad teacher forward per batch captures every needed layer's input and output; each
    op's MSE is back-propagated layer by layer (so only one layer's graphs are alive at a time)
    and one AdamW step updates all ops.  AdamW normalises each parameter's step, so summing the
    independent losses trains every op exactly as if it were trained alone.  Returns the trained
    modules (train mode) and each op's mean training MSE over the last epoch.

    The data order and augmentation are seeded by ``seed`` and ``pass_index``.  With
    ``checkpoint``, the pass's state (ops, optimiser, epoch and step reached, random state, and
    ``meta`` for :func:`read_pass_checkpoint`) is written there atomically at the end of every
    epoch and every :data:`PASS_CHECKPOINT_SECONDS` within one; ``state``, what such a file
    holds, continues the pass where it stopped, as an uninterrupted pass would have run.
    """
    modules = {it: place_module(build_op(it.spec, it.layer), device).train() for it in items}
    by_layer: dict[int, list[WorkItem]] = {}
    for it in items:
        by_layer.setdefault(it.layer, []).append(it)
    params = [p for m in modules.values() for p in m.parameters()]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = num_batches(len(train), batch_size, drop_last=True)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, total // 20)))
    scaler = grad_scaler(device)
    last_loss = {it: 0.0 for it in items}
    first_epoch, first_step, first_sums = 0, 0, [0.0] * len(items)
    if state is not None:
        try:
            for it, module_state in zip(items, state["modules"], strict=True):
                modules[it].load_state_dict(module_state, strict=True)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            first_epoch, first_step = int(state["epoch"]), int(state["step"])
            first_sums = [float(v) for v in state["sums"]]
            last_loss = dict(zip(items, (float(v) for v in state["last_loss"]), strict=True))
            rng = state["rng"]
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PretrainError(f"pass checkpoint {checkpoint} does not fit its ops ({first}); "
                                f"delete it (its ops start over) and re-run lana pretrain "
                                f"--resume") from exc

    def save(epoch: int, step: int, sums: dict[WorkItem, float]) -> None:
        from lana.atomic import write_bytes

        buf = io.BytesIO()
        torch.save({"schema": PASS_SCHEMA, "meta": meta,
                    "items": [[it.layer, it.key] for it in items], "pass_index": pass_index,
                    "epoch": epoch, "step": step, "sums": [sums[it] for it in items],
                    "last_loss": [last_loss[it] for it in items],
                    "modules": [modules[it].state_dict() for it in items],
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "rng": torch.get_rng_state()}, buf)
        write_bytes(checkpoint, buf.getvalue())

    saved_at = time.monotonic()
    with torch.random.fork_rng(devices=[]), LayerTaps(teacher, by_layer) as taps:
        torch.manual_seed(int(seed) * 100003 + int(pass_index))  # the augmentation's draws
        for epoch in range(first_epoch, epochs):
            resuming = state is not None and epoch == first_epoch
            sums = dict(zip(items, first_sums)) if resuming else {it: 0.0 for it in items}
            count = first_step if resuming else 0
            batches = iter_batches(train, batch_size, shuffle=True, seed=seed,
                                   epoch=pass_index * 1000 + epoch, drop_last=True,
                                   augment=True)
            if resuming:
                for _ in itertools.islice(batches, first_step):  # trained before the checkpoint
                    pass
                torch.set_rng_state(rng)
            for x, _ in batches:
                with autocast(device):
                    captured = taps.run(place(x, device))
                opt.zero_grad(set_to_none=True)
                for layer, layer_items in by_layer.items():
                    xin, tout = captured[layer]
                    loss = 0.0
                    with autocast(device):
                        for it in layer_items:
                            mse = F.mse_loss(modules[it](xin).float(), tout.float())
                            sums[it] += float(mse.detach())
                            loss = loss + mse
                    scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                count += 1
                if step_callback is not None:
                    step_callback(f"epoch {epoch + 1}/{epochs}")
                if (checkpoint is not None and count < steps_per_epoch
                        and time.monotonic() - saved_at >= PASS_CHECKPOINT_SECONDS):
                    save(epoch, count, sums)
                    saved_at = time.monotonic()
            last_loss = {it: s / max(1, count) for it, s in sums.items()}
            bad = [it.key for it, v in last_loss.items() if not math.isfinite(v)]
            if bad:
                raise PretrainError(f"distillation diverged for {len(bad)} op(s) (e.g. {bad[0]}); "
                                    f"lower --lr (now {lr:g}) and re-run with a fresh --out")
            if checkpoint is not None:
                save(epoch + 1, 0, {it: 0.0 for it in items})
                saved_at = time.monotonic()
    return modules, last_loss


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    from lana.atomic import write_text

    write_text(path, json.dumps(data, indent=1) + "\n")


def _flops_cost(spec: OpSpec) -> float:
    try:
        from lana.pool import op_stats

        return float(op_stats(spec)[1]) + 1e5
    except Exception:  # a cost estimate only balances ranks; never fail the run on it
        return 1e6


def _recorded(manifest: dict | None, name: str, kind: type | tuple[type, ...]) -> Any:
    """``manifest[name]`` when it is a ``kind`` (a damaged value counts as not recorded)."""
    value = manifest.get(name) if manifest is not None else None
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _setting(given: Any, manifest: dict | None, name: str, kind: type | tuple[type, ...],
             default: Any) -> Any:
    """``given``, else the value ``manifest`` recorded as ``name``, else ``default``."""
    if given is not None:
        return given
    value = _recorded(manifest, name, kind)
    return default if value is None else value


def _recorded_shape(manifest: dict | None) -> tuple[int, ...] | None:
    shape = _recorded(manifest, "input_shape", list)
    if shape and all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        return tuple(shape)
    return None


def _same_data(recorded: str, source: str) -> bool:
    """Whether two data sources are the same (a directory named by another path counts)."""
    if recorded == source:
        return True
    a, b = Path(recorded), Path(source)
    return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()


def pretrain(teacher: "str | Teacher", pool: str = "small", data: Any = None,
             out: str | Path = "run/pretrain", *, epochs: int | None = None,
             ops_per_pass: int | None = None, resume: bool = False,
             batch_size: int | None = None, lr: float | None = None,
             weight_decay: float = DEFAULT_WEIGHT_DECAY, images: int | None = None,
             eval_images: int = DEFAULT_EVAL_IMAGES, measure_init: bool = False,
             device: str | None = None, seed: int | None = None,
             layers: Sequence[int] | None = None,
             teacher_weights: str | Path | None = None, selector: str | None = None,
             input_shape: Any = None, progress: bool = True) -> dict:
    """Distil every candidate op of ``pool`` from ``teacher`` and write ``out`` (see module doc).

    ``images`` caps the training images (a quick run), ``layers`` restricts the layers trained,
    ``ops_per_pass`` bounds how many ops per layer train in one pass (memory; default all),
    ``measure_init`` also records each op's held-out MSE before training.  ``selector`` and
    ``input_shape`` are a user module's.  On ``resume``, ``data``, ``epochs``, ``batch_size``,
    ``lr``, ``images``, ``seed``, ``ops_per_pass`` and ``input_shape`` left None take the values
    ``out`` recorded (else :data:`DEFAULT_EPOCHS`, ... and all images); a value other than the
    recorded one is refused, as the ops trained so far were distilled with it.  Returns the
    manifest.
    """
    from lana.checkpoints import op_checkpoint_path, save_checkpoint
    from lana.ops import POOLS
    from lana.pool import build_pool

    out = Path(out)
    manifest_path = out / MANIFEST
    old = read_manifest(out) if manifest_path.is_file() else None
    recorded = old if resume else None
    epochs = _setting(epochs, recorded, "epochs", int, DEFAULT_EPOCHS)
    batch_size = _setting(batch_size, recorded, "batch_size", int, DEFAULT_BATCH_SIZE)
    lr = _setting(lr, recorded, "lr", (int, float), DEFAULT_LR)
    seed = _setting(seed, recorded, "seed", int, DEFAULT_SEED)
    images = _setting(images, recorded, "images", int, None)
    ops_per_pass = _setting(ops_per_pass, recorded, "ops_per_pass", int, None)
    if input_shape is None:
        input_shape = _recorded_shape(recorded)
    recorded_data = _recorded(recorded, "data", str)
    if data is None and recorded_data not in (None, "digits") and Path(recorded_data).is_dir():
        data = recorded_data
    if epochs < 1:
        raise PretrainError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise PretrainError(f"--batch-size must be at least 1, got {batch_size}")
    if ops_per_pass is not None and ops_per_pass < 1:
        raise PretrainError(f"--ops-per-pass must be at least 1, got {ops_per_pass}")
    if pool not in POOLS:
        raise PretrainError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
    info = setup(device)
    try:
        t = open_teacher(teacher, teacher_weights, selector=selector, input_shape=input_shape,
                         pretrain=out)
        place_module(t.model, info.device).eval()
        digest = teacher_digest(t)
        if old is not None:
            if old.get("teacher") != t.name or old.get("pool") != pool or old.get(
                    "teacher_digest") != digest or old.get("selector") not in (None, t.selector):
                raise PretrainError(
                    f"{out} holds a pretraining of teacher {old.get('teacher')!r} (pool "
                    f"{old.get('pool')!r}, layers {old.get('selector')!r}, weights "
                    f"{old.get('teacher_digest')}); pass a fresh --out")
            if not resume:
                raise PretrainError(f"{out} already holds a pretraining; pass --resume to "
                                    f"continue it or a fresh --out to start over")
            shape = _recorded_shape(old)
            if shape is not None and shape != tuple(t.input_shape):
                raise PretrainError(f"{out} holds a pretraining at input shape "
                                    f"{','.join(map(str, shape))}, not "
                                    f"{','.join(map(str, t.input_shape))}; leave --input-shape "
                                    f"out or pass a fresh --out")
        elif not resume and out.is_dir() and (any(out.glob("layer*/*.pt"))
                                              or any(out.glob(PASS_GLOB))):
            raise PretrainError(f"{out} already holds op checkpoints; pass --resume to continue "
                                f"or a fresh --out to start over")
        splits = load_splits(data, t, seed)
        train = splits.train.subset(images, seed)
        val = splits.val.plain().subset(eval_images, seed)
        if recorded is not None:
            if recorded_data is not None and not _same_data(recorded_data, splits.source):
                raise PretrainError(f"{out} was pretrained on data {recorded_data}, not "
                                    f"{splits.source}; pass --data {recorded_data} or a fresh "
                                    f"--out")
            now = {"epochs": epochs, "images": len(train), "batch_size": batch_size, "lr": lr,
                   "seed": seed}
            differ = [name for name, value in now.items()
                      if recorded.get(name) is not None and recorded.get(name) != value]
            if differ:
                given = " ".join(f"--{name.replace('_', '-')} {recorded[name]}" for name in differ)
                raise PretrainError(f"{out} was pretrained with {given}; resume with the same "
                                    f"values (or leave them out to use them) or pass a fresh "
                                    f"--out")
        pools = build_pool(t, pool)
        wanted = set(range(len(pools))) if layers is None else {int(i) for i in layers}
        bad = sorted(i for i in wanted if not 0 <= i < len(pools))
        if bad:
            raise PretrainError(f"layer {bad[0]} does not exist; {t.name} has layers "
                                f"0..{len(pools) - 1}")

        # What each op needs: nothing (teacher, no weights), already done, or training.
        status: dict[tuple[int, str], dict] = {}
        todo: list[WorkItem] = []
        for lp in pools:
            i = lp.layer.index
            for spec in lp.specs:
                key = spec.key
                if spec.family == "teacher":
                    status[(i, key)] = {"status": "teacher"}
                    continue
                if not needs_training(spec):
                    status[(i, key)] = {"status": "no-weights"}
                    continue
                path = op_checkpoint_path(out, i, key)
                rel = str(path.relative_to(out))
                if path.is_file():
                    if not resume:
                        raise PretrainError(f"{out} already holds op checkpoints; pass --resume "
                                            f"to continue or a fresh --out to start over")
                    _, meta = read_op_checkpoint(path, {"teacher": t.name, "pool": pool,
                                                        "key": key, "layer": i,
                                                        "teacher_digest": digest})
                    status[(i, key)] = {"status": "trained", "file": rel,
                                        **{k: meta[k] for k in ("val_mse", "rel_mse", "train_mse",
                                                                "val_mse_init") if k in meta}}
                    continue
                status[(i, key)] = {"status": "pending", "file": rel}
                if i in wanted:
                    todo.append(WorkItem(i, spec))

        base = {"schema": SCHEMA, "teacher": t.name, "pool": pool, "teacher_digest": digest,
                "selector": t.selector, "input_shape": list(t.input_shape), "data": splits.source,
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "images": len(train),
                "seed": seed, "ops_per_pass": ops_per_pass, "world_size": info.world_size}
        # What a pass checkpoint must match to be continued.
        pass_meta = {"teacher": t.name, "pool": pool, "teacher_digest": digest,
                     "input_shape": list(t.input_shape), "epochs": epochs,
                     "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                     "images": len(train), "seed": seed}

        mine = todo
        if info.distributed:
            mine = shard_balanced(todo, [_flops_cost(it.spec) for it in todo], info.rank,
                                  info.world_size)
        # Unfinished passes whose ops are all this rank's continue first; those with an op that
        # is no longer pending are dropped; the rest wait for a run that holds all their ops.
        states: dict[Path, dict] = {}
        resumed: list[tuple[list[WorkItem], Path]] = []
        kept: dict[Path, list[tuple[int, str]]] = {}
        stale: list[Path] = []
        if resume and out.is_dir():
            free = {(it.layer, it.key): it for it in mine}
            for path in sorted(out.glob(PASS_GLOB)):
                state = read_pass_checkpoint(path, pass_meta)
                ids = state["items"]
                if any(status.get(i, {}).get("status") != "pending" for i in ids):
                    stale.append(path)
                elif ids and len(set(ids)) == len(ids) and all(i in free for i in ids):
                    resumed.append(([free.pop(i) for i in ids], path))
                    states[path] = state
                else:
                    kept[path] = ids
            mine = list(free.values())
        barrier(info)  # every rank has checked the directory before rank 0 writes to it
        if info.is_main:
            _write_json(manifest_path, _manifest(base, pools, status, complete=False))
            for path in stale:
                path.unlink(missing_ok=True)
        barrier(info)

        per_layer: dict[int, list[WorkItem]] = {}
        for it in mine:
            per_layer.setdefault(it.layer, []).append(it)
        k = ops_per_pass or max((len(v) for v in per_layer.values()), default=1)
        n_fresh = max((math.ceil(len(v) / k) for v in per_layer.values()), default=0)
        fresh = [[it for v in per_layer.values() for it in v[p * k:(p + 1) * k]]
                 for p in range(n_fresh)]
        passes = resumed + [(items, pass_checkpoint_path(out, items)) for items in fresh]
        per_epoch = num_batches(len(train), batch_size, drop_last=True)
        steps = per_epoch * epochs * n_fresh + sum(
            per_epoch * (epochs - int(states[path]["epoch"])) - int(states[path]["step"])
            for _, path in resumed)

        start = time.perf_counter()
        done: dict[tuple[int, str], dict] = {}
        bar = progress_bar(progress and info.is_main)
        with (bar if bar is not None else contextlib.nullcontext()):
            task = bar.add_task("distilling", total=steps) if bar is not None else None
            for p, (items, checkpoint) in enumerate(passes):
                label = f"pass {p + 1}/{len(passes)} · {len(items)} ops · {_describe(items)}"

                def tick(epoch_text: str, label=label) -> None:
                    if bar is not None:
                        bar.update(task, advance=1, description=f"{epoch_text} · {label}")

                init = {}
                if measure_init:
                    fresh_ops = {it: place_module(build_op(it.spec, it.layer), info.device)
                                 for it in items}
                    init = evaluate_mse(t, fresh_ops, val, 128, info.device)
                    del fresh_ops
                modules, train_mse = train_ops(
                    t, items, train, epochs=epochs, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, device=info.device, seed=seed,
                    pass_index=pass_number(items), step_callback=tick, checkpoint=checkpoint,
                    meta=pass_meta, state=states.pop(checkpoint, None))
                held_out = evaluate_mse(t, modules, val, 128, info.device)
                for it in items:
                    mse, power = held_out[it]
                    meta = {"val_mse": mse, "rel_mse": mse / max(power, 1e-12),
                            "train_mse": train_mse[it]}
                    if it in init:
                        meta["val_mse_init"] = init[it][0]
                    path = op_checkpoint_path(out, it.layer, it.key)
                    save_checkpoint(path, modules[it].state_dict(), teacher=t.name, pool=pool,
                                    key=it.key, layer=it.layer, layer_name=t.layers[it.layer].name,
                                    teacher_digest=digest, epochs=epochs, **meta)
                    done[(it.layer, it.key)] = {"status": "trained", "rank": info.rank,
                                                "file": str(path.relative_to(out)), **meta}
                del modules
                if info.is_main:  # other ranks' ops are added when every rank is done
                    _write_json(manifest_path, _manifest(base, pools, {**status, **done},
                                                         complete=False))
                checkpoint.unlink(missing_ok=True)
        seconds = time.perf_counter() - start

        for part in all_gather_objects(info, done):
            status.update(part)
        complete = all(s["status"] != "pending" for s in status.values())
        manifest = _manifest({**base, "seconds": round(seconds, 2), "created": _now()}, pools,
                             status, complete=complete)
        if info.is_main:
            _write_json(manifest_path, manifest)
            for path, ids in kept.items():
                if any(status.get(i, {}).get("status") != "pending" for i in ids):
                    path.unlink(missing_ok=True)
        barrier(info)
        return manifest
    finally:
        teardown(info)


def _manifest(base: dict, pools: list, status: dict, *, complete: bool) -> dict:
    layers = []
    for lp in pools:
        i = lp.layer.index
        layers.append({"index": i, "name": lp.layer.name,
                       "ops": {spec.key: status[(i, spec.key)] for spec in lp.specs}})
    return {**base, "complete": complete, "layers": layers}


__all__ = ["DEFAULT_EPOCHS", "LayerTaps", "MANIFEST", "PASS_CHECKPOINT_SECONDS", "PretrainError",
           "SCHEMA", "Splits", "WorkItem", "build_op", "evaluate_mse", "load_op", "load_splits",
           "needs_training", "op_seed", "open_teacher", "pass_checkpoint_path", "pass_number",
           "pretrain", "read_manifest", "read_op_checkpoint", "read_pass_checkpoint",
           "recorded_header", "teacher_digest", "train_ops"]

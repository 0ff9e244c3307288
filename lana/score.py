"""Score every pretrained op by the loss change it causes alone in the teacher (paper Eq. 3).

``a_ij = L(teacher with op j in layer i) - L(teacher)``, the mean cross-entropy on a small
labelled set (the ``calib`` split, 256 images by default).  The search minimises the sum of these
scores under a latency budget.  The teacher's activations up to layer i are computed once per batch
and reused: every layer module of the teacher is wrapped in a slot that, while op j of layer i is
scored, replays the cached teacher outputs of layers before i, runs op j at i, and the teacher's
own layers after it, so each score costs one op and the teacher suffix, not a whole network.
(The teacher's stem still runs; it is cheap.)  ``method="naive"`` runs the full network with the
op swapped in instead; both give the same numbers.

Scores file (``lana.scores/1``, JSON)::

    {"schema": "lana.scores/1",
     "teacher": "demo",                 # teacher name
     "pool": "small",                   # candidate pool
     "teacher_loss": 0.031,             # mean cross-entropy of the teacher on the scoring set
     "teacher_top1": 0.994,             # its top-1 there, in [0, 1]
     "n_samples": 500,                  # images scored on
     "teacher_digest": "...",           # the teacher weights the ops were distilled from
     "created": "2025-01-01T00:00:00+00:00",
     "layers": [{"index": 0, "name": "blocks.0.0",
                 "scores": {op_key: loss change, ...},   # teacher op 0.0; lower is better
                 "top1": {op_key: top-1 with that op alone, ...}}, ...]}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lana.defaults import (
    SCORE_SAMPLES as DEFAULT_SAMPLES,
    SCORE_BATCH_SIZE as DEFAULT_BATCH_SIZE,
)
from lana.distributed import (iter_batches, place, place_module, progress_bar,
                              resolve_device)
from lana.errors import LanaError, read_json_file

if TYPE_CHECKING:
    from lana.teachers import Teacher

SCHEMA = "lana.scores/1"


class ScoreError(LanaError):
    """A scores file or scoring run that cannot be used as asked."""


class _State:
    """What the slots of a scoring network do on the current forward pass."""

    def __init__(self) -> None:
        self.capture = True  # run the teacher, remembering every layer's output
        self.current = -1  # the layer whose op is being scored
        self.ops: list[nn.Module] = []  # the ops being scored in layer ``current``
        self.outputs: dict[int, torch.Tensor] = {}


class _Slot(nn.Module):
    """Stands in for teacher layer ``index``: replay, scored ops, or the teacher layer itself."""

    def __init__(self, index: int, layer: nn.Module, state: _State) -> None:
        super().__init__()
        self.index = index
        self.layer = layer
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.state
        if st.capture:
            y = self.layer(x)
            st.outputs[self.index] = y
            return y
        if self.index < st.current:
            y = st.outputs[self.index]
            # The input of the scored op is fresh memory, so an in-place op cannot spoil the cache.
            return y.clone() if self.index == st.current - 1 else y
        if self.index == st.current:
            # Every scored op sees the same input; their outputs are stacked along the batch, so
            # the teacher suffix runs once for all of them (eval-mode batch norm is per sample).
            return torch.cat([op(x) for op in st.ops]) if len(st.ops) > 1 else st.ops[0](x)
        return self.layer(x)


class ReuseNetwork:
    """The teacher wired for prefix reuse: ``capture(x)`` once, then ``with_ops(x, i, ops)``."""

    def __init__(self, teacher: "Teacher") -> None:
        self.state = _State()
        self.net = teacher.replaced({i: _Slot(i, teacher.layer_module(i), self.state)
                                     for i in range(len(teacher.layers))}).eval()

    @torch.no_grad()
    def capture(self, x: torch.Tensor) -> torch.Tensor:
        """Run the teacher on ``x``, caching every layer output; returns its logits."""
        st = self.state
        st.capture, st.current, st.ops, st.outputs = True, -1, [], {}
        return self.net(x)

    @torch.no_grad()
    def with_ops(self, x: torch.Tensor, index: int, ops: Sequence[nn.Module]) -> torch.Tensor:
        """Logits with each of ``ops`` alone in layer ``index``, stacked: (len(ops) * B, classes).

        ``x`` must be the batch last captured.  A teacher whose code after layer ``index`` mixes
        in earlier activations cannot take stacked outputs; pass one op at a time for it.
        """
        st = self.state
        st.capture, st.current, st.ops = False, int(index), list(ops)
        try:
            return self.net(x)
        finally:
            st.ops = []

    def with_op(self, x: torch.Tensor, index: int, op: nn.Module) -> torch.Tensor:
        """Logits with ``op`` in layer ``index`` (``x`` must be the batch last captured)."""
        return self.with_ops(x, index, [op])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def score(pretrain: str | Path | None, teacher: "str | Teacher", pool: str = "small",
          data: Any = None, out: str | Path | None = "run/scores.json", *,
          samples: int = DEFAULT_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE,
          device: str | None = None, seed: int = 0, method: str = "reuse",
          layers: Sequence[int] | None = None, teacher_weights: str | Path | None = None,
          selector: str | None = None, input_shape: Any = None, progress: bool = True) -> dict:
    """Score every op of ``pool`` distilled in ``pretrain``; write and return the scores file.

    ``pretrain`` may be None only for a pool whose ops have nothing to distil (single-shot).
    A user module's ``selector`` and ``input_shape`` default to those ``pretrain`` recorded.
    ``layers`` scores only those layer indices (an analysis; such a partial result has only those
    layers and cannot be written as a scores file).
    """
    from lana.ops import POOLS
    from lana.pool import build_pool
    from lana.pretrain import load_op, load_splits, needs_training, open_teacher, read_manifest
    from lana.pretrain import teacher_digest

    if pool not in POOLS:
        raise ScoreError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
    if method not in ("reuse", "naive"):
        raise ScoreError(f"unknown scoring method {method!r}; use 'reuse' or 'naive'")
    if samples < 1:
        raise ScoreError(f"--samples must be at least 1, got {samples}")
    if layers is not None and out is not None:
        raise ScoreError("a scoring of some layers only cannot be written as a scores file; "
                         "score all layers or pass out=None")
    dev = resolve_device(device)
    t = open_teacher(teacher, teacher_weights, selector=selector, input_shape=input_shape,
                     pretrain=pretrain)
    place_module(t.model, dev).eval()
    pools = build_pool(t, pool)
    if pretrain is not None:
        read_manifest(pretrain, t, pool)
    elif any(needs_training(s) for lp in pools for s in lp.specs):
        raise ScoreError(f"the {pool!r} pool has ops to distil; pass --pretrain DIR written by "
                         f"lana pretrain --pool {pool}")
    # Refuse a run that cannot fit before the data at this input shape is loaded: the kernel kills
    # a process that runs out of memory without a word.
    check_score_memory(estimate_score_memory(t, batch_size, samples, method=method, data=data,
                                             device=dev, pools=pools, layers=layers))
    splits = load_splits(data, t, seed)
    scoring = splits.calib.subset(samples, seed)
    wanted = set(range(len(pools))) if layers is None else {int(i) for i in layers}
    if not wanted <= set(range(len(pools))):
        raise ScoreError(f"layer {min(wanted - set(range(len(pools))))} does not exist; "
                         f"{t.name} has layers 0..{len(pools) - 1}")
    ops: list[list[tuple[str, nn.Module | None]]] = []
    for lp in pools:
        i = lp.layer.index
        if i not in wanted:
            ops.append([])
            continue
        ops.append([(s.key, None if s.family == "teacher" else
                     place_module(load_op(pretrain, t, i, s, pool), dev).eval()) for s in lp.specs])

    n_ops = sum(1 for layer in ops for _, m in layer if m is not None)
    n = len(scoring)
    loss_sum = [[0.0] * len(layer) for layer in ops]
    correct = [[0] * len(layer) for layer in ops]
    t_loss, t_correct = 0.0, 0
    reuse = ReuseNetwork(t) if method == "reuse" else None
    stack_limit = _stack_limit(t, batch_size)
    start = time.perf_counter()
    bar = progress_bar(progress)
    n_batches = math.ceil(n / batch_size)
    ctx = bar if bar is not None else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        task = bar.add_task("scoring", total=n_batches * n_ops) if bar is not None else None
        for x, y in iter_batches(scoring, batch_size):
            x, y = place(x, dev), y.to(dev)
            logits = reuse.capture(x) if reuse is not None else t.model(x)
            t_loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            t_correct += int((logits.argmax(1) == y).sum())
            for i, layer_ops in enumerate(ops):
                scored = [(j, key, m) for j, (key, m) in enumerate(layer_ops) if m is not None]
                per_chunk = max(1, stack_limit[i] // len(y)) if reuse is not None else 1
                for c in range(0, len(scored), per_chunk):
                    chunk = scored[c:c + per_chunk]
                    if reuse is not None:
                        stacked = reuse.with_ops(x, i, [m for _, _, m in chunk])
                    else:
                        stacked = t.replaced({i: chunk[0][2]})(x)
                    for (j, key, _), out_logits in zip(chunk, stacked.split(len(y))):
                        loss_sum[i][j] += float(F.cross_entropy(out_logits.float(), y,
                                                                reduction="sum"))
                        correct[i][j] += int((out_logits.argmax(1) == y).sum())
                    if bar is not None:
                        bar.update(task, advance=len(chunk), description=f"scoring layer {i} "
                                   f"({t.layers[i].name}): {chunk[-1][1].split('|')[0]}")
    teacher_loss = t_loss / n
    rows = []
    for i, layer_ops in enumerate(ops):
        scores, top1 = {}, {}
        for j, (key, module) in enumerate(layer_ops):
            if module is None:
                scores[key], top1[key] = 0.0, t_correct / n
            else:
                scores[key] = loss_sum[i][j] / n - teacher_loss
                top1[key] = correct[i][j] / n
        if i in wanted:
            rows.append({"index": i, "name": t.layers[i].name, "scores": scores, "top1": top1})
    result = {"schema": SCHEMA, "teacher": t.name, "pool": pool, "teacher_loss": teacher_loss,
              "teacher_top1": t_correct / n, "n_samples": n, "teacher_digest": teacher_digest(t),
              "method": method, "seconds": round(time.perf_counter() - start, 2),
              "created": _now(), "layers": rows}
    if out is not None:
        from lana.atomic import write_text

        write_text(Path(out), json.dumps(result, indent=1) + "\n")
    return result


def _stack_limit(teacher: "Teacher", batch_size: int) -> list[int]:
    """Per layer: how many images one stacked run of the layer's suffix may hold.

    About 256 MB of the widest activation from that layer on (times 6 for the expanded inner
    tensors of inverted-residual blocks), at least one batch: late, small layers stack many ops.
    """
    limits = []
    for i in range(len(teacher.layers)):
        widest = max(math.prod(l.out_shape) for l in teacher.layers[i:])
        limits.append(max(batch_size, min(4096, (256 << 20) // (widest * 4 * 6))))
    return limits


# Scoring memory.  A scoring run holds: the scoring images, and the data set they are drawn from
# (the embedded digits are made whole at the input shape, three copies at once while normalised);
# the teacher and every op to score, all loaded at once; every layer output of the current batch
# (the reuse cache); and the tensors alive while one layer's ops, or the teacher suffix on their
# stacked outputs, run.  A running block holds its input and two copies of its expanded inner
# tensor (the convolution's output and the batch norm's), 1 + 2 * 6 floats per element of its
# widest input or output for an expansion of 6, and its convolutions their buffers (im2col,
# layout reorders): 20 per element matches the peak resident memory measured on CPU to within
# about 15 % (demo at 32-128 px, efficientnet_b0 at 224 px, efficientnet_b3 at 300 px; small pool).
_FLOAT_BYTES = 4
_WORKING_FACTOR = 20
_DIGITS_IMAGES = 1797  # scikit-learn's digits, all held at the input shape by lana.data
_DIGITS_LOAD_COPIES = 3
MEMORY_FRACTION = 0.8  # refuse a run estimated to need more than this share of what is available


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes a scoring run is estimated to need, by what holds them, and where.

    ``cache``, ``working`` and ``params`` are on ``device``; ``data`` and ``data_load`` in host
    memory (the same memory when the device is the CPU).
    """

    cache: int  # every layer output of one batch, kept for reuse
    working: int  # the tensors of the largest single run: one layer's ops or the teacher suffix
    params: int  # the teacher, the copy of its stem and head that scores, and every op to score
    data: int  # the images held while scoring
    data_load: int  # the peak while the data set is loaded (0: loaded already, or streamed)
    device: str  # "cpu", "cuda:0", ...
    input_shape: tuple[int, ...]
    batch_size: int
    samples: int
    # The same estimate at another batch size (set by estimate_score_memory).
    at_batch: Callable[[int], "MemoryEstimate"] | None = field(default=None, repr=False,
                                                               compare=False)

    @property
    def activations(self) -> int:
        return self.cache + self.working

    @property
    def host(self) -> int:
        """Bytes of host memory at the peak (all of it on a CPU device)."""
        on_device = self.activations + self.params if self.device == "cpu" else 0
        return max(self.data_load, self.data + on_device)

    @property
    def accelerator(self) -> int:
        """Bytes of accelerator memory at the peak (0 on a CPU device)."""
        return 0 if self.device == "cpu" else self.activations + self.params


def estimate_score_memory(teacher: "Teacher", batch_size: int, samples: int = DEFAULT_SAMPLES, *,
                          method: str = "reuse", data: Any = None,
                          device: "str | torch.device" = "cpu", pools: Sequence[Any] | None = None,
                          layers: Sequence[int] | None = None) -> MemoryEstimate:
    """The peak memory :func:`score` needs for ``teacher`` at its input shape, from the traced
    per-layer activation shapes, ``batch_size`` and the ``samples`` images scored on.  Nothing is
    allocated.

    ``data`` is as given to :func:`score`: None or "digits", the embedded digits, loaded whole at
    the input shape; an object with ``train`` and ``val``, already in memory; otherwise an image
    folder, of which the calib split is read.  ``pools`` (of :func:`lana.pool.build_pool`) adds the
    parameters of the ops, and bounds how many batches one run stacks by how many ops a layer
    has; ``layers`` as in :func:`score`.
    """
    from lana.data import CALIB_SIZE

    n = max(1, int(samples))
    ins = [math.prod(l.in_shape) for l in teacher.layers]
    outs = [math.prod(l.out_shape) for l in teacher.layers]
    image = math.prod(teacher.input_shape) * _FLOAT_BYTES
    wanted = None if layers is None else {int(i) for i in layers}
    ops_per_layer, op_bytes = None, 0
    if pools is not None:
        from lana.pool import op_params

        counted: dict[str, int] = {}
        ops_per_layer = []
        for i, lp in enumerate(pools):
            specs = [s for s in lp.specs if s.family != "teacher"
                     and (wanted is None or i in wanted)]
            ops_per_layer.append(len(specs))
            for spec in specs:
                if spec.key not in counted:
                    counted[spec.key] = op_params(spec) * _FLOAT_BYTES
                op_bytes += counted[spec.key]
    params = 2 * sum(p.numel() * p.element_size() for p in teacher.model.parameters()) + op_bytes
    held, load = n * image, 0  # the scoring subset
    if hasattr(data, "train") and hasattr(data, "val"):
        pass  # a data set already in memory
    elif data is None or str(data) == "digits":
        # load_digits: all images at the input shape, normalised out of place; then the train and
        # val splits (all images again) and the calib subset stay.
        held += (_DIGITS_IMAGES + min(CALIB_SIZE, _DIGITS_IMAGES)) * image
        load = _DIGITS_LOAD_COPIES * _DIGITS_IMAGES * image
    else:
        held += CALIB_SIZE * image  # an image folder: its calib split is read into memory

    def at(batch: int) -> MemoryEstimate:
        b = min(max(1, int(batch)), n)  # no batch is larger than the scoring set
        cache = working = 0
        if not ins:
            pass
        elif method == "naive":  # the whole network on one batch per op; nothing cached
            working = b * _WORKING_FACTOR * max(max(a, o) for a, o in zip(ins, outs))
        else:
            cache = b * sum(outs)
            limits = _stack_limit(teacher, b)
            if ops_per_layer is not None:  # a stacked run holds at most all the layer's ops
                limits = [min(limit, max(1, k) * b) for limit, k in zip(limits, ops_per_layer)]
            # Scoring layer i: each op runs on the batch, the outputs of the ops before it kept
            # (``limit`` images in all); then the teacher suffix runs on the ``limit`` stacked
            # images, its widest tensor at most the widest output from layer i on.
            working = max(max(b * _WORKING_FACTOR * max(ins[i], outs[i]) + limit * outs[i],
                              limit * _WORKING_FACTOR * max(outs[i:]))
                          for i, limit in enumerate(limits))
        return MemoryEstimate(cache * _FLOAT_BYTES, working * _FLOAT_BYTES, params, held, load,
                              str(device), tuple(teacher.input_shape), int(batch), n, at)

    return at(batch_size)


def available_memory() -> int | None:
    """Bytes of host memory available to this process: ``MemAvailable`` of /proc/meminfo (Linux)
    or the free pages by ``os.sysconf``, less where a cgroup (container) limit leaves less; None
    when neither can be read."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    if available is None or available <= 0:
        return None
    room = _cgroup_room()
    return min(available, room) if room is not None else available


def _cgroup_room() -> int | None:
    """Bytes a cgroup (container) memory limit leaves: the limit less the usage, the reclaimable
    file cache not counted as used; None without a limit."""
    for folder, limit_name, usage_name, cache_key in (
            ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
             "total_inactive_file")):
        try:
            limit = (Path(folder) / limit_name).read_text().strip()
            if not limit.isdigit() or int(limit) >= 1 << 60:  # "max", or the v1 "no limit"
                continue
            usage = int((Path(folder) / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        cache = 0
        with contextlib.suppress(OSError, ValueError):
            for line in (Path(folder) / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
        return max(0, int(limit) - usage + cache)
    return None


def _accelerator_memory(device: str) -> int | None:
    """Bytes free on a CUDA device (what torch has reserved but not used included), else None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    try:
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except (RuntimeError, ValueError, AssertionError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_score_memory(estimate: MemoryEstimate, *, host: int | None = None,
                       accelerator: int | None = None,
                       fraction: float = MEMORY_FRACTION) -> None:
    """Raise :class:`ScoreError` (one line: what is too large, and the fix) when ``estimate``
    needs more than ``fraction`` of the memory available: ``host`` and ``accelerator`` bytes, read
    from the system when None; a memory that cannot be read is not checked."""
    if host is None:
        host = available_memory()
    if accelerator is None and estimate.device != "cpu":
        accelerator = _accelerator_memory(estimate.device)

    def short(e: MemoryEstimate) -> tuple[int, int, str] | None:
        """(bytes needed, bytes there, which memory) of the first memory ``e`` does not fit."""
        if accelerator is not None and e.accelerator > fraction * accelerator:
            return e.accelerator, accelerator, f"{e.device} memory"
        if host is not None and e.host > fraction * host:
            return e.host, host, "memory"
        return None

    found = short(estimate)
    if found is None:
        return
    need, have, memory = found
    shape = "x".join(str(v) for v in estimate.input_shape)
    loading = memory == "memory" and estimate.data_load >= estimate.host
    if loading:
        what = (f"loading the embedded digits at input shape {shape} needs about {_gb(need)} of "
                f"memory")
        fix = "pass a smaller --input-shape, or --data with a folder of images"
    else:
        parts = []
        if memory != "memory" or estimate.device == "cpu":
            parts += [f"layer outputs cached per batch {_gb(estimate.cache)}",
                      f"running one layer's ops {_gb(estimate.working)}",
                      f"weights {_gb(estimate.params)}"]
        if memory == "memory":
            parts.append(f"images {_gb(estimate.data)}")
        what = (f"scoring at input shape {shape} with batch size {estimate.batch_size} needs about "
                f"{_gb(need)} of {memory} ({', '.join(parts)})")
        fits, lo, hi = None, 1, estimate.batch_size - 1  # the largest batch size that fits
        while estimate.at_batch is not None and lo <= hi:
            mid = (lo + hi) // 2
            if short(estimate.at_batch(mid)) is None:
                fits, lo = mid, mid + 1
            else:
                hi = mid - 1
        if fits is not None:
            fix = f"pass --batch-size {fits} or lower, or a smaller --input-shape"
        elif memory == "memory" and 2 * _FLOAT_BYTES * estimate.samples * math.prod(
                estimate.input_shape) > need:  # mostly the scoring images themselves
            fix = "pass a smaller --input-shape or fewer --samples"
        else:
            fix = "pass a smaller --input-shape"
    raise ScoreError(f"{what}, more than {fraction:.0%} of the {_gb(have)} "
                     f"{'free' if memory != 'memory' else 'available'}; {fix}")


def read_scores(path: str | Path, *, teacher: "str | Teacher | None" = None,
                pool: str | None = None) -> dict:
    """Read a scores file, checking its schema and (when given) its teacher, weights and pool."""
    path = Path(path)
    data = read_json_file(path, ScoreError, "scores file",
                          missing=f"write it with lana score --out {path}",
                          invalid="re-run lana score")
    if not isinstance(data, dict) or str(data.get("schema", "")).partition("/")[0] != "lana.scores":
        raise ScoreError(f"{path} is not a scores file (schema {SCHEMA!r}); pass the file written "
                         f"by lana score")
    if data["schema"] != SCHEMA:
        raise ScoreError(f"{path} has schema {data['schema']}, this lana reads {SCHEMA}; re-run "
                         f"lana score")
    if not isinstance(data.get("layers"), list) or not all(
            isinstance(l, dict) and isinstance(l.get("scores"), dict) for l in data["layers"]):
        raise ScoreError(f"{path} has no per-layer scores; re-run lana score")
    if teacher is not None:
        name = teacher if isinstance(teacher, str) else teacher.name
        if data.get("teacher") != name:
            raise ScoreError(f"{path} scores teacher {data.get('teacher')!r}, not {name!r}; score "
                             f"this teacher with lana score --teacher {name}")
        if not isinstance(teacher, str):
            from lana.pretrain import teacher_digest

            if data.get("teacher_digest") not in (None, teacher_digest(teacher)):
                raise ScoreError(f"{path} scores other weights of teacher {name}; re-run lana "
                                 f"score with these weights")
            if len(data["layers"]) != len(teacher.layers):
                raise ScoreError(f"{path} has {len(data['layers'])} layers, teacher {name} has "
                                 f"{len(teacher.layers)}; re-run lana score")
    if pool is not None and data.get("pool") != pool:
        raise ScoreError(f"{path} scores the {data.get('pool')!r} pool, not {pool!r}; pass "
                         f"--pool {data.get('pool')} or re-score")
    return data


__all__ = ["DEFAULT_SAMPLES", "MemoryEstimate", "ReuseNetwork", "SCHEMA", "ScoreError",
           "available_memory", "check_score_memory", "estimate_score_memory", "read_scores",
           "score"]

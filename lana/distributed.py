"""Processes, devices and data batches for the training stages (pretrain, score, select, finetune).

One run may be a single process or several launched by ``torchrun`` (``torchrun --nproc_per_node 2
-m lana pretrain ...``): :func:`setup` reads the launcher's environment, joins the process group
(gloo on CPU, nccl on CUDA) and says which rank this process is.  Two ways of splitting work live
here: :func:`shard_balanced` deals independent work items (the (layer, op) problems of pretraining)
to ranks by estimated cost, and :func:`iter_batches` deals a data split's batches to ranks (data
parallel fine-tuning with DDP).  Splits are read from whatever :func:`lana.data.load_data` returns:
a ``TensorDataset``, an ``(images, labels)`` pair or any map-style dataset of ``(image, label)``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

import torch

from lana.errors import LanaError

T = TypeVar("T")


class DistributedError(LanaError):
    """A launcher environment or device request that cannot be honoured."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int  # 0 .. world_size-1
    world_size: int  # number of processes in the run
    local_rank: int  # index of this process on its machine (picks the CUDA device)
    device: torch.device  # where this process computes
    backend: str | None  # "gloo" or "nccl" when a process group is up, else None
    owns_group: bool = False  # this call created the process group and should destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None``/"auto" picks CUDA when visible, else CPU; "cuda" picks this process's GPU."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DistributedError(f"device {device!r} was asked for but no CUDA device is "
                                   f"visible; pass --device cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        return torch.device(name)
    if name != "cpu":
        raise DistributedError(f"unknown device {device!r}; pass cpu, cuda, cuda:N or auto")
    return torch.device("cpu")


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Join the launcher's process group when ``WORLD_SIZE`` > 1; a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    import torch.distributed as dist

    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev,
                        dist.get_backend(), owns_group=False)
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise DistributedError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset; launch with "
                               "torchrun --nproc_per_node N -m lana ...")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev, backend, owns_group=True)


def teardown(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not info.distributed:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def shard_balanced(items: Sequence[T], costs: Sequence[float], rank: int, world: int) -> list[T]:
    """The items rank ``rank`` takes when ``items`` are dealt to ``world`` ranks by cost.

    Longest-processing-time first: each item, most expensive first, goes to the rank with the least
    work so far (ties to the lowest rank), so every rank computes the same deterministic split
    without talking to the others.  Returned in the items' original order.
    """
    if len(items) != len(costs):
        raise ValueError("items and costs differ in length")
    loads = [0.0] * world
    owner = [0] * len(items)
    for idx in sorted(range(len(items)), key=lambda i: (-float(costs[i]), i)):
        r = min(range(world), key=lambda k: (loads[k], k))
        owner[idx] = r
        loads[r] += float(costs[idx])
    return [item for item, r in zip(items, owner) if r == rank]


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); a no-op on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool = True) -> "torch.amp.GradScaler":
    """A loss scaler that is active only where autocast uses float16."""
    active = (enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported())
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=active)


def place(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to ``device``; images go channels-last, which the convolutions of every
    op family run markedly faster in on CPUs (and on GPUs under mixed precision)."""
    if x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def place_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a module to ``device`` with channels-last convolution weights (see :func:`place`)."""
    return module.to(device=device, memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# Data splits


class SplitError(LanaError):
    """A data split that cannot be read as (image, label) pairs."""


@dataclass(frozen=True)
class Split:
    """A data split held as two tensors (small data) or a dataset read item by item (large data)."""

    images: torch.Tensor | None  # (N, C, H, W) float, when held in memory
    labels: torch.Tensor | None  # (N,) int64, when held in memory
    dataset: Any = None  # a map-style dataset, when not held in memory
    size: int = 0
    max_shift: int = 0  # random translation (pixels) applied to in-memory training batches

    def __len__(self) -> int:
        return self.size

    def take(self, indices: torch.Tensor,
             augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at ``indices`` (augmented where the split asks for it)."""
        if self.images is not None:
            x, y = self.images[indices], self.labels[indices]
            if augment and self.max_shift > 0:
                x = random_shift_batch(x, self.max_shift)
            return x, y
        xs, ys = [], []
        for i in indices.tolist():
            x, y = self.dataset[i]
            xs.append(torch.as_tensor(x, dtype=torch.float32))
            ys.append(int(y))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)

    def plain(self) -> "Split":
        """The same images without augmentation (for evaluation)."""
        if self.images is not None:
            return Split(self.images, self.labels, None, self.size, 0)
        with_augment = getattr(self.dataset, "with_augment", None)
        return Split(None, None, with_augment(False) if callable(with_augment) else self.dataset,
                     self.size, 0)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """``n`` items of a fixed shuffle, in their original order (all of them when ``n`` is
        None or larger)."""
        if n is None or n >= self.size:
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.size, generator=g)[:n].sort().values
        if self.images is not None:
            return Split(self.images[idx], self.labels[idx], None, int(n), self.max_shift)
        x, y = self.plain().take(idx)
        return Split(x, y, None, int(n), 0)


def random_shift_batch(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate every image of a (N, C, H, W) batch by its own random offset (edge padding)."""
    if max_shift <= 0 or x.shape[0] == 0:
        return x
    m = int(max_shift)
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (m, m, m, m), mode="replicate")
    offsets = torch.randint(0, 2 * m + 1, (x.shape[0], 2))
    out = torch.empty_like(x)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        out[k] = padded[k, :, dy:dy + h, dx:dx + w]
    return out


_IN_MEMORY_LIMIT = 2 * 1024 ** 3  # bytes of float32 images held in memory; larger splits stream


def as_split(data: Any, what: str = "split") -> Split:
    """Wrap a dataset of ``lana.data``, a ``TensorDataset`` or an ``(images, labels)`` pair.

    Small splits are held in memory as two tensors; the dataset's own random-shift augmentation
    (``augment``/``max_shift``) is then applied per batch instead of per item.
    """
    if isinstance(data, Split):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        return _tensor_split(data[0], data[1], what, 0)
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise SplitError(f"the {what} split is a {type(data).__name__}, not a dataset of "
                         f"(image, label) pairs; pass a TensorDataset or a map-style dataset")
    n = len(data)
    shift = int(getattr(data, "max_shift", 0) or 0) if getattr(data, "augment", False) else 0
    if n == 0:
        return Split(torch.empty(0, 1, 1, 1), torch.empty(0, dtype=torch.long), None, 0)
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, (tuple, list)):  # torch's TensorDataset
        return _tensor_split(tensors[0], tensors[1], what, 0)
    x0, _ = data[0]
    if n * torch.as_tensor(x0).numel() * 4 > _IN_MEMORY_LIMIT:
        return Split(None, None, data, n)
    if callable(tensors):  # lana.data datasets: all images at once, without augmentation
        x, y = tensors()
        return _tensor_split(x, y, what, shift)
    plain = Split(None, None, data, n)
    x, y = plain.take(torch.arange(n))
    return _tensor_split(x, y, what, 0)


def _tensor_split(x: torch.Tensor, y: torch.Tensor, what: str, shift: int) -> Split:
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise SplitError(f"the {what} split must be (N, C, H, W) images with (N,) labels, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}; fix the data loader")
    return Split(x.float(), y.long(), None, len(x), shift)


def progress_bar(enabled: bool) -> Any:
    """The training stages' rich progress bar (current task, count, elapsed time, ETA), or None
    when ``enabled`` is false; enter ``bar or contextlib.nullcontext()``."""
    if not enabled:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def iter_batches(split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 epoch: int = 0, rank: int = 0, world: int = 1, drop_last: bool = False,
                 augment: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``split``; with ``world`` > 1 each rank gets its own share of every epoch.

    The order is a permutation seeded by ``seed`` and ``epoch`` (identical on every rank); rank r
    takes every world-th batch-sized chunk, and all ranks get the same number of batches (the tail
    that would leave a rank idle is dropped), so DDP's collective calls stay in step.
    ``augment`` applies the split's random shifts (training batches only).
    """
    n = len(split)
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    chunks = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if drop_last and chunks and len(chunks[-1]) < batch_size and len(chunks) > 1:
        chunks = chunks[:-1]
    if world > 1:
        per_rank = len(chunks) // world
        chunks = chunks[rank::world][:per_rank]
    for idx in chunks:
        yield split.take(idx, augment=augment)


def num_batches(n: int, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
    """How many batches :func:`iter_batches` yields per rank."""
    chunks = -(-n // batch_size) if n else 0
    if drop_last and n % batch_size and chunks > 1:
        chunks -= 1
    return chunks // world if world > 1 else chunks


__all__ = ["DistInfo", "DistributedError", "Split", "SplitError", "all_gather_objects",
           "all_reduce_sum", "as_split", "autocast", "barrier", "broadcast_object", "grad_scaler",
           "iter_batches", "num_batches", "place", "place_module", "resolve_device", "setup",
           "shard_balanced", "teardown"]

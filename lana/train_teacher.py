"""Train a teacher from scratch on a data source (how the shipped ``demo`` weights are made).

``lana train-teacher --teacher demo`` reproduces ``lana/teachers/weights/demo.pt``: the run is
seeded (weights init, data order, augmentation) and uses deterministic algorithms where torch has
them, so the same seed, epochs and thread count give the same checkpoint.  CPU kernels sum in a
thread-count dependent order, so training uses one thread unless told otherwise (more threads
train faster to an equally accurate, slightly different network).  The checkpoint is a dict
``{"state_dict", "teacher", "val_top1", "epochs", "seed", "data", "threads"}`` that
``create_teacher(..., weights=path)`` loads directly.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lana.errors import LanaError

if TYPE_CHECKING:  # torch is imported by the functions, so the CLI starts without it
    from torch import nn

DEFAULT_EPOCHS = 6
DEFAULT_THREADS = 1  # results depend on the thread count; one thread reproduces anywhere
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 4e-3
DEFAULT_WEIGHT_DECAY = 0.02
LABEL_SMOOTHING = 0.05


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    teacher: str  # teacher name trained
    val_top1: float  # held-out top-1 after the last epoch, in [0, 1]
    epochs: int
    seed: int
    seconds: float  # wall-clock training time (data loading included)
    path: Path | None  # where the checkpoint was written, if anywhere
    history: tuple[tuple[float, float], ...]  # per epoch: (mean train loss, val top-1)


def evaluate(model: nn.Module, dataset, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``dataset``, in [0, 1]."""
    import torch
    from torch.utils.data import DataLoader

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    if total == 0:
        raise LanaError("the evaluation set is empty; add images to the val split")
    return correct / total


@contextmanager
def _deterministic(seed: int, threads: int | None) -> Iterator[None]:
    """Seed torch, prefer deterministic kernels and fix the thread count, then restore them."""
    import torch

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


def train_teacher(teacher: str = "demo", *, epochs: int = DEFAULT_EPOCHS,
                  out: str | Path | None = None, data: str | None = None, seed: int = 0,
                  batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                  threads: int | None = DEFAULT_THREADS, progress: bool = True) -> TrainResult:
    """Train ``teacher`` from random init on ``data`` (default: the embedded digits).

    AdamW with a one-cycle schedule and light label smoothing; prints per-epoch train loss and
    val top-1.  Writes the checkpoint to ``out`` when given.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from lana.data import load_data
    from lana.teachers import create_teacher

    if epochs < 1:
        raise LanaError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise LanaError(f"--batch-size must be at least 1, got {batch_size}")
    console = _console() if progress else None
    with _deterministic(seed, threads):
        t = create_teacher(teacher, pretrained=False)  # init is seeded by _deterministic
        bundle = load_data(data, t.input_shape, seed=seed)  # uses no torch random numbers
        if bundle.num_classes != t.num_classes:
            raise LanaError(f"teacher {teacher} has {t.num_classes} outputs but the data has "
                            f"{bundle.num_classes} classes; pick matching data or teacher")
        model = t.model
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(bundle.train, batch_size=batch_size, shuffle=True, generator=gen,
                            drop_last=len(bundle.train) > batch_size)
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": DEFAULT_WEIGHT_DECAY},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr)
        steps = epochs * len(loader)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                    pct_start=0.15)
        history: list[tuple[float, float]] = []
        start = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            total, count = 0.0, 0
            for x, y in _track(loader, console, f"epoch {epoch + 1}/{epochs}"):
                loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * y.numel()
                count += y.numel()
            if not math.isfinite(total):
                raise LanaError(f"training diverged in epoch {epoch + 1}; lower --lr "
                                f"(now {lr:g})")
            top1 = evaluate(model, bundle.val)
            history.append((total / max(count, 1), top1))
            if console is not None:
                console.print(f"epoch {epoch + 1:>3}/{epochs}  train loss {total / count:.4f}  "
                              f"val top-1 {100 * top1:.2f}%  ({time.perf_counter() - start:.1f} s)")
        seconds = time.perf_counter() - start
        model.eval()
    path = None
    if out is not None:
        path = Path(out).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "teacher": teacher, "val_top1": history[-1][1], "epochs": epochs,
                    "seed": seed, "data": bundle.source, "threads": torch.get_num_threads()
                    if threads is None else threads}, tmp)
        tmp.replace(path)
        if console is not None:
            console.print(f"saved {path} (val top-1 {100 * history[-1][1]:.2f}%, "
                          f"{path.stat().st_size / 1e6:.2f} MB, {seconds:.0f} s)")
    return TrainResult(teacher, history[-1][1], epochs, seed, seconds, path, tuple(history))


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _track(loader, console, label: str):
    if console is None:
        yield from loader
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=len(loader))
        for item in loader:
            yield item
            bar.advance(task)

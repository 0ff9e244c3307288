"""Fine-tune the selected architecture with the teacher's objective plus distillation (paper §2.2).

The student starts from its distilled ops (teacher layers, stem and head from the teacher) and is
trained with ``(1 - kd_weight) * cross-entropy + kd_weight * T^2 * KL(teacher || student)`` at
temperature ``T`` from the teacher's logits on the same (augmented) batch, AdamW with a cosine
schedule after a short warm-up.  Validation top-1 is reported after every epoch.  After every epoch
``<out>/checkpoint.pt`` is replaced atomically (model, optimizer, schedule, history and the
settings), so ``resume=True`` continues an interrupted run from the last finished epoch with the
settings left out taken from the checkpoint.  Launched by
``torchrun``, every process trains on its own share of each batch order and DDP averages the
gradients.

Writes ``<out>/student.pt`` (the architecture and state_dict, readable by
:func:`lana.assemble.load_student`) and ``<out>/metrics.json``::

    {"val_top1": [per epoch, in [0, 1]], "final_top1": ..., "teacher_top1": ...,
     "train_loss": [per epoch], "epochs": E, "seconds": wall time, "arch": [op keys], ...}
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lana.defaults import (
    FINETUNE_EPOCHS as DEFAULT_EPOCHS,
    FINETUNE_BATCH_SIZE as DEFAULT_BATCH_SIZE,
    FINETUNE_LR as DEFAULT_LR,
    FINETUNE_TEMPERATURE as DEFAULT_TEMPERATURE,
    FINETUNE_KD_WEIGHT as DEFAULT_KD_WEIGHT,
)
from lana.distributed import (Split, autocast, barrier, grad_scaler, iter_batches, num_batches,
                              place, place_module, progress_bar, setup, teardown)
from lana.errors import LanaError

if TYPE_CHECKING:
    from lana.assemble import Architecture
    from lana.teachers import Teacher

DEFAULT_WEIGHT_DECAY = 0.01
CHECKPOINT = "checkpoint.pt"


class FinetuneError(LanaError):
    """A fine-tuning run that cannot start or continue as asked."""


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float, kd_weight: float) -> torch.Tensor:
    """Cross-entropy on labels blended with the temperature-scaled KL from the teacher."""
    s, t = student_logits.float(), teacher_logits.float()
    ce = F.cross_entropy(s, labels)
    if kd_weight <= 0:
        return ce
    kl = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1),
                  reduction="batchmean", log_target=True) * temperature ** 2
    return (1.0 - kd_weight) * ce + kd_weight * kl


@torch.no_grad()
def top1(model: nn.Module, split: Split, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` in eval mode on ``split`` (no augmentation), in [0, 1]."""
    was = model.training
    model.eval()
    correct = n = 0
    for x, y in iter_batches(split.plain(), batch_size):
        x, y = place(x, device), y.to(device)
        with autocast(device):
            correct += int((model(x).argmax(1) == y).sum())
        n += int(y.numel())
    model.train(was)
    if n == 0:
        raise FinetuneError("the validation split is empty; add images to it")
    return correct / n


def _save_atomic(payload: dict, path: Path) -> None:
    from lana.atomic import write_bytes

    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def _load_arch(arch: "Architecture | str | Path") -> "Architecture":
    from lana.assemble import Architecture
    from lana.select import SelectWarning, read_architectures

    if isinstance(arch, Architecture):
        return arch
    if not Path(arch).exists():
        raise FinetuneError(f"--arch {arch} does not exist; pass the architecture file lana "
                            f"select wrote")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelectWarning)
        try:
            cands = read_architectures(arch)
        except SelectWarning:  # several budgets: which one is for the user to say
            raise FinetuneError(f"{arch} holds architectures for several budgets; run lana select "
                                f"--budget B on it and pass the file it writes") from None
    if len(cands) > 1:
        raise FinetuneError(f"{arch} holds {len(cands)} architectures; run lana select on it and "
                            f"pass the file it writes")
    return cands[0].arch


def finetune(arch: "Architecture | str | Path", teacher: "str | Teacher | None" = None,
             pretrain: str | Path | None = None, data: Any = None,
             out: str | Path = "run/finetune", *, epochs: int | None = None,
             resume: bool = False, batch_size: int | None = None, lr: float | None = None,
             weight_decay: float | None = None, temperature: float | None = None,
             kd_weight: float | None = None, images: int | None = None,
             device: str | None = None, seed: int | None = None,
             teacher_weights: str | Path | None = None, selector: str | None = None,
             input_shape: Any = None, progress: bool = True) -> dict:
    """Fine-tune ``arch`` (see the module docstring); returns the metrics written.

    ``pretrain`` None starts every replaced op from its random initialisation (the
    no-pretraining baseline); ``images`` caps the training images (quick runs).  A user
    module's ``selector`` and ``input_shape`` default to those ``pretrain`` recorded.
    ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``temperature``, ``kd_weight``,
    ``images`` and ``seed`` left None take the defaults (:data:`DEFAULT_EPOCHS`, ..., all
    images, seed 0) or, on ``resume``, the values the checkpoint in ``out`` recorded; a value
    other than the recorded one is refused, as the epochs trained so far depend on it.
    """
    from lana.assemble import check_arch, save_student
    from lana.pretrain import (DEFAULT_SEED, _setting, load_splits, open_teacher, read_manifest,
                               teacher_digest)
    from lana.select import build_candidate

    out = Path(out)
    ckpt_path = out / CHECKPOINT
    ck = _read_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    recorded = _recorded_settings(ck)
    epochs = _setting(epochs, recorded, "epochs", int, DEFAULT_EPOCHS)
    batch_size = _setting(batch_size, recorded, "batch_size", int, DEFAULT_BATCH_SIZE)
    lr = _setting(lr, recorded, "lr", (int, float), DEFAULT_LR)
    weight_decay = _setting(weight_decay, recorded, "weight_decay", (int, float),
                            DEFAULT_WEIGHT_DECAY)
    temperature = _setting(temperature, recorded, "temperature", (int, float),
                           DEFAULT_TEMPERATURE)
    kd_weight = _setting(kd_weight, recorded, "kd_weight", (int, float), DEFAULT_KD_WEIGHT)
    images = _setting(images, recorded, "images", int, None)  # recorded: the count trained on
    seed = _setting(seed, recorded, "seed", int, DEFAULT_SEED)
    if epochs < 1:
        raise FinetuneError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise FinetuneError(f"--batch-size must be at least 2 (batch norm), got {batch_size}")
    if not 0.0 <= kd_weight <= 1.0:
        raise FinetuneError(f"--kd-weight must be in [0, 1] (the share of the distillation "
                            f"loss), got {kd_weight}")
    if not temperature > 0:
        raise FinetuneError(f"--temperature must be positive, got {temperature}")
    a = _load_arch(arch)
    if teacher is not None:
        given = teacher if isinstance(teacher, str) else teacher.name
        if given != a.teacher:
            raise FinetuneError(f"the architecture is for teacher {a.teacher!r}, not {given!r}; "
                                f"pass --teacher {a.teacher}")
    info = setup(device)
    try:
        t = open_teacher(teacher if teacher is not None and not isinstance(teacher, str)
                         else a.teacher, teacher_weights, selector=selector,
                         input_shape=input_shape, pretrain=pretrain)
        check_arch(a, t)
        pool = a.pool or None
        if pretrain is not None:
            pool = read_manifest(pretrain, t, pool).get("pool")
        else:
            from lana.pretrain import needs_training

            fresh = sum(1 for s in a.specs if needs_training(s))
            if fresh and not (resume and ckpt_path.is_file()):  # else restored from it
                warnings.warn(f"no --pretrain directory: {fresh} replaced layer(s) start from "
                              f"random weights instead of their distilled ones", stacklevel=2)
        if not a.layer_names:
            a = a.replace(layer_names=tuple(l.name for l in t.layers))
        if ckpt_path.is_file() and not resume:
            raise FinetuneError(f"{out} holds an unfinished or finished fine-tuning; pass --resume "
                                f"to continue it or a fresh --out to start over")
        dev = info.device
        splits = load_splits(data, t, seed)
        train = splits.train.subset(images, seed)
        torch.manual_seed(seed)
        student = place_module(build_candidate(a, t, pretrain, pool or ""), dev)
        place_module(t.model, dev).eval()
        decay = [p for p in student.parameters() if p.ndim > 1]
        no_decay = [p for p in student.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr)
        per_epoch = num_batches(len(train), batch_size, info.world_size, drop_last=True)
        if per_epoch < 1:
            raise FinetuneError(f"{len(train)} training images make no batch of {batch_size} per "
                                f"process; lower --batch-size or add images")
        total = epochs * per_epoch
        warmup = min(per_epoch, max(1, total // 20))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup else
            0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup)))))
        scaler = grad_scaler(dev)
        history: dict[str, list] = {"val_top1": [], "train_loss": [], "epoch_seconds": []}
        first_epoch, seconds_before = 0, 0.0
        digest = teacher_digest(t)
        # what the schedule and the weights reached depend on: a resumed run must use the same
        config = {"batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                  "temperature": temperature, "kd_weight": kd_weight, "images": len(train),
                  "seed": seed}
        if ck is not None:
            first_epoch, history, seconds_before = _restore(ck, ckpt_path, student, opt, sched,
                                                            scaler, a, digest, epochs, config)
        teacher_top1 = top1(t.model, splits.val, dev)
        model: nn.Module = student
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(student, device_ids=[dev.index] if dev.type == "cuda" else None)
        bar = progress_bar(progress and info.is_main)
        start = time.perf_counter()
        with (bar if bar is not None else contextlib.nullcontext()):
            task = (bar.add_task("fine-tuning", total=(epochs - first_epoch) * per_epoch)
                    if bar is not None else None)
            for epoch in range(first_epoch, epochs):
                t0 = time.perf_counter()
                model.train()
                loss_sum, steps = 0.0, 0
                for x, y in iter_batches(train, batch_size, shuffle=True, seed=seed, epoch=epoch,
                                         rank=info.rank, world=info.world_size, drop_last=True,
                                         augment=True):
                    x, y = place(x, dev), y.to(dev, non_blocking=True)
                    with torch.no_grad(), autocast(dev):
                        t_logits = t.model(x)
                    with autocast(dev):
                        loss = kd_loss(model(x), t_logits, y, temperature=temperature,
                                       kd_weight=kd_weight)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    loss_sum += float(loss.detach())
                    steps += 1
                    if bar is not None:
                        bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs} "
                                   f"loss {loss_sum / steps:.4f}")
                if not math.isfinite(loss_sum):
                    raise FinetuneError(f"fine-tuning diverged in epoch {epoch + 1}; lower --lr "
                                        f"(now {lr:g}) and start over with a fresh --out")
                acc = top1(student, splits.val, dev)
                history["val_top1"].append(acc)
                history["train_loss"].append(loss_sum / max(1, steps))
                history["epoch_seconds"].append(round(time.perf_counter() - t0, 3))
                if info.is_main:
                    _save_atomic({"epoch": epoch + 1, "model": student.state_dict(),
                                  "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                  "scaler": scaler.state_dict(), "history": history,
                                  "arch": list(a.ops), "teacher": t.name,
                                  "teacher_digest": digest, "epochs": epochs,
                                  "config": config, "rng": torch.get_rng_state(),
                                  "seconds": seconds_before + time.perf_counter() - start},
                                 ckpt_path)
                    msg = (f"epoch {epoch + 1:>3}/{epochs}  loss {loss_sum / max(1, steps):.4f}  "
                           f"val top-1 {100 * acc:.2f}%  (teacher {100 * teacher_top1:.2f}%)")
                    if bar is not None:
                        bar.console.print(msg)
                barrier(info)
        seconds = seconds_before + time.perf_counter() - start  # the earlier runs' too
        student.eval()
        final = history["val_top1"][-1] if history["val_top1"] else top1(student, splits.val, dev)
        metrics = {"val_top1": history["val_top1"], "final_top1": final,
                   "teacher_top1": teacher_top1, "top1_drop": teacher_top1 - final,
                   "train_loss": history["train_loss"], "epochs": epochs,
                   "epoch_seconds": history["epoch_seconds"], "seconds": round(seconds, 2),
                   "teacher": t.name, "pool": pool, "arch": list(a.ops),
                   "pretrained_init": pretrain is not None, "world_size": info.world_size,
                   "config": config}
        if info.is_main:
            from lana.atomic import write_text

            save_student(student.cpu(), a, t, out / "student.pt", metrics=metrics)
            write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        barrier(info)
        return metrics
    finally:
        teardown(info)


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` as saved (an unreadable one is an error, never reused)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not {"arch", "model"} <= ck.keys():
            raise KeyError("arch" if "arch" not in ck else "model")
    except Exception as exc:  # a truncated or foreign file: never reuse it silently
        raise FinetuneError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it "
                            f"to start over") from exc
    return ck


def _recorded_settings(ck: dict | None) -> dict | None:
    """The settings checkpoint ``ck`` was made with (its ``config`` and ``epochs``; a checkpoint
    from before the settings were recorded has only the epochs), or None (no checkpoint)."""
    if ck is None:
        return None
    made = ck.get("config")
    return {**(made if isinstance(made, dict) else {}), "epochs": ck.get("epochs")}


def _restore(ck: dict, path: Path, student: nn.Module, opt, sched, scaler, arch: "Architecture",
             digest: str, epochs: int, config: dict) -> tuple[int, dict, float]:
    """Load checkpoint ``ck`` (read from ``path``) into the run; the epochs done, the history and
    the seconds spent."""
    ops, state = ck["arch"], ck["model"]
    if list(ops) != list(arch.ops) or ck.get("teacher_digest") != digest:
        raise FinetuneError(f"checkpoint {path} belongs to another architecture or teacher; pass "
                            f"a fresh --out")
    if int(ck.get("epochs", epochs)) != epochs:
        raise FinetuneError(f"checkpoint {path} was made for --epochs {ck.get('epochs')}; resume "
                            f"with the same --epochs (the schedule depends on it) or leave it out")
    made = ck.get("config")
    if isinstance(made, dict):  # checkpoints before the settings were recorded cannot be checked
        differ = [k for k in config if k in made and made[k] != config[k]]
        if differ:
            was = " ".join(f"--{k.replace('_', '-')} {made[k]}" for k in differ)
            raise FinetuneError(f"checkpoint {path} was made with {was}; resume with the same "
                                f"values (or leave them out to use them) or pass a fresh --out")
    try:
        student.load_state_dict(state, strict=True)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if isinstance(ck.get("rng"), torch.Tensor):
            torch.set_rng_state(ck["rng"])  # the same augmentation as an uninterrupted run
        history = {k: list(v) for k, v in ck["history"].items()}
        done, seconds = int(ck["epoch"]), float(ck.get("seconds", 0.0))
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise FinetuneError(f"checkpoint {path} does not fit this run ({type(exc).__name__}); "
                            f"delete it or pass a fresh --out") from exc
    return done, history, seconds


__all__ = ["CHECKPOINT", "DEFAULT_EPOCHS", "FinetuneError", "finetune", "kd_loss", "top1"]

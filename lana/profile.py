"""Measure every candidate op of every teacher layer on a device preset and write a LUT.

Each distinct op key is measured once, however many layers share its geometry, and so is the teacher
skeleton (the LUT's ``fixed`` part).  Ops are built with the op registry, put in deployed form
(``lana.ops.deploy``), exported through the content-hash ONNX cache (``lana.export``) when the
backend takes ONNX, and timed by the ``profilers`` timing core.  An op whose export or build fails
is recorded as ``{"failed": reason}`` and skipped by the search.

Entries are saved as they are measured (a journal line per entry, the LUT file rewritten atomically
every few entries and on Ctrl-C), so an interrupted profile continues with ``resume=True`` and
re-measures nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lana.errors import LanaError, UnknownNameError
from lana.lut import Lut, LutWriter, journal_path, profile_command
from lana.spec import parse_key


class ProfileError(LanaError):
    """A profile that cannot start (bad arguments, a backend not installed, an existing file)."""


@dataclass
class ProfileReport:
    """What one ``profile`` call did; timings in seconds."""

    out: Path
    total: int = 0  # distinct op keys this shard covers (skeleton not counted)
    measured: int = 0  # measured in this call
    reused: int = 0  # already in the file (resume)
    failed: int = 0  # recorded as failed in this call
    noisy: int = 0  # measured in this call and still noisy after re-measurement
    wall_s: float = 0.0  # the whole call, pool building included
    loop_s: float = 0.0  # the measuring loop: build + export + activate + measure, all ops
    timed_s: float = 0.0  # inside timed iterations (warm-up excluded)
    measure_s: float = 0.0  # inside Timer.measure (warm-up included)
    export_s: float = 0.0  # ONNX export (cache hits are near zero)
    activate_s: float = 0.0  # session / engine creation
    build_s: float = 0.0  # creating op modules
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["out"] = str(self.out)
        return out


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1 <= i <= n) to ``(i, n)``."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ProfileError(f"--shard must be i/n with 1 <= i <= n (e.g. 1/4), got {text!r}")
    return int(m[1]), int(m[2])


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Whether ``key`` belongs to shard ``(i, n)``: a stable hash of the key, not its position."""
    if shard is None:
        return True
    digest = int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)
    return digest % shard[1] == shard[0] - 1


def key_seed(key: str) -> int:
    """Weights are seeded from the key, so an op exports to the same cached ONNX file every time."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)


def default_out(device: str, teacher: str, pool: str) -> Path:
    """``luts/<device>/<teacher>.json`` (``<teacher>-<pool>.json`` for pools other than full)."""
    stem = Path(teacher.split(":")[0]).stem + ("_" + teacher.split(":")[1] if ":" in teacher else "")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) + ("" if pool == "full" else f"-{pool}")
    return Path("luts") / Path(device).stem / f"{name}.json"


def _load_preset(device: str, batch_size: int | None):
    from profilers import ProfilerError, UnknownPresetError, load_preset

    try:
        preset = load_preset(device)
    except UnknownPresetError as exc:
        raise UnknownNameError(str(exc)) from None
    except ProfilerError as exc:
        raise ProfileError(str(exc)) from None
    if batch_size is not None:
        if batch_size < 1:
            raise ProfileError(f"--batch-size must be >= 1, got {batch_size}")
        import dataclasses

        preset = dataclasses.replace(preset, batch_size=batch_size)
    reason = preset.unusable_reason()
    if reason is not None:
        raise ProfileError(f"device {preset.name!r} cannot run here: {reason}")
    return preset


def _header(preset, teacher, pool: str, selector: str | None, shard) -> dict[str, Any]:
    """The settings an existing file must share to be resumed."""
    from lana.ops import ops_fingerprint

    device = preset.to_dict()
    return {
        "teacher": teacher.name, "pool": pool, "input_shape": list(teacher.input_shape),
        "selector": selector, "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "protocol": preset.protocol.to_dict(), "ops_fingerprint": ops_fingerprint(),
        "device": {k: device[k] for k in ("preset", "backend", "device", "precision",
                                          "batch_size", "threads", "options")},
    }


def _differences(lut: Lut, header: dict[str, Any]) -> list[str]:
    diffs = []
    for name, value in header.items():
        if name == "device":
            diffs += [f"device.{k}" for k, v in value.items() if lut.device.get(k) != v]
        elif lut.data.get(name) != value:
            diffs.append(name)
    return diffs


def _open_lut(out: Path, header: dict[str, Any], layers: list[dict[str, Any]], seen: dict,
              backend_info: dict, *, resume: bool, force: bool, command: str) -> Lut:
    exists = out.exists() or journal_path(out).exists()
    if exists and not (resume or force):
        raise ProfileError(f"{out} already exists; add --resume to continue it or --force to "
                           f"overwrite it")
    if exists and resume and out.exists():
        lut = Lut.load(out, check_fingerprint=False)
        diffs = _differences(lut, header)
        if diffs:
            raise ProfileError(f"{out} was made with other settings (differs in {', '.join(diffs)}); "
                               f"use --force to overwrite it or another --out")
        LutWriter.recover(lut, out)
        lut.data["layers"] = layers
        return lut
    journal_path(out).unlink(missing_ok=True)
    device = {**header["device"], "seen": seen, "backend_info": backend_info}
    extra = {k: header[k] for k in ("selector", "shard")}
    lut = Lut.new(teacher=header["teacher"], pool=header["pool"],
                  input_shape=header["input_shape"], device=device, protocol=header["protocol"],
                  ops_fingerprint=header["ops_fingerprint"], layers=layers, command=command,
                  **extra)
    return lut


def profile(device: str, teacher: str, *, pool: str = "full", out: str | os.PathLike[str] | None = None,
            batch_size: int | None = None, resume: bool = False, force: bool = False,
            shard: str | tuple[int, int] | None = None, selector: str | None = None,
            input_shape: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
            keep_samples: bool = False, flush_every: int = 16,
            on_progress: Callable[[int, int, str], None] | None = None,
            progress: bool = False) -> ProfileReport:
    """Profile ``teacher``'s ``pool`` on device preset ``device`` into the LUT file ``out``.

    ``shard`` ("i/n") measures a stable 1/n share of the ops (merge shards with ``lana lut merge``);
    the skeleton goes with shard 1.  ``resume`` continues an existing file made with the same
    settings; without it (or ``force``) an existing file is refused.  ``on_progress(done, total,
    key)`` is called after each entry; ``progress`` shows a rich progress bar with an ETA.
    """
    start = time.perf_counter()
    if resume and force:
        raise ProfileError("--resume and --force contradict each other; pass one")
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    preset = _load_preset(device, batch_size)
    out_path = Path(out) if out is not None else default_out(preset.name, teacher, pool)
    if not (resume or force) and (out_path.exists() or journal_path(out_path).exists()):
        raise ProfileError(f"{out_path} already exists; add --resume to continue it or --force to "
                           f"overwrite it")
    report = ProfileReport(out=out_path)
    hw = preset.hardware_warning()
    if hw:
        report.warnings.append(hw)
        print(f"warning: {hw}", file=sys.stderr)

    import torch

    from lana.export import export_onnx
    from lana.ops import POOLS, create_op, deploy
    from lana.pool import build_pool
    from lana.teachers import create_teacher
    from profilers import BuildError, ProfilerError, get_backend
    from profilers.system import seen as seen_machine

    with torch.random.fork_rng(devices=[]):  # seeding ops leaves the caller's RNG alone
        if pool not in POOLS:
            raise UnknownNameError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
        torch.manual_seed(0)  # same teacher weights every run: teacher ops hit the export cache
        t = create_teacher(teacher, selector=selector, input_shape=input_shape, pretrained=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer_pools = build_pool(t, pool)

        # Every distinct key once, with the first layer that needs it (teacher ops copy that layer).
        owner: dict[str, int] = {}
        for i, lp in enumerate(layer_pools):
            for key in lp.keys:
                owner.setdefault(key, i)
        pool_failed = {s.key: reason for lp in layer_pools for s, reason in lp.failed}
        layers = [{"name": lp.layer.name, "ops": lp.keys} for lp in layer_pools]
        keys = [k for k in owner if in_shard(k, shard_t)]
        report.total = len(keys)

        backend_cls = get_backend(preset.backend)
        config = preset.backend_config()
        info = backend_cls(Path("op.onnx") if backend_cls.accepts == "onnx" else None,
                           (preset.batch_size, *t.input_shape), config).info()
        command = profile_command(device=device, teacher=teacher, pool=pool, out=out_path,
                                  batch_size=batch_size, selector=selector)
        header = _header(preset, t, pool, selector, shard_t)
        lut = _open_lut(out_path, header, layers, seen_machine(gpu=preset.device == "cuda"), info,
                        resume=resume, force=force, command=command)
        writer = LutWriter(lut, out_path, every=flush_every)
        for key, reason in pool_failed.items():
            if in_shard(key, shard_t) and key not in lut.entries:
                lut.set_failed(key, f"build failed: {reason}")
        writer.flush()

        # A fixed pseudo-random order spreads the slow early-layer ops over the run (a truthful ETA)
        # and spreads slow drifts of the machine over all families instead of one.
        todo: list[str | None] = sorted((k for k in keys if k not in lut.entries), key=key_seed)
        report.reused = len(keys) - len(todo)
        if (shard_t is None or shard_t[0] == 1) and (lut.fixed is None or "failed" in lut.fixed):
            todo.append(None)  # the skeleton, measured last
        total = len(todo)

        def measure_one(key: str | None) -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                if key is None:
                    module, shape = t.skeleton(), (preset.batch_size, *t.input_shape)
                else:
                    spec = parse_key(key)
                    torch.manual_seed(key_seed(key))
                    module = create_op(spec, t.layer_module(owner[key]) if spec.family == "teacher"
                                       else None)
                    module = deploy(module)
                    shape = (preset.batch_size, *spec.in_shape)
            except LanaError as exc:
                return {"failed": f"build failed: {exc}"}
            t1 = time.perf_counter()
            report.build_s += t1 - t0
            model: Any = module
            if backend_cls.accepts == "onnx":
                try:
                    model = export_onnx(module, shape, cache_dir=cache_dir)
                except LanaError as exc:
                    return {"failed": f"export failed: {exc}"}
                finally:
                    report.export_s += time.perf_counter() - t1
            backend = backend_cls(model, shape, config)
            try:
                with backend:
                    m = backend.measure(preset.protocol)
            except BuildError as exc:
                return {"failed": f"engine build failed: {exc}"}
            except ProfilerError as exc:
                raise ProfileError(str(exc)) from None
            except Exception as exc:  # a runtime failure of one op must not end a long profile
                return {"failed": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            finally:
                report.activate_s += backend.activate_s
            report.measure_s += m.wall_s
            report.timed_s += m.timed_s
            report.noisy += int(m.noisy)
            return m.to_dict(samples=keep_samples)

        bar = _ProgressBar(total, str(out_path)) if progress and total else None
        loop_start = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # building and exporting ops; backends set their own threads
        try:
            for done, key in enumerate(todo, 1):
                entry = measure_one(key)
                writer.add(key, entry)
                if "failed" in entry:
                    report.failed += 1
                    msg = f"{key or 'skeleton'}: {entry['failed']}"
                    report.warnings.append(msg)
                    if bar is not None:
                        from rich.markup import escape

                        bar.console.print(f"[yellow]failed[/] {escape(msg)}")
                else:
                    report.measured += 1
                if bar is not None:
                    bar.advance(key or "skeleton")
                if on_progress is not None:
                    on_progress(done, total, key or "skeleton")
        finally:
            torch.set_num_threads(threads)
            writer.flush()  # on success, Ctrl-C or any error: nothing measured is lost
            if bar is not None:
                bar.close()
            report.loop_s = time.perf_counter() - loop_start
            report.wall_s = time.perf_counter() - start
        return report


class _ProgressBar:
    """A rich progress bar with rate and ETA on stderr."""

    def __init__(self, total: int, label: str) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]profiling[/]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[op]}"), console=self.console,
                                 transient=False)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, op="")

    def advance(self, key: str) -> None:
        self.progress.update(self.task, advance=1, op=key[:60])

    def close(self) -> None:
        self.progress.stop()


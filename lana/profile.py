"""Measure every candidate op of every teacher layer on a device preset and write a LUT.

Each distinct op key is measured once, however many layers share its geometry, and so is the teacher
skeleton (the LUT's ``fixed`` part).  Ops are built with the op registry, put in deployed form
(``lana.ops.deploy``), exported through the content-hash ONNX cache (``lana.export``) when the
backend takes ONNX, and timed by the ``profilers`` timing core.  An op whose export or build fails
is recorded as ``{"failed": reason}`` and skipped by the search.

A profile runs in two phases.  First every op still to be measured gets its ONNX file (when the
backend takes ONNX): built, exported into the cache, or found there; with ``jobs > 1`` this runs in
worker processes, one torch thread each, and nothing is timed meanwhile.  Then the ops are timed one
after another in this process, with nothing else of the profiler's running.  The machine's load is
sampled before timing starts and every half minute after (``profilers.load``): a LUT measured beside
other work gets a one-line warning and is marked in ``device.seen.load``.

Entries are saved as they are measured (a journal line per entry, the LUT file rewritten atomically
every few entries and on Ctrl-C), so an interrupted profile continues with ``resume=True`` and
re-measures nothing; ops recorded as failed are tried again then.  An export the cache lost during
the profile (``lana cache clear`` or ``prune`` meanwhile) is made again.  ``force=True`` keeps the
LUT it replaces as ``<out>.bak`` until the new profile completes, and a lock next to the file
refuses a second profile of it while one runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lana.errors import LanaError, UnknownNameError, check_output_file
from lana.lut import Lut, LutWriter, journal_path, profile_command
from lana.spec import parse_key


class ProfileError(LanaError):
    """A profile that cannot start (bad arguments, a backend not installed, an existing file)."""


@dataclass
class ProfileReport:
    """What one ``profile`` call did; timings in seconds."""

    out: Path
    # The counts are of distinct op keys; the skeleton (the LUT's fixed part) is in none of them.
    total: int = 0  # distinct op keys this shard covers
    measured: int = 0  # measured in this call
    reused: int = 0  # already in the file (resume)
    retried: int = 0  # recorded as failed in the file and tried again (resume)
    failed: int = 0  # recorded as failed in this call
    noisy: int = 0  # measured in this call and still noisy after re-measurement
    # The skeleton: "measured" (in this call), "noisy" (measured in this call and still noisy),
    # "failed" (in this call), "reused" (already in the file), or None (another shard's).
    skeleton: str | None = None
    wall_s: float = 0.0  # the whole call, pool building included
    setup_s: float = 0.0  # teacher, pool and LUT file set-up, before the first op
    prepare_s: float = 0.0  # the export phase: every op's ONNX file made or found (wall)
    loop_s: float = 0.0  # the timing loop: activate + measure + write, all ops
    timed_s: float = 0.0  # inside timed iterations (warm-up excluded)
    measure_s: float = 0.0  # inside Timer.measure (warm-up included)
    export_s: float = 0.0  # ONNX export and cache look-up, summed over processes
    activate_s: float = 0.0  # session / engine creation
    build_s: float = 0.0  # creating op modules, summed over processes
    write_s: float = 0.0  # journal lines and LUT file rewrites
    jobs: int = 1  # processes of the export phase
    exported: int = 0  # ONNX files written in this call (the others were in the cache)
    load: dict[str, Any] = field(default_factory=dict)  # the machine's load (profilers.load)
    warnings: list[str] = field(default_factory=list)

    def count_export(self, exported: bool, times: dict[str, float]) -> None:
        """Add one :func:`_prepare` call (in any process) to the export figures."""
        self.exported += int(exported)
        self.build_s += times.get("build_s", 0.0)
        self.export_s += times.get("export_s", 0.0)

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


def _check_existing(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse to start over an existing LUT without --force, or to resume a journal alone."""
    journal = journal_path(out)
    if force:
        return
    if journal.exists() and not out.exists():
        raise ProfileError(f"{journal} holds entries of a profile whose LUT {out} is gone; "
                           f"restore {out.name} to resume it, or pass --force to start over")
    if out.exists() and not resume:
        raise ProfileError(f"{out} already exists; add --resume to continue it or --force to "
                           f"overwrite it")


def backup_path(out: Path) -> Path:
    """Where ``--force`` keeps the LUT it replaces until the new profile completes."""
    return out.with_name(out.name + ".bak")


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold a lock next to ``out`` for the whole profile: a second profile of the same file
    (a --resume started in another terminal, say) is refused instead of both measuring under
    each other's load and overwriting each other's saves."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): nothing to hold
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(f".{out.name}.lock")
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            raise ProfileError(f"another lana-profile{f' (process {pid})' if pid else ''} is "
                               f"writing {out}; wait for it to finish, or choose another "
                               f"--out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def _open_lut(out: Path, header: dict[str, Any], layers: list[dict[str, Any]], seen: dict,
              backend_info: dict, *, resume: bool, force: bool, command: str) -> Lut:
    """The LUT to write into (``profile`` has checked with :func:`_check_existing` first)."""
    if resume and out.exists():
        lut = Lut.load(out, check_fingerprint=False)
        diffs = _differences(lut, header)
        if diffs:
            raise ProfileError(f"{out} was made with other settings (differs in {', '.join(diffs)}); "
                               f"use --force to overwrite it or another --out")
        LutWriter.recover(lut, out)
        lut.data["layers"] = layers
        return lut
    if force and out.exists():
        backup = backup_path(out)
        if backup.exists():  # an earlier --force was interrupted: the backup is the LUT before it
            out.unlink()
        else:
            os.replace(out, backup)
        print(f"note: the LUT this replaces is kept as {backup} until the new profile completes",
              file=sys.stderr)
    journal_path(out).unlink(missing_ok=True)
    device = {**header["device"], "seen": seen, "backend_info": backend_info}
    extra = {k: header[k] for k in ("selector", "shard")}
    lut = Lut.new(teacher=header["teacher"], pool=header["pool"],
                  input_shape=header["input_shape"], device=device, protocol=header["protocol"],
                  ops_fingerprint=header["ops_fingerprint"], layers=layers, command=command,
                  **extra)
    return lut


PARALLEL_MIN_OPS = 200  # with jobs=None, an export phase this large gets one worker per CPU


def resolve_jobs(jobs: int | None, ops: int) -> int:
    """Processes for the export phase of ``ops`` ops: ``jobs`` as given, or (``None``) one per usable
    CPU when there are at least :data:`PARALLEL_MIN_OPS` (starting a worker costs seconds), else 1."""
    if jobs is not None:
        if int(jobs) < 1:
            raise ProfileError(f"--jobs must be >= 1, got {jobs}")
        return int(jobs)
    from profilers.system import usable_cpus

    cpus = len(usable_cpus())
    return cpus if cpus > 1 and ops >= PARALLEL_MIN_OPS else 1


def _input_shape(t, key: str | None, batch_size: int) -> tuple[int, ...]:
    return (batch_size, *(t.input_shape if key is None else parse_key(key).in_shape))


def key_owners(layer_pools: Sequence[Any]) -> dict[str, int]:
    """Every distinct op key of ``layer_pools`` with the first layer whose pool has it (a teacher op
    is built as a copy of that layer)."""
    owner: dict[str, int] = {}
    for i, lp in enumerate(layer_pools):
        for key in lp.keys:
            owner.setdefault(key, i)
    return owner


def build_op_module(t, key: str | None, owner: dict[str, int]):
    """The deployed module for ``key`` (``None``: the skeleton), seeded by the key, as profiled;
    LanaError when it cannot be built."""
    import torch

    from lana.ops import create_op, deploy

    if key is None:
        return t.skeleton()
    spec = parse_key(key)
    torch.manual_seed(key_seed(key))
    return deploy(create_op(spec, t.layer_module(owner[key]) if spec.family == "teacher" else None))


def _prepare(t, key: str | None, owner: dict[str, int], batch_size: int, cache_dir,
             times: dict[str, float]) -> tuple[str | None, str | None, bool]:
    """Make sure ``key``'s ONNX file is in the cache: ``(path, None, exported now)`` or
    ``(None, failure, False)``.  Adds the build and export seconds to ``times``."""
    import lana.export

    t0 = time.perf_counter()
    try:
        module = build_op_module(t, key, owner)
    except LanaError as exc:
        return None, f"build failed: {exc}", False
    finally:
        times["build_s"] = times.get("build_s", 0.0) + time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        path, exported = lana.export.cached_export(module, _input_shape(t, key, batch_size),
                                                   cache_dir=cache_dir)
    except lana.export.StorageError:
        raise  # the machine's problem, not the op's: stop instead of recording every op failed
    except LanaError as exc:
        return None, f"export failed: {exc}", False
    finally:
        times["export_s"] = times.get("export_s", 0.0) + time.perf_counter() - t1
    return str(path), None, exported


_WORKER: dict[str, Any] = {}


def _worker_init(teacher: str, selector: str | None, input_shape: str | None, state: dict,
                 owner: dict[str, int], batch_size: int, cache_dir) -> None:
    """An export worker: one torch thread, the teacher rebuilt with the caller's exact weights."""
    import signal

    import torch

    from lana.teachers import create_teacher

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the phase ends
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = create_teacher(teacher, selector=selector, input_shape=input_shape, pretrained=False)
    t.model.load_state_dict(state)
    _WORKER.update(teacher=t, owner=owner, batch_size=batch_size, cache_dir=cache_dir)


def _worker_prepare(key: str | None) -> tuple[str | None, str | None, str | None, bool, dict]:
    times: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, failure, exported = _prepare(_WORKER["teacher"], key, _WORKER["owner"],
                                           _WORKER["batch_size"], _WORKER["cache_dir"], times)
    return key, path, failure, exported, times


def _prepare_all(keys: list[str | None], t, owner: dict[str, int], batch_size: int, cache_dir,
                 jobs: int, teacher_args: tuple, report: ProfileReport,
                 advance: Callable[[], None] | None
                 ) -> dict[str | None, tuple[str | None, str | None]]:
    """The export phase: every key's ONNX path (or failure), in ``jobs`` processes."""
    done: dict[str | None, tuple[str | None, str | None]] = {}

    def take(key, path, failure, exported, times) -> None:
        done[key] = (path, failure)
        report.count_export(exported, times)
        if advance is not None:
            advance()

    if jobs > 1 and len(keys) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        teacher, selector, input_shape = teacher_args
        pool = ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
            initargs=(teacher, selector, input_shape, t.model.state_dict(), owner, batch_size,
                      cache_dir))
        chunk = max(1, min(16, len(keys) // (4 * jobs)))
        try:
            for result in pool.map(_worker_prepare, keys, chunksize=chunk):
                take(*result)
        except BrokenProcessPool:
            pass  # a worker died (out of memory, a crash in an exporter): the rest is done here
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for key in keys:
        if key not in done:
            times: dict[str, float] = {}
            take(key, *_prepare(t, key, owner, batch_size, cache_dir, times), times)
    return done


def profile(device: str, teacher: str, *, pool: str = "full", out: str | os.PathLike[str] | None = None,
            batch_size: int | None = None, resume: bool = False, force: bool = False,
            shard: str | tuple[int, int] | None = None, selector: str | None = None,
            input_shape: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
            keep_samples: bool = False, flush_every: int = 16, jobs: int | None = None,
            load_check_s: float = 30.0,
            on_progress: Callable[[int, int, str], None] | None = None,
            progress: bool = False) -> ProfileReport:
    """Profile ``teacher``'s ``pool`` on device preset ``device`` into the LUT file ``out``.

    ``shard`` ("i/n") measures a stable 1/n share of the ops (merge shards with ``lana lut merge``);
    the skeleton goes with shard 1.  ``resume`` continues an existing file made with the same
    settings; without it (or ``force``) an existing file is refused.  ``jobs`` is the number of
    processes that export the ONNX files before timing starts (``None``: one per CPU for large
    profiles, see :func:`resolve_jobs`); timing itself always runs alone in this process.  The
    machine's load is checked before timing and every ``load_check_s`` seconds; a busy machine
    gets a warning (once) and is recorded in the LUT.  ``on_progress(done, total, key)`` is called
    after each entry; ``progress`` shows a rich progress bar with an ETA.
    """
    start = time.perf_counter()
    if resume and force:
        raise ProfileError("--resume and --force contradict each other; pass one")
    if jobs is not None:
        resolve_jobs(jobs, 0)  # a bad value fails before any work
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    with warnings.catch_warnings(record=True) as preset_warnings:  # said below, as warnings
        warnings.simplefilter("always")
        preset = _load_preset(device, batch_size)
    out_path = Path(out) if out is not None else default_out(preset.name, teacher, pool)
    check_output_file(out_path, "--out", f"{teacher}.json", ProfileError)
    _check_existing(out_path, resume=resume, force=force)
    from profilers.load import LoadMonitor, merge_load, parallel_probe

    # Its first window runs from here to the first timed op: the machine's load before timing.
    monitor_threads = (preset.resolved_threads() or 1) if preset.device == "cpu" else 1
    monitor = LoadMonitor(monitor_threads, check_every_s=load_check_s,
                          probe=parallel_probe(monitor_threads))
    report = ProfileReport(out=out_path)
    bar: _ProgressBar | None = None

    def warn(message: str) -> None:
        report.warnings.append(message)
        if bar is not None:
            from rich.markup import escape

            bar.console.print(f"[yellow]warning:[/] {escape(message)}")
        else:
            print(f"warning: {message}", file=sys.stderr)

    for caught in preset_warnings:
        warn(str(caught.message))
    hw = preset.hardware_warning()
    if hw:
        warn(hw)

    import torch

    from lana.ops import POOLS
    from lana.pool import build_pool
    from lana.teachers import create_teacher
    from profilers import BuildError, ProfilerError, get_backend
    from profilers.system import seen as seen_machine

    # Seeding ops leaves the caller's RNG alone.
    with torch.random.fork_rng(devices=[]), _exclusive(out_path):
        if pool not in POOLS:
            raise UnknownNameError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
        torch.manual_seed(0)  # same teacher weights every run: teacher ops hit the export cache
        t = create_teacher(teacher, selector=selector, input_shape=input_shape, pretrained=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer_pools = build_pool(t, pool)

        owner = key_owners(layer_pools)  # every distinct key once
        pool_failed = {s.key: reason for lp in layer_pools for s, reason in lp.failed}
        layers = [{"name": lp.layer.name, "ops": lp.keys} for lp in layer_pools]
        keys = [k for k in owner if in_shard(k, shard_t)]
        report.total = len(keys)

        backend_cls = get_backend(preset.backend)
        config = preset.backend_config()
        info = backend_cls(Path("op.onnx") if backend_cls.accepts == "onnx" else None,
                           (preset.batch_size, *t.input_shape), config).info()
        command = profile_command(device=device, teacher=teacher, pool=pool, out=out_path,
                                  batch_size=batch_size, selector=selector,
                                  input_shape=input_shape,
                                  shard=None if shard_t is None else f"{shard_t[0]}/{shard_t[1]}")
        header = _header(preset, t, pool, selector, shard_t)
        fresh = not (out_path.exists() or journal_path(out_path).exists())
        lut = _open_lut(out_path, header, layers, seen_machine(gpu=preset.device == "cuda"), info,
                        resume=resume, force=force, command=command)
        previous_load = (lut.device.get("seen") or {}).get("load")
        writer = LutWriter(lut, out_path, every=flush_every)
        for key, reason in pool_failed.items():
            if in_shard(key, shard_t) and key not in lut.entries:
                lut.set_failed(key, f"build failed: {reason}")
        writer.flush()

        # A fixed pseudo-random order spreads the slow early-layer ops over the run (a truthful ETA)
        # and spreads slow drifts of the machine over all families instead of one.
        # On resume, ops recorded as failed are tried again (an export cache cleared under a
        # profile, a backend that ran out of memory); the pool's build failures are final.
        retry = {k for k in keys if k in lut.entries and "failed" in lut.entries[k]
                 and k not in pool_failed}
        todo: list[str | None] = sorted((k for k in keys if k not in lut.entries or k in retry),
                                        key=key_seed)
        report.reused = len(keys) - len(todo)
        report.retried = len(retry)
        if report.reused or report.retried:
            again = f", {report.retried} that failed tried again" if report.retried else ""
            print(f"resuming {out_path}: {report.reused} of {len(keys)} ops already measured; "
                  f"{len(todo)} to go{again}", file=sys.stderr)
        if shard_t is None or shard_t[0] == 1:
            if lut.fixed is None or "failed" in lut.fixed:
                todo.append(None)  # the skeleton, measured last
            else:
                report.skeleton = "reused"
        total = len(todo)
        report.setup_s = time.perf_counter() - start

        def record_load() -> None:
            report.load = merge_load(previous_load, monitor.to_dict())
            seen = lut.device.get("seen")
            if not isinstance(seen, dict):
                seen = lut.device["seen"] = {}
            seen["load"] = report.load

        def measure_one(key: str | None) -> dict[str, Any]:
            shape = _input_shape(t, key, preset.batch_size)
            if backend_cls.accepts == "onnx":
                path, failure = prepared[key]
                if failure is None and not Path(path).is_file():
                    # the export cache was cleared or pruned since the export phase
                    times: dict[str, float] = {}
                    path, failure, exported = _prepare(t, key, owner, preset.batch_size,
                                                       cache_dir, times)
                    report.count_export(exported, times)
                if failure is not None:
                    return {"failed": failure}
                model: Any = Path(path)
            else:
                t0 = time.perf_counter()
                try:
                    model = build_op_module(t, key, owner)
                except LanaError as exc:
                    return {"failed": f"build failed: {exc}"}
                finally:
                    report.build_s += time.perf_counter() - t0
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
            if key is not None:
                report.noisy += int(m.noisy)
            return m.to_dict(samples=keep_samples)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # building and exporting ops; backends set their own threads
        loop_start = None
        stopped_empty = False
        try:
            prepared: dict[str | None, tuple[str | None, str | None]] = {}
            if backend_cls.accepts == "onnx" and todo:
                report.jobs = resolve_jobs(jobs, len(todo))
                prepare_start = time.perf_counter()
                if progress:
                    bar = _ProgressBar(len(todo), str(out_path), title="exporting")
                try:
                    prepared = _prepare_all(todo, t, owner, preset.batch_size, cache_dir,
                                            report.jobs, (teacher, selector, input_shape), report,
                                            None if bar is None else lambda: bar.advance(""))
                finally:
                    if bar is not None:
                        bar.close()
                        bar = None
                    report.prepare_s = time.perf_counter() - prepare_start

            bar = _ProgressBar(total, str(out_path)) if progress and total else None
            message = monitor.start()  # the load before timing; waits if set-up was very short
            if message:
                warn(message)
            record_load()
            loop_start = time.perf_counter()
            for done, key in enumerate(todo, 1):
                entry = measure_one(key)
                t_write = time.perf_counter()
                writer.add(key, entry)
                report.write_s += time.perf_counter() - t_write
                if key is None:
                    report.skeleton = ("failed" if "failed" in entry else
                                       "noisy" if entry.get("noisy") else "measured")
                if "failed" in entry:
                    report.failed += int(key is not None)
                    msg = f"{key or 'skeleton'}: {entry['failed']}"
                    report.warnings.append(msg)
                    if bar is not None:
                        from rich.markup import escape

                        bar.console.print(f"[yellow]failed[/] {escape(msg)}")
                else:
                    report.measured += int(key is not None)
                checks = monitor.checks
                message = monitor.check()
                if message:
                    warn(message)
                if monitor.checks != checks:
                    record_load()
                if bar is not None:
                    bar.advance(key or "skeleton")
                if on_progress is not None:
                    on_progress(done, total, key or "skeleton")
        except BaseException:
            # Stopped before anything was timed (in the export phase, say): a file this call made
            # holds nothing to resume, and would only make the same command ask for --resume.
            stopped_empty = (fresh and report.measured == 0 and report.failed == 0
                             and report.skeleton is None)
            raise
        finally:
            torch.set_num_threads(threads)
            if monitor.checks:
                message = monitor.finish()
                if message:
                    warn(message)
                record_load()
            t_write = time.perf_counter()
            writer.flush()  # on success, Ctrl-C or any error: nothing measured is lost
            if stopped_empty:
                out_path.unlink(missing_ok=True)
            report.write_s += time.perf_counter() - t_write
            if bar is not None:
                bar.close()
            if loop_start is not None:
                report.loop_s = time.perf_counter() - loop_start
            report.wall_s = time.perf_counter() - start
        backup_path(out_path).unlink(missing_ok=True)  # complete: the LUT it replaced can go
        return report


class _ProgressBar:
    """A rich progress bar with rate and ETA on stderr."""

    def __init__(self, total: int, label: str, title: str = "profiling") -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn(f"[bold]{title}[/]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[op]}"), console=self.console,
                                 transient=False)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, op="")

    def advance(self, key: str) -> None:
        self.progress.update(self.task, advance=1, op=key[:60])

    def close(self) -> None:
        self.progress.stop()


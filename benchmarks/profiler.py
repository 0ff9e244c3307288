"""How fast and how trustworthy ``lana-profile`` is on this machine.

Figures (printed; ``--json`` for machines):

* throughput: ops profiled per minute, and where the time goes per op (set-up, export phase,
  session build, warm-up, timed iterations, journal/LUT writes);
* repeatability: two independent profiles of the same ops (two ``profile`` calls, each op in a fresh
  ONNX Runtime session, separate LUT files; only the ONNX export cache is shared, i.e. the very same
  files are timed), |A - B| / A per op (median, p95);
* agreement with an independent timer, per op (share within 10 %, deviation quantiles):

  - ONNX Runtime, headline: our LUT median (one whole ``run_with_iobinding`` call, as the backend
    times it) against ORT's own ``model_run`` event, its C++ clock around ``InferenceSession::Run``,
    read from a profiled session driven through the same IO binding in the same way.  Two things
    separate the two clocks, and both are measured and printed: the Python binding's cost outside
    ``Run`` (our clock minus ``model_run`` on the very same calls) and the profiler's own cost
    inside ``model_run`` (per kernel).  The agreement is also shown with ``model_run`` moved by these two constants, the
    same two numbers for every op.
  - ONNX Runtime, timing core: our LUT median against ``torch.utils.benchmark.Timer``
    (``blocked_autorange``) timing the very same call on the same session: an independent
    implementation of warm-up, repetition and statistics.
  - ONNX Runtime, secondary: the node events summed; they leave out ``Run``'s own fixed cost (input
    checks, executor set-up, output binding), which dominates small ops.
  - PyTorch: our torch backend against ``torch.utils.benchmark.Timer`` on the same module, both in
    inference mode with the same threads: ``blocked_autorange`` (median of block means, torch's usual
    figure) and a per-call median (``timeit(1)`` repeated: the statistic a LUT uses).

  Each op is timed by both right after each other, so machine drift between the two is small.
  On a machine shared with other work, pass ``--threads 1``: a thread pool whose threads wait on
  each other at every op barrier turns each preemption into a stall of the whole op.

Targets on cpu-ort: repeatability median <= 2 %, p95 <= 5 %; agreement within 10 % per op.  The
machine's load is recorded (``profilers.load``): figures taken beside other work are not idle-machine
figures.

    python benchmarks/profiler.py --teacher demo --pool small --device cpu-ort [--json]
    python benchmarks/profiler.py --teacher demo --pool full --shard 1/16 --agreement-ops 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUANTILES = (0.5, 0.9, 0.95, 1.0)


def _q(values: list[float], p: float) -> float:
    from profilers.timing import quantile

    return quantile(sorted(values), p)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def agreement(ours: list[float], reference: list[float]) -> dict[str, Any]:
    """Per-op |ours - reference| / reference: share within 10 %, quantiles, median signed ratio."""
    dev = [_rel(a, b) for a, b in zip(ours, reference)]
    return {"ops": len(dev), "within_10pct": sum(d <= 0.10 for d in dev) / len(dev),
            **{f"dev_p{round(p * 100)}": _q(dev, p) for p in QUANTILES},
            "median_ratio": _q([a / b for a, b in zip(ours, reference)], 0.5)}


def _fmt(a: dict[str, Any]) -> str:
    return (f"within 10% {a['within_10pct']:.0%} of {a['ops']} ops; |dev| p50 {a['dev_p50']:.1%}, "
            f"p90 {a['dev_p90']:.1%}, p95 {a['dev_p95']:.1%}, max {a['dev_p100']:.1%}; "
            f"median ratio {a['median_ratio']:.3f}")


def _ops(teacher: str, pool: str, shard: str | None, limit: int | None):
    """The teacher, each key's owning layer, and an even sample of ``limit`` keys of the shard."""
    import torch

    from lana.pool import build_pool
    from lana.profile import in_shard, key_owners, parse_shard
    from lana.teachers import create_teacher

    torch.manual_seed(0)
    t = create_teacher(teacher, pretrained=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        owner = key_owners(build_pool(t, pool))
    keys = [k for k in owner if in_shard(k, parse_shard(shard))]
    if limit and limit < len(keys):
        keys = keys[::max(1, len(keys) // limit)][:limit]
    return t, owner, keys


# ---------------------------------------------------------------------- throughput, repeatability
PHASES = ("setup_s", "prepare_s", "build_s", "export_s", "activate_s", "warmup_s", "timed_s",
          "write_s", "other_s")


def breakdown(r) -> dict[str, float]:
    """Seconds per measured op, by phase (build/export are summed over export processes)."""
    n = max(1, r.measured)
    warmup = r.measure_s - r.timed_s
    other = r.loop_s - r.measure_s - r.activate_s - r.write_s
    if r.prepare_s == 0:  # a module backend builds ops inside the loop
        other -= r.build_s
    values = {"setup_s": r.setup_s, "prepare_s": r.prepare_s, "build_s": r.build_s,
              "export_s": r.export_s, "activate_s": r.activate_s, "warmup_s": warmup,
              "timed_s": r.timed_s, "write_s": r.write_s, "other_s": other}
    return {k: round(v / n, 5) for k, v in values.items()}


def two_profiles(device: str, teacher: str, pool: str, shard: str | None, work: Path, cache: Path,
                 jobs: int | None) -> dict[str, Any]:
    """Profile twice into separate files; throughput, per-op phases, repeatability."""
    from lana.lut import Lut
    from lana.profile import profile

    reports = []
    for name in ("a", "b"):
        reports.append(profile(device, teacher, pool=pool, shard=shard, out=work / f"{name}.json",
                               force=True, cache_dir=cache, jobs=jobs))
    a, b = (Lut.load(work / f"{n}.json") for n in ("a", "b"))
    common = [k for k in a.entries if a.has(k) and b.has(k)]
    rel = [_rel(b.latency(k), a.latency(k)) for k in common]
    return {
        "ops": reports[0].total, "failed": reports[0].failed,
        "noisy": [r.noisy for r in reports],
        "wall_s": [round(r.wall_s, 2) for r in reports],
        "ops_per_min_wall": [round(r.measured / r.wall_s * 60, 1) for r in reports],
        "ops_per_min_loop": [round(r.measured / r.loop_s * 60, 1) for r in reports],
        "timed_share_of_wall": [round(r.timed_s / r.wall_s, 3) for r in reports],
        "per_op_s": [breakdown(r) for r in reports],
        "jobs": [r.jobs for r in reports], "exported": [r.exported for r in reports],
        "load": [r.load for r in reports],
        "repeat_ops": len(rel), "repeat_median": _q(rel, 0.5), "repeat_p95": _q(rel, 0.95),
        "repeat_max": max(rel), "fixed_ms": [a.fixed_ms, b.fixed_ms],
    }


# ------------------------------------------------------------------------------ ONNX Runtime
def _ort_session(path: Path, threads: int, level: str, profile_prefix: Path | None):
    """A session with the backend's options (and ORT's profiler on, when a prefix is given)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _bind(session, shape: tuple[int, ...]):
    """Input and output bound once as OrtValues, as the backend binds them."""
    import numpy as np
    import onnxruntime as ort

    meta = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outputs = session.run(None, {meta.name: x})
    binding = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(x, "cpu", 0)]
    binding.bind_ortvalue_input(meta.name, values[0])
    for out_meta, array in zip(session.get_outputs(), outputs):
        values.append(ort.OrtValue.ortvalue_from_numpy(np.empty_like(array), "cpu", 0))
        binding.bind_ortvalue_output(out_meta.name, values[-1])
    return binding, values


def ort_profiled(path: Path, shape: tuple[int, ...], threads: int, level: str, runs: int,
                 warm: int, tmp: Path) -> dict[str, float]:
    """ORT's own clock on ``runs`` calls made exactly as the backend makes them.

    Returns medians (ms) of: ``model_run`` (ORT's C++ clock around Run), the node kernel events
    summed, our clock around the same calls, and (per call) our clock minus ``model_run``: the
    binding's cost outside Run; plus the kernels a run executes.  ORT truncates event times to whole
    microseconds; half a microsecond is added back so the medians are not biased low.
    """
    session = _ort_session(path, threads, level, tmp / "ort")
    binding, values = _bind(session, shape)
    for _ in range(warm):
        session.run_with_iobinding(binding)
    clock: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        clock.append((time.perf_counter() - t0) * 1e3)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    model_runs = model_runs[-runs:]  # the session's own first run (output shapes) and warm-up dropped
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    node_sums, durations, kernels = [], [], []
    for run in model_runs:
        lo, hi = run["ts"], run["ts"] + run["dur"]
        inside = [e["dur"] + 0.5 for e in nodes if lo <= e["ts"] <= hi]
        node_sums.append(sum(inside) / 1e3)
        durations.append((run["dur"] + 0.5) / 1e3)
        kernels.append(len(inside))
    outside = [c - d for c, d in zip(clock, durations)]
    return {"model_run_ms": statistics.median(durations), "node_sum_ms": statistics.median(node_sums),
            "clock_ms": statistics.median(clock), "outside_run_ms": statistics.median(outside),
            "kernels": int(statistics.median(kernels))}


def ort_agreement(device: str, teacher: str, pool: str, shard: str | None, cache: Path, work: Path,
                  limit: int | None) -> dict[str, Any]:
    """Our ORT backend vs ONNX Runtime's own profiler on the same exported op files."""
    from lana.export import export_onnx
    from lana.profile import build_op_module
    from lana.spec import parse_key
    from profilers import get_backend, load_preset
    from profilers.system import library_version

    preset = load_preset(device)
    config = preset.backend_config()
    level = dict(preset.options).get("graph_optimization_level", "all")
    t, owner, keys = _ops(teacher, pool, shard, limit)
    rows = []
    backend = get_backend("ort")
    for key in keys:
        module = build_op_module(t, key, owner)
        shape = (preset.batch_size, *parse_key(key).in_shape)
        path = export_onnx(module, shape, cache_dir=cache)
        with backend(path, shape, config) as b:
            ours = b.measure(preset.protocol).median
            blocked = _blocked_autorange(b.run, config.threads or 1)
        runs = max(30, min(300, int(0.1 / max(ours, 1e-3) * 1e3)))
        row = {"key": key, "ours_ms": ours, "blocked_autorange_ms": blocked,
               **ort_profiled(path, shape, config.threads or 1, level, runs, 5, work)}
        rows.append(row)
    ours = [r["ours_ms"] for r in rows]
    model_run = [r["model_run_ms"] for r in rows]
    # The profiler's own cost inside model_run: a profiled session's calls vs ours, per kernel.
    inflation = [(r["clock_ms"] - r["ours_ms"]) / r["kernels"] for r in rows if r["kernels"]]
    per_kernel = _q(inflation, 0.5) if inflation else 0.0
    outside = _q([r["outside_run_ms"] for r in rows], 0.5)
    adjusted = [r["model_run_ms"] + outside - per_kernel * r["kernels"] for r in rows]
    big = [r for r in rows if r["ours_ms"] >= 0.1]
    return {
        "ops": len(rows), "onnxruntime": library_version("onnxruntime"),
        "vs_model_run": agreement(ours, model_run),
        "outside_run_us": {f"p{round(p * 100)}": _q([r["outside_run_ms"] * 1e3 for r in rows], p)
                           for p in (0.1, 0.5, 0.9)},
        "profiler_cost_per_kernel_us": per_kernel * 1e3,
        "vs_model_run_adjusted": agreement(ours, adjusted) if all(v > 0 for v in adjusted) else None,
        "vs_blocked_autorange": agreement(ours, [r["blocked_autorange_ms"] for r in rows]),
        "vs_node_sum": agreement(ours, [r["node_sum_ms"] for r in rows]),
        "vs_node_sum_ge_0.1ms": agreement([r["ours_ms"] for r in big],
                                          [r["node_sum_ms"] for r in big]) if big else None,
        "median_ours_minus_node_sum_us": _q([(r["ours_ms"] - r["node_sum_ms"]) * 1e3
                                             for r in rows], 0.5),
        "worst": sorted(rows, key=lambda r: -_rel(r["ours_ms"], r["model_run_ms"]))[:3],
        "rows": rows,
    }


def _blocked_autorange(fn, threads: int) -> float:
    """``torch.utils.benchmark.Timer(...).blocked_autorange`` of ``fn()``, median in ms."""
    import torch.utils.benchmark as tb

    timer = tb.Timer("fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=0.2).median * 1e3


# ------------------------------------------------------------------------------------ PyTorch
def torch_agreement(device: str, teacher: str, pool: str, shard: str | None,
                    limit: int) -> dict[str, Any]:
    """Our torch-CPU backend vs ``torch.utils.benchmark.Timer`` on the same modules."""
    import torch
    import torch.utils.benchmark as tb

    from lana.profile import build_op_module
    from lana.spec import parse_key
    from profilers import get_backend, load_preset

    preset = load_preset(device)
    config = preset.backend_config()
    t, owner, keys = _ops(teacher, pool, shard, limit)
    rows = []
    for key in keys:
        module = build_op_module(t, key, owner)
        shape = (preset.batch_size, *parse_key(key).in_shape)
        with get_backend("torch")(module, shape, config) as b:
            ours = b.measure(preset.protocol).median
        x = torch.randn(shape)
        timer = tb.Timer("m(x)", globals={"m": module, "x": x}, num_threads=config.threads or 1)
        with torch.inference_mode():  # as the backend runs it (thread-local: the Timer inherits it)
            timer.timeit(3)
            calls = max(15, min(300, int(100 / max(ours, 0.05))))
            per_call = statistics.median(timer.timeit(1).median for _ in range(calls)) * 1e3
            blocked = timer.blocked_autorange(min_run_time=0.2).median * 1e3
        rows.append({"key": key, "ours_ms": ours, "blocked_autorange_ms": blocked,
                     "per_call_median_ms": per_call})
    ours = [r["ours_ms"] for r in rows]
    return {"ops": len(rows),
            "vs_blocked_autorange": agreement(ours, [r["blocked_autorange_ms"] for r in rows]),
            "vs_per_call_median": agreement(ours, [r["per_call_median_ms"] for r in rows]),
            "worst": sorted(rows, key=lambda r: -_rel(r["ours_ms"], r["blocked_autorange_ms"]))[:3],
            "rows": rows}


def _with_threads(device: str, threads: int, work: Path) -> str:
    """A user preset file: ``device`` with another thread count."""
    path = work / f"{Path(device).stem}-t{threads}.toml"
    path.write_text(f'extends = "{device}"\nthreads = {threads}\n')
    return str(path)


def _print(out: dict[str, Any]) -> None:
    load = out["load"]
    print(f"{out['teacher']}/{out['pool']}{' shard ' + out['shard'] if out['shard'] else ''} on "
          f"{out['device']} ({out['cpu']}), threads {out['threads']}; other work "
          f"{load['others_start']} CPUs before, {load['others_end']} after, peak {load['others_peak']} "
          f"of {load['cpus']} (load average {load['start']} -> {load['end']})"
          + ("; BUSY: these are not idle-machine figures" if load["busy"] else ""))
    if "profiles" in out:
        p = out["profiles"]
        print(f"throughput    {p['ops']} ops; {p['ops_per_min_wall']} ops/min (whole run), "
              f"{p['ops_per_min_loop']} ops/min (timing loop); runs took {p['wall_s']} s; export "
              f"jobs {p['jobs']}, files exported {p['exported']}")
        for name, per_op in zip("AB", p["per_op_s"]):
            print(f"per op [{name}]    "
                  + ", ".join(f"{k[:-2]} {v * 1e3:.1f} ms" for k, v in per_op.items()))
        print(f"repeatability |A-B|/A over {p['repeat_ops']} ops: median {p['repeat_median']:.2%} "
              f"(target <= 2%), p95 {p['repeat_p95']:.2%} (target <= 5%), max {p['repeat_max']:.2%}; "
              f"noisy {p['noisy']}; machine busy during the runs: "
              f"{[bool(load.get('busy')) for load in p['load']]}; CPUs contended from outside: "
              f"{[bool(load.get('contended')) for load in p['load']]} (parallel probe speed-up "
              f"min {[load.get('parallel_speedup_min') for load in p['load']]})")
    if "ort_agreement" in out:
        a = out["ort_agreement"]
        o = a["outside_run_us"]
        print(f"ORT model_run (ORT's clock around the same Run call): {_fmt(a['vs_model_run'])}")
        print(f"  not seen by model_run: the binding's cost outside Run, {o['p50']:.1f} us per call "
              f"(p10 {o['p10']:.1f}, p90 {o['p90']:.1f}); seen only by it: the profiler's own cost, "
              f"{a['profiler_cost_per_kernel_us']:.1f} us per kernel")
        if a["vs_model_run_adjusted"]:
            print(f"  model_run + {o['p50']:.1f} us - {a['profiler_cost_per_kernel_us']:.1f} us x "
                  f"kernels: {_fmt(a['vs_model_run_adjusted'])}")
        print(f"ORT timing core vs torch.utils.benchmark blocked_autorange, same call: "
              f"{_fmt(a['vs_blocked_autorange'])}")
        print(f"ORT node events summed (leave out Run's fixed cost, ours - nodes median "
              f"{a['median_ours_minus_node_sum_us']:.1f} us): {_fmt(a['vs_node_sum'])}"
              + (f"; ops >= 0.1 ms: {_fmt(a['vs_node_sum_ge_0.1ms'])}"
                 if a["vs_node_sum_ge_0.1ms"] else ""))
    if "torch_agreement" in out:
        tg = out["torch_agreement"]
        print(f"torch Timer   blocked_autorange: {_fmt(tg['vs_blocked_autorange'])}")
        print(f"              per-call median:   {_fmt(tg['vs_per_call_median'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu-ort")
    parser.add_argument("--teacher", default="demo")
    parser.add_argument("--pool", default="small")
    parser.add_argument("--shard", help="i/n: a stable sample of the pool (e.g. 1/16 of a full pool)")
    parser.add_argument("--agreement-ops", type=int, default=0,
                        help="ops compared with ORT's profiler, an even sample (0: all, -1: skip)")
    parser.add_argument("--torch-ops", type=int, default=20,
                        help="ops compared with torch.utils.benchmark (0: skip)")
    parser.add_argument("--no-profiles", action="store_true",
                        help="skip the two profiles (throughput, repeatability)")
    parser.add_argument("--jobs", type=int,
                        help="export processes of the profiles (lana-profile --jobs)")
    parser.add_argument("--threads", type=int,
                        help="override the presets' thread count (1 on a machine shared with others)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    from profilers.load import LoadMonitor, niceness
    from profilers.system import cpu_model

    monitor = LoadMonitor(args.threads or 1)
    monitor.start()
    out: dict[str, Any] = {
        "device": args.device, "teacher": args.teacher, "pool": args.pool, "shard": args.shard,
        "cpu": cpu_model(), "threads": args.threads or "preset",
        "niceness": niceness()}
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        device, torch_device = args.device, "cpu-torch"
        if args.threads:
            device, torch_device = (_with_threads(d, args.threads, work) for d in (device, torch_device))
        start = time.perf_counter()
        if not args.no_profiles:
            out["profiles"] = two_profiles(device, args.teacher, args.pool, args.shard, work, cache,
                                           args.jobs)
        if args.agreement_ops >= 0:
            out["ort_agreement"] = ort_agreement(device, args.teacher, args.pool, args.shard, cache,
                                                 work, args.agreement_ops or None)
        if args.torch_ops:
            out["torch_agreement"] = torch_agreement(torch_device, args.teacher, args.pool,
                                                     args.shard, args.torch_ops)
        out["bench_s"] = round(time.perf_counter() - start, 1)
    monitor.finish()
    out["load"] = monitor.to_dict()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        _print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Interpreter overhead in ``*-torch`` LUT entries: Python eager vs the native C++ timer.

A ``*-torch`` LUT times each candidate op from Python, so every entry includes the interpreter's
per-call cost (module ``__call__``, hooks, argument parsing of each aten call). For a handful of
typical conv blocks this script measures, on the CPU with the same thread count and the same
input:

* ``eager``     the ``nn.Module`` called from Python (what a ``*-torch`` LUT records),
* ``script-py`` the same module scripted and loaded with ``torch.jit.load``, called from Python,
* ``native``    that scripted file timed by ``lana_torch_bench`` with no Python in the loop,

and prints the overhead ``eager - native`` in ms and as a share of the eager median. The three are
measured in interleaved rounds (median of the round medians), so drift on a shared machine hits
them alike.

    python benchmarks/native_overhead.py                 # table
    python benchmarks/native_overhead.py --json          # one JSON object on stdout
    python benchmarks/native_overhead.py --threads 2 --rounds 5 --ops conv3x3_bn_relu,dw_separable
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script from a checkout: make `profilers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class OpCase:
    """One op to compare: a factory for the block and the input it is timed on."""

    name: str  # row label
    factory: Callable[[], Any]  # builds the torch.nn block (eval mode is set by the caller)
    input_shape: tuple[int, ...]  # NCHW input, batch 1 as in a latency LUT


def _cases() -> list[OpCase]:
    from torch import nn

    def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                    act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class MBConv(nn.Module):
        """Inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, skip connection."""

        def __init__(self, c: int, expand: int) -> None:
            super().__init__()
            hidden = c * expand
            self.expand = conv_bn_act(c, hidden, 1, act=nn.SiLU)
            self.dw = conv_bn_act(hidden, hidden, 3, groups=hidden, act=nn.SiLU)
            self.project = conv_bn_act(hidden, c, 1, act=None)

        def forward(self, x):
            return x + self.project(self.dw(self.expand(x)))

    class SqueezeExcite(nn.Module):
        """Channel attention: many tiny ops, so the per-call cost dominates."""

        def __init__(self, c: int, reduced: int) -> None:
            super().__init__()
            self.reduce = nn.Conv2d(c, reduced, 1)
            self.expand = nn.Conv2d(reduced, c, 1)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            s = self.expand(nn.functional.silu(self.reduce(s)))
            return x * s.sigmoid()

    return [
        OpCase("conv1x1_tiny", lambda: conv_bn_act(16, 16, 1), (1, 16, 7, 7)),
        OpCase("squeeze_excite", lambda: SqueezeExcite(64, 16), (1, 64, 14, 14)),
        OpCase("dw_separable", lambda: nn.Sequential(conv_bn_act(64, 64, 3, groups=64),
                                                     conv_bn_act(64, 64, 1, act=None)),
               (1, 64, 14, 14)),
        OpCase("mbconv_e4", lambda: MBConv(24, 4), (1, 24, 28, 28)),
        OpCase("conv3x3_bn_relu", lambda: conv_bn_act(32, 32, 3), (1, 32, 28, 28)),
        OpCase("conv3x3_wide", lambda: conv_bn_act(64, 64, 3), (1, 64, 56, 56)),
    ]


def time_python(fn: Callable[[Any], Any], x: Any, *, warmup_s: float, warmup_iters: int,
                min_iters: int, min_time_s: float, max_iters: int) -> list[float]:
    """Samples (ms) of ``fn(x)`` from Python: warm-up by time and count, then at least
    ``min_iters`` iterations and ``min_time_s`` seconds, one perf_counter_ns pair per iteration,
    GC off, under ``torch.inference_mode`` (the native timer uses InferenceMode too)."""
    import torch

    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with torch.inference_mode():
            start, n = clock(), 0
            while n < warmup_iters or clock() - start < warmup_s * 1e9:
                fn(x)
                n += 1
            samples: list[float] = []
            start = clock()
            while True:
                t0 = clock()
                fn(x)
                t1 = clock()
                samples.append((t1 - t0) / 1e6)
                if len(samples) >= max_iters or (len(samples) >= min_iters
                                                 and t1 - start >= min_time_s * 1e9):
                    return samples
    finally:
        if gc_was_enabled:
            gc.enable()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_interop_threads(1)  # before any parallel work, like the native timer
    torch.set_num_threads(args.threads)
    from profilers import native

    target = Path(args.build_dir) if args.build_dir else native.default_build_dir()
    before = native.build_info(target)
    t0 = time.perf_counter()
    build_dir = native.build_native(target)
    wall = time.perf_counter() - t0
    after = native.build_info(build_dir)
    reused = bool(before) and before == after
    protocol = {"warmup_s": args.warmup_s, "warmup_iters": args.warmup_iters,
                "min_iters": args.min_iters, "min_time_s": args.min_time_s,
                "max_iters": args.max_iters}

    cases = _cases()
    if args.ops:
        wanted = [n.strip() for n in args.ops.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise SystemExit(f"error: unknown op(s) {unknown}; valid: {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            torch.manual_seed(0)
            module = case.factory().eval()
            path = native.save_torchscript(module, case.input_shape, Path(tmp) / f"{case.name}.pt")
            scripted = torch.jit.load(str(path))
            x = torch.randn(case.input_shape)
            rounds: dict[str, list[float]] = {"eager": [], "script_py": [], "native": []}
            native_last: dict[str, Any] = {}
            for _ in range(args.rounds):
                rounds["eager"].append(statistics.median(time_python(module, x, **protocol)))
                rounds["script_py"].append(statistics.median(time_python(scripted, x, **protocol)))
                native_last = native.time_torchscript(
                    path, case.input_shape, threads=args.threads, interop_threads=1,
                    build_dir=build_dir, retries=0, malloc=args.malloc, **protocol)
                rounds["native"].append(native_last["median"])
            eager, script_py, nat = (statistics.median(rounds[k]) for k in ("eager", "script_py", "native"))
            rows.append({
                "op": case.name, "input_shape": list(case.input_shape),
                "eager_ms": eager, "script_py_ms": script_py, "native_ms": nat,
                "overhead_ms": eager - nat, "overhead_pct": 100.0 * (eager - nat) / eager,
                "script_call_overhead_ms": script_py - nat,
                "rounds": rounds, "native_threads": native_last.get("threads"),
                "native_iqr_ms": native_last.get("iqr"), "native_n": native_last.get("n"),
            })
    return {
        "benchmark": "native_overhead", "torch_version": torch.__version__,
        "python": platform.python_version(), "cpu": _cpu_model(), "threads": args.threads,
        "protocol": protocol, "rounds": args.rounds, "native_malloc": args.malloc,
        "build": {"dir": str(build_dir), "build_s": after.get("build_s"), "reused": reused,
                  "call_s": round(wall, 3), "skipped": after.get("skipped", {})},
        "ops": rows,
    }


def _print_table(result: dict[str, Any]) -> None:
    b = result["build"]
    print(f"torch {result['torch_version']}, {result['cpu']}, threads={result['threads']}, "
          f"rounds={result['rounds']}, native malloc={result['native_malloc']}")
    state = "reused" if b["reused"] else "built now"
    print(f"native build: {state} ({b['build_s']} s when built) in {b['dir']}")
    header = (f"{'op':<17} {'input':<14} {'eager ms':>9} {'script-py':>10} {'native ms':>10} "
              f"{'overhead ms':>12} {'overhead %':>11}")
    print(header)
    print("-" * len(header))
    for r in result["ops"]:
        shape = "x".join(str(d) for d in r["input_shape"])
        print(f"{r['op']:<17} {shape:<14} {r['eager_ms']:>9.4f} {r['script_py_ms']:>10.4f} "
              f"{r['native_ms']:>10.4f} {r['overhead_ms']:>12.4f} {r['overhead_pct']:>10.1f}%")
    print("overhead = eager - native, % of the eager median (the share of a *-torch LUT entry "
          "that is Python)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (both sides)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per op")
    parser.add_argument("--ops", default="", help="comma-separated subset of ops")
    parser.add_argument("--warmup-s", type=float, default=0.1)
    parser.add_argument("--warmup-iters", type=int, default=10)
    parser.add_argument("--min-iters", type=int, default=50)
    parser.add_argument("--min-time-s", type=float, default=0.5)
    parser.add_argument("--max-iters", type=int, default=20000)
    parser.add_argument("--malloc", choices=("warm", "default"), default="warm",
                        help="native heap policy (see profilers/native/torch_bench.cpp)")
    parser.add_argument("--build-dir", default=None, help="native build directory (default: cache)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be at least 1")
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

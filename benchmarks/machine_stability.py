"""Is this machine steady enough to build a LUT on?  Op latencies over repeated passes, and over time.

A LUT is only as repeatable as the machine under it.  On a virtual machine whose hardware is shared,
latencies can change for minutes at a time with nothing running inside the machine, invisibly to
``/proc/stat``, the load average and the steal counter.  This benchmark shows it directly:

* passes: ``--ops`` ops of a pool (an even sample, built and exported as ``lana-profile`` does) are
  timed ``--passes`` times over with the device preset's protocol, each op between two runs of the
  parallel probe (:func:`profilers.load.parallel_probe`).  Per pass it prints the median of
  latency / the op's fastest latency over all passes, and the same per block of ``--block`` ops in
  timing order (a block slow in one pass only is a slow period of the machine), and how slow ops
  were while both probes around them read normal (a slowdown the probe cannot see);
* watch (``--watch S``): one reference op (the teacher's op of the middle layer) timed every 0.2 s
  for S seconds; per 5-second window, the median latency / the fastest, and the probe's speed-up.

On a steady machine every ratio stays near 1.00.  Compare ratios within one run only.

    python benchmarks/machine_stability.py --teacher efficientnet_b0 --ops 200 --passes 4
    python benchmarks/machine_stability.py --passes 0 --watch 180 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _prepared(teacher: str, pool: str, n_ops: int, batch_size: int):
    """(key, ONNX path, input shape) of an even sample of ``n_ops`` ops of the pool, and of the
    teacher's op of the middle layer (the reference of ``--watch``), built as ``lana-profile``
    builds them; ops that fail to build or export are left out."""
    import torch

    from lana.errors import LanaError
    from lana.export import export_onnx
    from lana.pool import build_pool
    from lana.profile import build_op_module, key_owners, key_seed
    from lana.spec import parse_key
    from lana.teachers import create_teacher

    torch.manual_seed(0)
    t = create_teacher(teacher, pretrained=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer_pools = build_pool(t, pool)
        owner = key_owners(layer_pools)
        keys = sorted(owner, key=key_seed)  # the profile's own timing order
        if n_ops and n_ops < len(keys):
            keys = keys[::max(1, len(keys) // n_ops)][:n_ops]
        middle = next(k for k in layer_pools[len(layer_pools) // 2].keys
                      if k.startswith("teacher:"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ops = []
            for key in [*keys, middle]:
                shape = (batch_size, *parse_key(key).in_shape)
                try:
                    ops.append((key, export_onnx(build_op_module(t, key, owner), shape), shape))
                except LanaError:
                    continue
        finally:
            torch.set_num_threads(threads)
    reference = ops.pop() if ops and ops[-1][0] == middle else None
    return ops, reference


def passes(ops, preset, n_passes: int, block: int, probe) -> dict[str, Any]:
    from profilers import get_backend

    backend, config = get_backend(preset.backend), preset.backend_config()
    rows: dict[str, list[tuple[float, float | None, float | None]]] = {k: [] for k, _, _ in ops}
    for _ in range(n_passes):
        for key, path, shape in ops:
            before = probe() if probe else None
            with backend(path, shape, config) as b:
                latency = b.measure(preset.protocol).median
            after = probe() if probe else None
            rows[key].append((latency, before, after))
    fastest = {k: min(v[0] for v in r) for k, r in rows.items()}
    per_pass = []
    for p in range(n_passes):
        ratios = [rows[k][p][0] / fastest[k] for k, _, _ in ops]
        per_pass.append({"median": statistics.median(ratios),
                         "blocks": [round(statistics.median(ratios[i:i + block]), 3)
                                    for i in range(0, len(ratios), block)]})
    out: dict[str, Any] = {"ops": len(ops), "passes": n_passes, "per_pass": per_pass}
    if probe:
        from profilers.load import CONTENDED_EFFICIENCY, probe_threads

        normal = CONTENDED_EFFICIENCY * probe_threads(preset.resolved_threads() or 1)
        speedups = [s for r in rows.values() for _, a, b in r for s in (a, b) if s is not None]
        quiet = [lat / fastest[k] for k, r in rows.items() for lat, a, b in r
                 if a is not None and b is not None and min(a, b) >= normal]
        out["probes"] = len(speedups)
        out["probes_contended"] = sum(s < normal for s in speedups)
        if quiet:
            out["ratio_with_probes_normal"] = {
                "n": len(quiet), "median": statistics.median(quiet),
                "p90": sorted(quiet)[int(0.9 * (len(quiet) - 1))], "max": max(quiet)}
    return out


def watch(reference, preset, seconds: float, probe) -> dict[str, Any]:
    from profilers import get_backend
    from profilers.timing import Protocol

    short = Protocol(warmup_s=0.005, warmup_iters=2, min_iters=20, min_time_s=0.01,
                     max_iters=200, noise_threshold=1.0, retries=0)
    key, path, shape = reference
    samples = []
    start = time.monotonic()
    with get_backend(preset.backend)(path, shape, preset.backend_config()) as b:
        while time.monotonic() - start < seconds:
            latency = b.measure(short).median
            samples.append((time.monotonic() - start, latency, probe() if probe else None))
            time.sleep(0.2)
    fastest = min(s[1] for s in samples)
    windows: dict[int, list[tuple[float, float | None]]] = {}
    for t, latency, speedup in samples:
        windows.setdefault(int(t // 5), []).append((latency / fastest, speedup))
    return {"reference": key, "seconds": seconds, "samples": len(samples),
            "fastest_ms": fastest,
            "windows": [{"t_s": 5 * w, "ratio": round(statistics.median(r for r, _ in v), 3),
                         "probe": (round(statistics.median(s for _, s in v if s is not None), 2)
                                   if any(s is not None for _, s in v) else None)}
                        for w, v in sorted(windows.items())]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu-ort")
    parser.add_argument("--teacher", default="efficientnet_b0")
    parser.add_argument("--pool", default="small")
    parser.add_argument("--ops", type=int, default=200, help="ops timed per pass (0: all)")
    parser.add_argument("--passes", type=int, default=4, help="passes over the ops (0: none)")
    parser.add_argument("--block", type=int, default=20, help="ops per block in the printout")
    parser.add_argument("--watch", type=float, default=0.0, metavar="S",
                        help="also time one reference op every 0.2 s for S seconds")
    parser.add_argument("--no-probe", action="store_true", help="skip the parallel probe")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from profilers import load_preset
    from profilers.load import parallel_probe

    preset = load_preset(args.device)
    probe = None if args.no_probe else parallel_probe(preset.resolved_threads() or 1)
    ops, reference = _prepared(args.teacher, args.pool, args.ops, preset.batch_size)
    out: dict[str, Any] = {"device": preset.name, "teacher": args.teacher, "pool": args.pool}
    if args.passes > 0:
        out["passes"] = passes(ops, preset, args.passes, args.block, probe)
    if args.watch > 0 and reference is not None:
        out["watch"] = watch(reference, preset, args.watch, probe)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    if "passes" in out:
        p = out["passes"]
        print(f"{p['ops']} ops of {args.teacher}/{args.pool} on {preset.name}, {p['passes']} passes; "
              f"latency / the op's fastest, median per pass and per block of {args.block}:")
        for i, row in enumerate(p["per_pass"]):
            print(f"  pass {i}: {row['median']:.3f}  blocks " + " ".join(f"{b:.2f}"
                                                                     for b in row["blocks"]))
        if "probes" in p:
            print(f"parallel probe: {p['probes_contended']} of {p['probes']} readings contended")
            q = p.get("ratio_with_probes_normal")
            if q:
                print(f"  latency / fastest with both probes normal: median {q['median']:.3f}, "
                      f"p90 {q['p90']:.3f}, max {q['max']:.3f} ({q['n']} timings)")
    if "watch" in out:
        w = out["watch"]
        print(f"reference {w['reference']} every 0.2 s for {w['seconds']:.0f} s "
              f"(fastest {w['fastest_ms']:.4f} ms); per 5 s window, median latency / fastest "
              f"[probe speed-up]:")
        print("  " + " ".join(f"{x['ratio']:.2f}" + (f"[{x['probe']:.1f}]" if x["probe"] else "")
                              for x in w["windows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

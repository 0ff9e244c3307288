"""Ops per layer for every teacher and pool, ONNX export time per op, and the largest parity error.

    python benchmarks/pool_census.py [--json] [--teachers demo,efficientnet_b0]

Export and parity run over every op of the full pool at two geometries (a same-shape block and a
downsampling, channel-changing one), each exported fresh (no cache) and run in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings


def census(teachers: list[str] | None = None) -> dict:
    from lana.pool import build_pool
    from lana.teachers import create_teacher, list_teachers

    rows = {}
    for name in teachers or [t.name for t in list_teachers()]:
        t = create_teacher(name, pretrained=False)
        row = {"layers": len(t.layers)}
        for pool in ("full", "small", "single-shot"):
            counts = [len(lp.specs) for lp in build_pool(t, pool)]
            row[pool] = [min(counts), max(counts)]
        rows[name] = row
    return rows


def export_parity() -> dict:
    import numpy as np
    import torch

    from lana.export import export_onnx, run_onnx
    from lana.ops import candidate_specs, create_op, deploy

    geos = [((16, 12, 12), (16, 12, 12), 1), ((16, 13, 13), (24, 7, 7), 2)]
    times, worst = [], (0.0, "", 0.0)
    with tempfile.TemporaryDirectory() as cache:
        for geo in geos:
            for spec in candidate_specs(*geo, "full"):
                torch.manual_seed(0)
                module = deploy(create_op(spec).eval())
                x = torch.randn(2, *spec.in_shape)
                with torch.no_grad():
                    y = module(x)
                start = time.perf_counter()
                path = export_onnx(module, (2, *spec.in_shape), cache_dir=cache)
                times.append(time.perf_counter() - start)
                err = float(np.max(np.abs(run_onnx(path, x) - y.numpy())))
                rel = err / (1.0 + float(y.abs().max()))
                if rel > worst[0]:
                    worst = (rel, spec.key, err)
    return {"ops": len(times), "median_export_ms": 1e3 * statistics.median(times),
            "p90_export_ms": 1e3 * sorted(times)[int(0.9 * len(times))],
            "worst_rel_err": worst[0], "worst_abs_err": worst[2], "worst_op": worst[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--teachers", help="comma-separated teacher names (default: all)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = {"pools": census(args.teachers.split(",") if args.teachers else None),
                  "export": export_parity()}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name, row in result["pools"].items():
        print(f"{name:22s} {row['layers']:3d} layers  ops/layer: full {row['full'][0]}-{row['full'][1]}"
              f"  small {row['small'][0]}-{row['small'][1]}  single-shot "
              f"{row['single-shot'][0]}-{row['single-shot'][1]}")
    e = result["export"]
    print(f"export: {e['ops']} ops, median {e['median_export_ms']:.1f} ms, p90 {e['p90_export_ms']:.1f} ms;"
          f" largest parity error {e['worst_abs_err']:.2e} abs ({e['worst_rel_err']:.2e} rel) "
          f"on {e['worst_op']}")


if __name__ == "__main__":
    main()

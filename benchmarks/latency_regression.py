"""Latency regression benchmark for this project's CI (``cpu-ort``, about a minute on two cores).

Measures, on the ``demo`` teacher:

* **LUT prediction error** on a fixed set of assembled architectures (fixed seeds over the small
  pool, from near-teacher to cheap-op networks): the raw LUT sum against the end-to-end
  measurement, and the error left after an affine correction fitted leave-one-out on the same
  set (what calibration can reach).
* **Speed-up**: a fixed accelerated demo network (identity for the last block of each stage,
  MBConv e=1 k=3 elsewhere, the teacher's first and last layers) against the teacher, measured in
  one run as a ratio of alternating measurements, next to the LUT-predicted speed-up.
* **Solver time** of ``lana.search`` (k=10 at 0.5x) on the same LUT with seeded synthetic scores
  and on a paper-size synthetic table (skipped when that module is not installed).

The LUT is ``luts/cpu-ort/demo.json`` when it is there, current (same op code) and covers the
architectures; otherwise the benchmark profiles the small pool itself with a short protocol (kept
in ``$LANA_CACHE_DIR/benchmarks`` and reused while the op code is unchanged).

Results are one JSON object; ``--baseline`` compares them with ``benchmarks/baselines/
latency_regression.json`` (each metric with its own limit, a noise floor beyond the worst of repeated
runs, see the ``noise`` block of that file) and exits with status 1 on a regression.

    python benchmarks/latency_regression.py --baseline benchmarks/baselines/latency_regression.json
    python benchmarks/latency_regression.py --json --out result.json
    python benchmarks/latency_regression.py --save-baseline benchmarks/baselines/latency_regression.json \\
        --runs result1.json result2.json result3.json      # limits past the worst run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a checkout: make `lana` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_LUT = ROOT / "luts" / "cpu-ort" / "demo.json"
DEFAULT_BASELINE = Path(__file__).resolve().parent / "baselines" / "latency_regression.json"
SCHEMA = "lana.benchmark/1"

# Short protocol for a LUT the benchmark profiles itself (the preset's own is ~2.5x longer).
SHORT_PRESET = """\
description = "cpu-ort with a short protocol (latency regression benchmark)"
extends = "cpu-ort"
[protocol]
warmup_s = 0.01
warmup_iters = 2
min_iters = 10
min_time_s = 0.04
retries = 1
"""

# Gated metrics -> (direction, kind): "lower"/"higher" is better; tolerance absolute or relative.
# Not gated, reported only: the raw LUT error and the predicted speed-up, which compare a LUT
# measured at one time with the machine now (the same VM ran 1.8x faster or slower from one
# minute to the next while these baselines were taken), so they move with the machine.
METRICS = {
    "lut_error_affine_median": ("lower", "abs"),
    "lut_error_affine_max": ("lower", "abs"),
    "speedup_measured": ("higher", "rel"),
    "solver_s": ("lower", "rel"),
}
N_ARCHS = 16
SEEDS = tuple(range(1000, 1000 + N_ARCHS))


# ---------------------------------------------------------------------------------------------
# Architectures


def fixed_architectures(pool) -> list[tuple[str, ...]]:
    """N_ARCHS architectures drawn with fixed seeds, from near-teacher to heavily replaced.

    Architecture j keeps the teacher op with probability j / (N_ARCHS - 1); a replaced layer gets
    a random op among the cheapest third by FLOPs for even j (so the set reaches down to the
    latency of accelerated networks) and any op for odd j.  Nothing depends on a LUT.
    """
    from lana.pool import op_stats

    flops: dict[str, int] = {}
    for lp in pool:
        for spec in lp.specs[1:]:
            if spec.key not in flops:
                flops[spec.key] = op_stats(spec)[1]
    archs = []
    for j, seed in enumerate(SEEDS):
        rng = random.Random(seed)
        keep = j / (N_ARCHS - 1)
        ops = []
        for lp in pool:
            others = sorted(lp.keys[1:], key=lambda k: (flops[k], k))
            if j % 2 == 0:
                others = others[:max(1, len(others) // 3)]
            ops.append(lp.keys[0] if rng.random() < keep else rng.choice(others))
        archs.append(tuple(ops))
    return archs


def accelerated_architecture(pool) -> tuple[str, ...]:
    """Identity for the last block of each stage, MBConv e=1 k=3 elsewhere, teacher first/last."""
    n = len(pool)
    ops = []
    for i, lp in enumerate(pool):
        specs = {(s.family, tuple(sorted(s.params))): s.key for s in lp.specs}
        same = lp.layer.in_shape == lp.layer.out_shape and lp.layer.stride == 1
        last_of_stage = same and (i + 1 == n or pool[i + 1].layer.in_shape != pool[i + 1].layer.out_shape
                                  or pool[i + 1].layer.stride != 1)
        efn = specs.get(("efn", (("e", 1), ("k", 3), ("se", None))))
        if i in (0, n - 1):
            ops.append(lp.keys[0])
        elif last_of_stage and ("identity", ()) in specs:
            ops.append(specs[("identity", ())])
        else:
            ops.append(efn or lp.keys[0])
    return tuple(ops)


# ---------------------------------------------------------------------------------------------
# LUT


def cache_dir() -> Path:
    from lana.cache import cache_root

    return cache_root() / "benchmarks"


def choose_lut(teacher, archs: list[tuple[str, ...]], *, lut_path: str | None,
               log) -> tuple[Path, str, str]:
    """(LUT path, device to measure with, where it came from)."""
    from lana.lut import Lut, LutError
    from lana.profile import profile

    candidates = [Path(lut_path)] if lut_path else [SHIPPED_LUT]
    for path in candidates:
        if not path.exists():
            continue
        try:
            lut = Lut.load(path, teacher="demo", device="cpu-ort")
            needed = [k for a in archs for k in a]
            if all(lut.has(k) for k in needed) and lut.fixed is not None:
                return path, "cpu-ort", "shipped" if path == SHIPPED_LUT else "given"
            log(f"{path} does not cover the benchmark's architectures; profiling the small pool")
        except LutError as exc:
            log(f"not using {path}: {exc}")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    preset = root / "cpu-ort-short.toml"
    preset.write_text(SHORT_PRESET)
    from lana.ops import ops_fingerprint

    out = root / f"demo-small-{ops_fingerprint()}.json"
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = profile(str(preset), "demo", pool="small", out=out, resume=out.exists())
    log(f"profiled {report.measured} ops into {out} in {time.perf_counter() - start:.0f} s "
        f"({report.reused} reused)")
    return out, str(preset), "profiled (short protocol)"


# ---------------------------------------------------------------------------------------------
# Measurements


def loo_affine(raw: list[float], measured: list[float]) -> list[float]:
    """Leave-one-out predictions of an affine fit (Huber-robust, on relative error)."""
    from lana.calibrate import fit_model

    preds = []
    for i in range(len(raw)):
        keep = [j for j in range(len(raw)) if j != i]
        fit = fit_model("huber", [raw[j] for j in keep], [measured[j] for j in keep])
        preds.append(fit.predict(raw[i]))
    return preds


def solver_time(lut, log) -> dict[str, float] | None:
    """Median seconds of ``lana.search`` (k=10 at 0.5x) on the demo LUT with seeded synthetic
    scores, and on a paper-size synthetic table (46 layers x 197 ops); None when not installed."""
    try:
        import numpy as np

        from lana.search import Budget, SearchTable, search
        from lana.search.synthetic import synthetic_table
    except ImportError:
        log("lana.search is not installed; solver time skipped")
        return None
    rng = np.random.default_rng(0)
    ops, scores, costs = [], [], []
    for layer in lut.layers:
        keys = [k for k in layer["ops"] if lut.has(k)]
        lat = np.array([lut.latency(k) for k in keys])
        teacher_ms = lat[[k.startswith("teacher:") for k in keys]][0]
        s = np.maximum(0.0, 1.0 - lat / teacher_ms) + rng.exponential(0.2, len(keys))
        s[[k.startswith("teacher:") for k in keys]] = 0.0
        ops.append(keys)
        scores.append(s)
        costs.append(lat)
    tables = {
        "demo": (SearchTable([l["name"] for l in lut.layers], ops, scores, {"lut": costs},
                             fixed={"lut": lut.fixed_ms}, teacher="demo", pool=lut.pool), "lut"),
        "paper_size": (synthetic_table(46, 197, seed=0), "gpu"),
    }
    out = {}
    for name, (table, cost) in tables.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            search(table, [Budget(cost, "0.5x")], k=10)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    log(f"solver: demo {out['demo'] * 1e3:.0f} ms, paper-size {out['paper_size'] * 1e3:.0f} ms "
        f"(k=10, median of 3)")
    return out


def run(*, lut_path: str | None = None, repeats: int = 3, speedup_rounds: int = 9,
        log=print) -> dict[str, Any]:
    import torch

    from lana.assemble import Architecture, build_student, teacher_architecture
    from lana.bench import clean_ratio, interleaved
    from lana.calibrate import error_stats, fit_calibration, measure_architectures
    from lana.pool import build_pool
    from lana.teachers import create_teacher
    from lana.validate import lut_backend_config, lut_protocol, open_lut

    torch.set_num_threads(1)
    start = time.perf_counter()
    teacher = create_teacher("demo", pretrained=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pool = build_pool(teacher, "small")
    archs = fixed_architectures(pool)
    fast = accelerated_architecture(pool)
    path, device, source = choose_lut(teacher, archs + [fast], lut_path=lut_path, log=log)
    lut, preset = open_lut(path, device, teacher="demo")

    # 1. LUT prediction error on the fixed architectures.
    t0 = time.perf_counter()
    measured = [m for m, _ in measure_architectures(archs, lut, preset, repeats=repeats)]
    raw = [lut.predict_raw(a) for a in archs]
    raw_err = error_stats(raw, measured)
    aff_err = error_stats(loo_affine(raw, measured), measured)
    cal_err = error_stats([lut.predict(a) for a in archs], measured) if lut.calibration else None
    log(f"LUT error on {len(archs)} architectures: raw median {raw_err['median_abs']:.1%}, "
        f"affine (leave-one-out) median {aff_err['median_abs']:.1%} / worst "
        f"{aff_err['max_abs']:.1%} ({time.perf_counter() - t0:.0f} s)")

    # 2. Speed-up of the accelerated network over the teacher, one run, alternating.
    t0 = time.perf_counter()
    teacher_ops = teacher_architecture(teacher).ops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast_net, _ = build_student(Architecture("demo", "small", fast), teacher)
    shape = (lut.batch_size, *teacher.input_shape)
    t_ms, f_ms, _ = interleaved(teacher.model, shape, fast_net, shape, preset,
                                repeats=speedup_rounds, protocol=lut_protocol(lut),
                                config=lut_backend_config(lut, preset),
                                labels=("the teacher", "the accelerated network"))
    measured_speedup = clean_ratio(t_ms, f_ms)
    predicted_raw = lut.predict_raw(teacher_ops) / lut.predict_raw(fast)
    predicted = lut.predict(teacher_ops) / lut.predict(fast)
    # The calibration lana lut calibrate would choose, fitted on the fixed architectures.
    fit, _ = fit_calibration(raw, measured, archs)
    t_fit = fit.predict(lut.predict_raw(teacher_ops), teacher_ops)
    f_fit = fit.predict(lut.predict_raw(fast), fast)
    # A fit that predicts a non-positive latency is no prediction (the points were too noisy).
    predicted_affine = t_fit / f_fit if t_fit > 0 and f_fit > 0 else math.inf
    log(f"speed-up: measured {measured_speedup:.3f}x, LUT-predicted {predicted_raw:.3f}x raw, "
        f"{predicted_affine:.3f}x calibrated on the fixed set ({time.perf_counter() - t0:.0f} s)")

    # 3. Solver time.
    solver = solver_time(lut, log)

    metrics = {
        "lut_error_raw_median": raw_err["median_abs"], "lut_error_raw_max": raw_err["max_abs"],
        "lut_error_affine_median": aff_err["median_abs"], "lut_error_affine_max": aff_err["max_abs"],
        "lut_error_calibrated_median": cal_err["median_abs"] if cal_err else None,
        "speedup_measured": measured_speedup, "speedup_predicted_raw": predicted_raw,
        "speedup_predicted": predicted, "speedup_predicted_calibrated": predicted_affine,
        "speedup_error": abs(predicted_affine / measured_speedup - 1),
        "solver_s": solver["paper_size"] if solver else None,
        "solver_demo_s": solver["demo"] if solver else None,
    }
    return {
        "schema": SCHEMA, "benchmark": "latency_regression", "device": "cpu-ort",
        "lut": str(path), "lut_source": source, "metrics": metrics,
        "points": [{"raw_ms": r, "measured_ms": m} for r, m in zip(raw, measured)],
        "speedup_rounds": {"teacher_ms": [m.median for m in t_ms],
                           "accelerated_ms": [m.median for m in f_ms],
                           "noisy": [a.noisy or b.noisy for a, b in zip(t_ms, f_ms)]},
        "machine": {"cpu": _cpu(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "seconds": time.perf_counter() - start,
    }


def _cpu() -> str:
    from profilers.system import cpu_model

    return cpu_model()


# ---------------------------------------------------------------------------------------------
# Baselines


def compare(result: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per gated metric: value, baseline, tolerance, and whether it regressed."""
    rows = []
    for name, spec in baseline["metrics"].items():
        value = result["metrics"].get(name)
        base, tol = spec["value"], spec["tolerance"]
        direction, kind = spec["direction"], spec["kind"]
        if value is None or base is None:
            rows.append({"metric": name, "value": value, "baseline": base, "tolerance": tol,
                         "regression": False, "skipped": True})
            continue
        if kind == "rel":
            limit = base * (1 + tol) if direction == "lower" else base * (1 - tol)
        else:
            limit = base + tol if direction == "lower" else base - tol
        bad = value > limit if direction == "lower" else value < limit
        rows.append({"metric": name, "value": value, "baseline": base, "limit": limit,
                     "tolerance": tol, "kind": kind, "direction": direction, "regression": bad})
    return rows


def make_baseline(runs: list[dict[str, Any]], *, floor: dict[str, float] | None = None
                  ) -> dict[str, Any]:
    """A baseline from repeated runs: the median value, and a tolerance that puts the limit a
    noise floor beyond the worst run (the lowest speed-up, the largest error).

    This virtual machine switches between speed states, so the runs' values cluster in two groups
    rather than around one mean; a limit past the worst state seen passes both states, while a real
    regression lands beyond it.  ``floor`` is per metric (relative or absolute as the metric).
    """
    floor = floor or {"lut_error_affine_median": 0.06, "lut_error_affine_max": 0.15,
                      "speedup_measured": 0.08, "solver_s": 1.0}
    metrics = {}
    noise = {}
    for name, (direction, kind) in METRICS.items():
        values = [r["metrics"].get(name) for r in runs]
        values = [v for v in values if v is not None]
        if not values:
            continue
        med = statistics.median(values)
        worst = max(values) if direction == "lower" else min(values)
        margin = floor.get(name, 0.0)
        if kind == "rel":
            limit = worst * (1 + margin) if direction == "lower" else worst * (1 - margin)
            tol = abs(limit / med - 1) if med else math.inf
            spread = (max(values) - min(values)) / med if med else math.inf
        else:
            limit = worst + margin if direction == "lower" else worst - margin
            tol = abs(limit - med)
            spread = max(values) - min(values)
        metrics[name] = {"value": med, "tolerance": round(tol, 4), "direction": direction,
                         "kind": kind}
        noise[name] = {"runs": values, "spread": spread}
    return {"schema": SCHEMA + "-baseline", "benchmark": "latency_regression",
            "device": "cpu-ort", "metrics": metrics, "noise": noise,
            "machine": runs[0].get("machine"), "lut_source": runs[0].get("lut_source")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", help="LUT to use instead of luts/cpu-ort/demo.json")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per architecture")
    parser.add_argument("--baseline", help="compare with this baseline file; exit 1 on regression")
    parser.add_argument("--confirm", type=int, default=0, metavar="N",
                        help="on a regression, measure again up to N times; a metric fails only "
                             "when it regresses every time (a shared machine's noise passes, a "
                             "real regression does not)")
    parser.add_argument("--confirm-wait", type=float, default=0.0, metavar="S",
                        help="seconds to wait before each re-measurement, so that the repeats "
                             "sample a shared machine's slow and normal periods, which last minutes")
    parser.add_argument("--save-baseline", help="write a baseline from --runs (or this run)")
    parser.add_argument("--runs", nargs="*", help="result files of repeated runs for --save-baseline")
    parser.add_argument("--out", help="also write the result JSON here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)

    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    if args.save_baseline and args.runs:
        runs = [json.loads(Path(p).read_text()) for p in args.runs]
        base = make_baseline(runs)
        Path(args.save_baseline).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save_baseline).write_text(json.dumps(base, indent=1) + "\n")
        log(f"wrote {args.save_baseline} from {len(runs)} runs")
        return 0
    result = run(lut_path=args.lut, repeats=args.repeats, log=log)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    code = 0
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        rows = compare(result, baseline)
        for attempt in range(args.confirm):
            failing = {r["metric"] for r in rows if r["regression"]}
            if not failing:
                break
            wait = f" in {args.confirm_wait:g} s" if args.confirm_wait > 0 else ""
            log(f"  {', '.join(sorted(failing))} over the limit; measuring again{wait} to confirm "
                f"({attempt + 1}/{args.confirm})")
            time.sleep(max(0.0, args.confirm_wait))
            again = compare(run(lut_path=args.lut, repeats=args.repeats, log=log), baseline)
            for row, new_row in zip(rows, again):
                if row["regression"] and not new_row["regression"]:
                    row.update(new_row, confirmed_noise=True)
        result["comparison"] = rows
        for row in rows:
            if row.get("skipped"):
                log(f"  {row['metric']:<26} skipped")
                continue
            flag = "REGRESSION" if row["regression"] else "ok"
            log(f"  {row['metric']:<26} {row['value']:.4f} (baseline {row['baseline']:.4f}, "
                f"limit {row['limit']:.4f}) {flag}")
        if any(r["regression"] for r in rows):
            code = 1
    if args.save_baseline:
        Path(args.save_baseline).write_text(json.dumps(make_baseline([result]), indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        log(f"done in {result['seconds']:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())

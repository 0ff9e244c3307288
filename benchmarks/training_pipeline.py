"""The training pipeline on the demo teacher with the small pool, timed stage by stage.

pretrain -> score -> search (HiGHS, K solutions at the budget) -> select -> finetune, with the
stages' default settings, then the fine-tuned student's held-out top-1 against the teacher's.
Targets on 2 cores: pretrain <= 3 min, score < 1 min, select < 1 min, finetune <= 5 min, and the
student within 1.0 point of the teacher's top-1 at a 2x latency reduction (budget 0.5x).

Latency comes from a LUT: ``--lut FILE``, else the repository's ``luts/cpu-ort/demo.json`` when it
matches the current op code, else one profiled with the ``cpu-ort`` preset into ``--out`` (reused
when current); ``--flops`` uses FLOP counts instead (no profiling).

    python benchmarks/training_pipeline.py                 # table
    python benchmarks/training_pipeline.py --json          # one JSON object on stdout
    python benchmarks/training_pipeline.py --flops --budget 0.5 --k 10 --out runs/pipeline
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a checkout: make `lana` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_common import cost_table, score_matrix, solve_ilp, timed, write_search  # noqa: E402

TARGETS_S = {"pretrain": 180, "score": 60, "select": 60, "finetune": 300}
TARGET_DROP = 0.01


def lut_path(args: argparse.Namespace, out: Path, log) -> str | None:
    """The LUT to use: given, or profiled once per op-code version into ``out``."""
    if args.flops:
        return None
    if args.lut:
        return args.lut
    from lana.lut import Lut, LutError
    from lana.ops import ops_fingerprint
    from lana.profile import profile

    shipped = Path(__file__).resolve().parent.parent / "luts" / args.device / "demo.json"
    if shipped.is_file():
        try:
            lut = Lut.load(shipped, teacher="demo")
            from lana.pool import build_pool
            from lana.teachers import create_teacher

            lut.require([k for lp in build_pool(create_teacher("demo", pretrained=False),
                                                "small") for k in lp.keys])
            return str(shipped)
        except LutError as exc:
            log(f"not using {shipped}: {exc}")
    path = out / f"lut-demo-small-{args.device}-{ops_fingerprint()}.json"
    if path.exists():
        try:
            Lut.load(path, teacher="demo")
            return str(path)
        except LutError as exc:
            log(f"re-profiling: {exc}")
    log(f"profiling the small pool on {args.device} (once) ...")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile(args.device, "demo", pool="small", out=path)
    return str(path)


def run(args: argparse.Namespace, log) -> dict[str, Any]:
    import torch

    from lana.finetune import finetune
    from lana.pool import build_pool
    from lana.pretrain import open_teacher, pretrain
    from lana.score import score
    from lana.select import select

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="lana-pipeline-"))
    out.mkdir(parents=True, exist_ok=True)
    teacher = open_teacher("demo")
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    lut = lut_path(args, out, log)
    quiet = not args.progress
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pools = build_pool(teacher, "small")
        with timed(times, "pretrain", cpu):
            manifest = pretrain(teacher, "small", None, out / "pretrain", progress=not quiet,
                                resume=(out / "pretrain" / "pretrain.json").exists())
        log(f"pretrain: {times['pretrain']:.1f} s")
        with timed(times, "score", cpu):
            scores = score(out / "pretrain", teacher, "small", None, out / "scores.json",
                           progress=not quiet)
        log(f"score: {times['score']:.1f} s")
        with timed(times, "search", cpu):
            costs = cost_table(teacher, pools, lut)
            budget = args.budget * costs.teacher_total()
            sols = solve_ilp(score_matrix(scores), costs, budget, k=args.k)
            if not sols:
                raise SystemExit(f"no architecture fits {args.budget}x; raise --budget")
            search = write_search(out / "search.json", "demo", "small",
                                  [l.name for l in teacher.layers], sols, costs, budget,
                                  f"{args.budget:g}x")
        log(f"search: {times['search']:.1f} s, {len(sols)} solutions")
        with timed(times, "select", cpu):
            chosen = select(search, out / "pretrain", teacher, None, out / "select.json",
                            progress=not quiet)
        log(f"select: {times['select']:.1f} s")
        ft_out = out / "finetune"
        with timed(times, "finetune", cpu):
            metrics = finetune(out / "select.json", teacher, out / "pretrain", None, ft_out,
                               resume=(ft_out / "checkpoint.pt").exists(), progress=not quiet,
                               **({"epochs": args.finetune_epochs} if args.finetune_epochs
                                  else {}))
        log(f"finetune: {times['finetune']:.1f} s")
    student_cost = costs.total(chosen["ops"])
    return {
        "out": str(out), "threads": args.threads, "cost_source": costs.source,
        "cost_unit": costs.unit, "budget_ratio": args.budget,
        "teacher_cost": costs.teacher_total(), "student_cost": student_cost,
        "speedup": costs.teacher_total() / student_cost,
        "seconds": times, "cpu_seconds": cpu, "targets_s": TARGETS_S,
        "pretrain_epochs": manifest["epochs"], "finetune_epochs": metrics["epochs"],
        "teacher_top1": metrics["teacher_top1"], "student_top1": metrics["final_top1"],
        "top1_drop": metrics["top1_drop"], "val_top1_per_epoch": metrics["val_top1"],
        "selected_loss_before_finetune": chosen["selection"]["loss"],
        "solutions": len(sols),
        "ops": chosen["ops"],
        "meets": {**{k: times[k] <= v for k, v in TARGETS_S.items()},
                  "top1": metrics["top1_drop"] <= TARGET_DROP + 1e-9},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="run directory (default: a new temporary one)")
    p.add_argument("--lut", help="LUT of the demo teacher's small pool (default: profile one)")
    p.add_argument("--device", default="cpu-ort", help="preset to profile with (default: cpu-ort)")
    p.add_argument("--flops", action="store_true", help="FLOP counts instead of a LUT")
    p.add_argument("--budget", type=float, default=0.5, help="latency ratio (default: 0.5)")
    p.add_argument("--k", type=int, default=10, help="solutions searched (default: 10)")
    p.add_argument("--finetune-epochs", type=int, help="(default: lana finetune's)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--progress", action="store_true", help="show the stages' progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    start = time.perf_counter()
    result = run(args, log)
    result["total_s"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    s = result["seconds"]
    print(f"\nrun directory: {result['out']}  ({result['threads']} threads, costs: "
          f"{result['cost_source']})")
    for stage in ("pretrain", "score", "search", "select", "finetune"):
        target = TARGETS_S.get(stage)
        print(f"  {stage:<9} {s[stage]:7.1f} s wall {result['cpu_seconds'][stage]:7.1f} s CPU"
              + (f"   (target <= {target} s)" if target else ""))
    print(f"  total     {result['total_s']:7.1f} s")
    print(f"predicted cost: teacher {result['teacher_cost']:.3f} {result['cost_unit']}, student "
          f"{result['student_cost']:.3f} ({result['speedup']:.2f}x faster, budget "
          f"{result['budget_ratio']:g}x)")
    print(f"val top-1: teacher {100 * result['teacher_top1']:.2f}%, student "
          f"{100 * result['student_top1']:.2f}% ({100 * result['top1_drop']:+.2f} points lost; "
          f"target <= {100 * TARGET_DROP:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

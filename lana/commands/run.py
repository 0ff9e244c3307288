"""Run the whole pipeline: profile, pretrain, score, search, verify, select, finetune, validate, report.

With no arguments it accelerates the embedded default: the `demo` teacher on its bundled digits data,
measured with ONNX Runtime on this CPU (cpu-ort), to half the teacher's latency.  Every stage's
artifact goes into --out; re-running skips finished stages and resumes an interrupted one, and a new
--budget re-runs only the search onwards.  Before selection, the search's candidates are measured end
to end and those over the budget dropped; while fewer than three remain, the search runs again under
a limit corrected by what was measured (--verify-rounds times at most).  The result is
DIR/summary.json, DIR/report.md and its PNGs.
"""

from __future__ import annotations

import argparse
import json
import sys

from lana.cli import command_parser, layer_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "run", __doc__)
    p.add_argument("--teacher", default="demo",
                   help="registry name, see `lana teachers` (default: demo), or your own "
                        "network as path/to/file.py:factory (see --selector)")
    p.add_argument("--teacher-weights", metavar="FILE",
                   help="state_dict of the trained teacher (default: the weights it ships "
                        "with, or those a user module's factory loads)")
    layer_arguments(p)
    p.add_argument("--device", default="cpu-ort", help="device preset (default: cpu-ort)")
    p.add_argument("--budget", default="0.5x",
                   help="latency budget in ms or as a fraction of the teacher, e.g. 0.5x (default)")
    p.add_argument("--pool", default="small", help="candidate pool: small (default), full, single-shot")
    p.add_argument("--data", help="ImageFolder root (train/, val/); default: the embedded digits")
    p.add_argument("--lut", help="use this LUT instead of profiling (retargets the run)")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--calibrate", type=int, default=24, metavar="N",
                   help="architectures of the pool measured end to end to calibrate the LUT "
                        "(default 24; 0 keeps the raw LUT sum)")
    p.add_argument("--k", type=int, default=10, help="diverse architectures to evaluate (default 10)")
    p.add_argument("--overlap", type=float, default=0.7, help="max shared layers, fraction (0.7)")
    p.add_argument("--pretrain-epochs", type=int, help="epochs of layer-wise distillation")
    p.add_argument("--finetune-epochs", type=int, help="epochs of fine-tuning")
    p.add_argument("--images", type=int, help="cap the training images (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="measured latency may exceed the budget by this share (default 0.05)")
    p.add_argument("--verify-rounds", type=int, default=3, metavar="R",
                   help="re-searches while fewer than 3 candidates meet the budget measured end "
                   "to end (default 3; 0: measure once, no re-search)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="end-to-end measurements of each network in calibration, verify and "
                   "validation (default 3; more on a busy machine)")
    p.add_argument("--force", action="store_true", help="replace another run's artifacts in --out")
    p.add_argument("--json", action="store_true", help="print summary.json on stdout at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.run import run as run_pipeline

    summary = run_pipeline(
        teacher=args.teacher, teacher_weights=args.teacher_weights, selector=args.selector,
        input_shape=args.input_shape, device=args.device,
        budget=args.budget, pool=args.pool, data=args.data, out=args.out, force=args.force,
        lut=args.lut, k=args.k, overlap=args.overlap, seed=args.seed, pretrain_epochs=args.pretrain_epochs,
        finetune_epochs=args.finetune_epochs, images=args.images, tolerance=args.tolerance,
        calibrate=args.calibrate, verify_rounds=args.verify_rounds, repeats=args.repeats)
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        print(f"report: {args.out}/report.md", file=sys.stderr)
    return 0

"""Score every pretrained op by the loss change it causes alone in the teacher (paper Eq. 3).

a_ij = cross-entropy with op j in layer i - cross-entropy of the teacher, on --samples images of
the calib split (the teacher op scores 0).  The teacher's activations before layer i are computed
once per batch and reused for every op.  A run estimated to need more than 80 % of the memory
available (the layer outputs of a batch, the ops' working tensors and the images, at this input
shape and batch size) is refused before it starts; lower --batch-size or --input-shape.  Writes the
scores file lana search reads:
{"schema": "lana.scores/1", "teacher", "pool", "teacher_loss", "n_samples",
 "layers": [{"name", "scores": {op_key: loss change}}, ...]} (plus teacher_top1 and per-op top1).
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser, whole


def register(sub: argparse._SubParsersAction) -> None:
    from lana.commands.pretrain import add_common
    from lana.defaults import SCORE_BATCH_SIZE, SCORE_SAMPLES as DEFAULT_SAMPLES

    p = command_parser(sub, "score", __doc__)
    p.add_argument("--pretrain", help="lana pretrain output directory (not needed for the "
                   "single-shot pool)")
    p.add_argument("--teacher", required=True, help="registry name or path/to/file.py:factory")
    p.add_argument("--pool", default="small", help="full, small or single-shot (default: small)")
    p.add_argument("--out", required=True, help="scores file to write (e.g. run/scores.json)")
    p.add_argument("--samples", type=whole(1), default=DEFAULT_SAMPLES,
                   help=f"images scored on (default: {DEFAULT_SAMPLES})")
    p.add_argument("--batch-size", type=whole(1), default=SCORE_BATCH_SIZE,
                   help=f"(default: {SCORE_BATCH_SIZE})")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.commands.pretrain import call_reporting_warnings
    from lana.errors import check_output_file
    from lana.score import score

    check_output_file(args.out, "--out", "scores.json",
                      inputs=[("--pretrain", args.pretrain),
                              ("--teacher-weights", args.teacher_weights)])
    result = call_reporting_warnings(
        score, args.pretrain, args.teacher, args.pool, args.data, args.out, samples=args.samples,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
        teacher_weights=args.teacher_weights, selector=args.selector,
        input_shape=args.input_shape, progress=not args.no_progress)
    n_ops = sum(len(layer["scores"]) for layer in result["layers"])
    print(f"scored {n_ops} ops on {result['n_samples']} images in {result['seconds']:.1f} s "
          f"(teacher loss {result['teacher_loss']:.4f}, top-1 {100 * result['teacher_top1']:.2f}%)"
          f"; wrote {args.out}")
    return 0

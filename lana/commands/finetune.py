"""Fine-tune the selected architecture with cross-entropy plus distillation from the teacher.

Starts from the pretrained ops (teacher layers from the teacher); loss (1 - a) * CE + a * T^2 *
KL(teacher || student) at temperature T, AdamW with a cosine schedule.  Reports validation top-1
after every epoch and checkpoints atomically, so --resume continues an interrupted run (the
settings left out then take the values its checkpoint recorded).  Writes
OUT/student.pt (architecture + state_dict) and OUT/metrics.json (val top-1 per epoch, final,
teacher top-1).  torchrun --nproc_per_node N -m lana finetune ... trains data-parallel (DDP).
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser, positive, whole
from lana.commands import Given


def register(sub: argparse._SubParsersAction) -> None:
    from lana.commands.pretrain import add_common
    from lana.defaults import FINETUNE_BATCH_SIZE as DEFAULT_BATCH_SIZE
    from lana.defaults import FINETUNE_EPOCHS as DEFAULT_EPOCHS
    from lana.defaults import FINETUNE_KD_WEIGHT as DEFAULT_KD_WEIGHT
    from lana.defaults import FINETUNE_LR as DEFAULT_LR
    from lana.defaults import FINETUNE_TEMPERATURE as DEFAULT_TEMPERATURE

    # --resume takes the recorded value of every setting below that is left out (see Given).
    recorded = "or the one OUT recorded on --resume"
    p = command_parser(sub, "finetune", __doc__)
    p.add_argument("--arch", required=True, help="architecture file (lana select's output)")
    p.add_argument("--teacher", help="teacher name (default: the one the architecture names)")
    p.add_argument("--pretrain", help="lana pretrain output directory (default: none, the "
                   "replaced ops start from random weights)")
    p.add_argument("--out", required=True, help="output directory (e.g. run/finetune)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, action=Given,
                   help=f"(default: {DEFAULT_EPOCHS}, {recorded})")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    p.add_argument("--batch-size", type=whole(2), default=DEFAULT_BATCH_SIZE, action=Given,
                   help=f"per process (default: {DEFAULT_BATCH_SIZE}, {recorded})")
    p.add_argument("--lr", type=positive, default=DEFAULT_LR, action=Given,
                   help=f"AdamW peak (default: {DEFAULT_LR}, {recorded})")
    p.add_argument("--temperature", type=positive, default=DEFAULT_TEMPERATURE, action=Given,
                   help=f"distillation temperature (default: {DEFAULT_TEMPERATURE}, {recorded})")
    p.add_argument("--kd-weight", type=float, default=DEFAULT_KD_WEIGHT, action=Given,
                   help=f"weight of the distillation term in [0, 1] (default: "
                   f"{DEFAULT_KD_WEIGHT}, {recorded})")
    p.add_argument("--images", type=whole(1),
                   help=f"use at most N training images (quick runs; default: all, {recorded})")
    add_common(p, resumable=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.commands.pretrain import call_reporting_warnings
    from lana.errors import check_output_dir
    from lana.finetune import finetune

    check_output_dir(args.out, "--out", "run/finetune")
    given = getattr(args, "given", set())

    def typed(name: str):  # None lets finetune() pick the default or the recorded value
        return getattr(args, name) if name in given else None

    m = call_reporting_warnings(
        finetune, args.arch, args.teacher, args.pretrain, args.data, args.out,
        epochs=typed("epochs"), resume=args.resume, batch_size=typed("batch_size"),
        lr=typed("lr"), temperature=typed("temperature"), kd_weight=typed("kd_weight"),
        images=args.images, device=args.device, seed=typed("seed"),
        teacher_weights=args.teacher_weights, selector=args.selector,
        input_shape=args.input_shape, progress=not args.no_progress)
    drop = m["top1_drop"]
    side = "below" if drop >= 0 else "above"
    print(f"val top-1 {100 * m['final_top1']:.2f}% ({100 * abs(drop):.2f} points {side} the "
          f"teacher's {100 * m['teacher_top1']:.2f}%) after {m['epochs']} epochs, "
          f"{m['seconds']:.0f} s; wrote {args.out}/student.pt and {args.out}/metrics.json")
    return 0

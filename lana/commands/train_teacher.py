"""Train a teacher from scratch (reproduces the shipped demo weights).

Seeded and deterministic as far as torch allows: the same --seed, --epochs and --threads give the
same checkpoint (the shipped demo weights: the defaults).  Prints per-epoch train loss and held-out
top-1 and writes {"state_dict", "teacher", "val_top1", "epochs", "seed", "data", "threads"} to
--out, which --weights of every other command loads.
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser, positive, whole


def register(sub: argparse._SubParsersAction) -> None:
    from lana.train_teacher import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_THREADS

    p = command_parser(sub, "train-teacher", __doc__)
    p.add_argument("--teacher", default="demo", help="registry name (default: demo)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help=f"training epochs (default: {DEFAULT_EPOCHS})")
    p.add_argument("--out", help="checkpoint path to write (default: not saved)")
    p.add_argument("--data", help="'digits' (default) or a train/<class>/, val/<class>/ folder")
    p.add_argument("--seed", type=whole(0), default=0, help="seed for init, splits and order")
    p.add_argument("--batch-size", type=whole(1), default=DEFAULT_BATCH_SIZE)
    p.add_argument("--lr", type=positive, default=DEFAULT_LR, help="peak learning rate (AdamW)")
    p.add_argument("--threads", type=whole(1), default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default: {DEFAULT_THREADS}; the result depends on it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.errors import check_output_file
    from lana.train_teacher import train_teacher

    if args.out:
        check_output_file(args.out, "--out", f"{args.teacher}.pt")
    train_teacher(args.teacher, epochs=args.epochs, out=args.out, data=args.data, seed=args.seed,
                  batch_size=args.batch_size, lr=args.lr, threads=args.threads, progress=True)
    return 0

"""Distil every candidate op of a pool from its teacher layer (layer-wise MSE, paper Eq. 2).

One no-grad teacher forward feeds all layers; several ops per layer train on the same features
(--ops-per-pass, default all), so the whole pool costs about M / ops-per-pass passes of --epochs
epochs.  Writes one checkpoint per (layer, op) under OUT and OUT/pretrain.json; an interrupted run
continues with --resume (an unfinished pass from where it was last saved, at every epoch's end and
every few minutes), and the settings left out then take the values OUT recorded.  Run several
processes with torchrun --nproc_per_node N -m lana pretrain ...: the (layer, op) problems are split
between them by cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from lana.cli import command_parser, layer_arguments, positive, whole
from lana.commands import Given


def add_common(p: argparse.ArgumentParser, recorded: str = "--pretrain", *,
               resumable: bool = False, data_recorded: bool = False) -> None:
    """Options every training stage shares (``recorded``: what holds a user module's layout;
    ``resumable``: --seed defaults to the recorded one on --resume, see :class:`Given`;
    ``data_recorded``: so does --data)."""
    layer_arguments(p, recorded)
    p.add_argument("--data", help="data directory (train/<class>/, val/<class>/); default: the "
                   "embedded digits" + (", or the one OUT recorded on --resume" if data_recorded
                                       else ""))
    p.add_argument("--teacher-weights", help="state_dict file of the teacher (default: the weights "
                   "shipped with it, or those a user module's factory loads)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    if resumable:
        p.add_argument("--seed", type=whole(0), default=0, action=Given,
                       help="data order and splits (default: 0, or the one OUT recorded on "
                       "--resume)")
    else:
        p.add_argument("--seed", type=whole(0), default=0, help="data order and splits "
                       "(default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def call_reporting_warnings(fn, *args, **kwargs):
    """Call ``fn``; print the warnings it raised one line each (``warning: ...``), once each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            return fn(*args, **kwargs)
        finally:
            seen = set()
            for w in caught:
                if str(w.message) not in seen:
                    seen.add(str(w.message))
                    print(f"warning: {w.message}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    from lana.defaults import PRETRAIN_BATCH_SIZE as DEFAULT_BATCH_SIZE
    from lana.defaults import PRETRAIN_EPOCHS as DEFAULT_EPOCHS
    from lana.defaults import PRETRAIN_LR as DEFAULT_LR

    # --resume takes the recorded value of every setting below that is left out (see Given).
    recorded = "or the one OUT recorded on --resume"
    p = command_parser(sub, "pretrain", __doc__)
    p.add_argument("--teacher", required=True, help="registry name or path/to/file.py:factory")
    p.add_argument("--pool", default="small", help="full, small or single-shot (default: small)")
    p.add_argument("--out", required=True, help="output directory (e.g. run/pretrain)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, action=Given,
                   help=f"epochs per pass (default: {DEFAULT_EPOCHS}, {recorded})")
    p.add_argument("--ops-per-pass", type=int,
                   help=f"ops per layer trained together (default: all, {recorded})")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    p.add_argument("--batch-size", type=whole(1), default=DEFAULT_BATCH_SIZE, action=Given,
                   help=f"(default: {DEFAULT_BATCH_SIZE}, {recorded})")
    p.add_argument("--lr", type=positive, default=DEFAULT_LR, action=Given,
                   help=f"AdamW peak (default: {DEFAULT_LR}, {recorded})")
    p.add_argument("--images", type=whole(1),
                   help=f"use at most N training images (quick runs; default: all, {recorded})")
    p.add_argument("--layer", type=int, action="append", help="train only these layer indices")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_common(p, "OUT (on --resume)", resumable=True, data_recorded=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.errors import check_output_dir
    from lana.pretrain import pretrain

    check_output_dir(args.out, "--out", "run/pretrain")
    given = getattr(args, "given", set())

    def typed(name: str):  # None lets pretrain() pick the default or the recorded value
        return getattr(args, name) if name in given else None

    manifest = call_reporting_warnings(
        pretrain, args.teacher, args.pool, args.data, args.out, epochs=typed("epochs"),
        ops_per_pass=args.ops_per_pass, resume=args.resume, batch_size=typed("batch_size"),
        lr=typed("lr"), images=args.images, layers=args.layer, device=args.device,
        seed=typed("seed"), teacher_weights=args.teacher_weights, selector=args.selector,
        input_shape=args.input_shape, progress=not args.no_progress)
    if args.json:
        json.dump(manifest, sys.stdout, indent=1)
        print()
        return 0
    ops = [o for layer in manifest["layers"] for o in layer["ops"].values()]
    trained = [o for o in ops if o["status"] == "trained"]
    pending = sum(1 for o in ops if o["status"] == "pending")
    print(f"{len(trained)} ops distilled, {len(ops) - len(trained) - pending} need no training, "
          f"{pending} pending; {args.out}/pretrain.json"
          + (f" ({manifest.get('seconds', 0):.1f} s)" if "seconds" in manifest else ""))
    if trained:
        rel = sorted(o.get("rel_mse", float("nan")) for o in trained)
        print(f"held-out relative MSE: best {rel[0]:.4f}, median {rel[len(rel) // 2]:.4f}, "
              f"worst {rel[-1]:.4f}")
    asked = set(args.layer) if args.layer else None
    missing = [o for layer in manifest["layers"] if asked is None or layer["index"] in asked
               for o in layer["ops"].values() if o["status"] == "pending"]
    return 1 if missing else 0

"""Evaluate the K architectures of a search result with their pretrained ops; keep the best.

Each architecture is assembled from its distilled ops and run on --images training images with
batch norm in batch-statistics mode (paper §2.2); the lowest cross-entropy wins.  Prints the
ranking and writes the winner as an architecture file (lana.arch/1) with a "selection" record.
--search also accepts a single architecture file.
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser, whole


def register(sub: argparse._SubParsersAction) -> None:
    from lana.commands.pretrain import add_common
    from lana.defaults import SELECT_BATCH_SIZE as DEFAULT_BATCH_SIZE
    from lana.defaults import SELECT_IMAGES as DEFAULT_IMAGES

    p = command_parser(sub, "select", __doc__)
    p.add_argument("--search", required=True, help="search result written by lana search")
    p.add_argument("--pretrain", help="lana pretrain output directory (not needed when every op "
                   "is the teacher's or has no weights)")
    p.add_argument("--teacher", help="teacher name (default: the one the search names)")
    p.add_argument("--budget", help="which budget of a search result holding several "
                   "(its label, e.g. 0.5x, or ms)")
    p.add_argument("--images", type=whole(1), default=DEFAULT_IMAGES,
                   help=f"training images to evaluate on (default: {DEFAULT_IMAGES} or all)")
    p.add_argument("--batch-size", type=whole(1), default=DEFAULT_BATCH_SIZE,
                   help=f"(default: {DEFAULT_BATCH_SIZE}; batch norm uses batch statistics)")
    p.add_argument("--out", required=True, help="architecture file to write (e.g. run/select.json)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.commands.pretrain import call_reporting_warnings
    from lana.errors import check_output_file
    from lana.select import select

    check_output_file(args.out, "--out", "select.json",
                      inputs=[("--search", args.search), ("--pretrain", args.pretrain),
                              ("--teacher-weights", args.teacher_weights)])
    result = call_reporting_warnings(
        select, args.search, args.pretrain, args.teacher, args.data, args.out,
        budget=args.budget, images=args.images, batch_size=args.batch_size, device=args.device,
        seed=args.seed, teacher_weights=args.teacher_weights, selector=args.selector,
        input_shape=args.input_shape, progress=not args.no_progress)
    sel = result["selection"]
    print(f"selected solution {sel['ranking'][0]['index']} of {len(sel['ranking'])} (loss "
          f"{sel['loss']:.4f}, top-1 {100 * sel['top1']:.2f}%); wrote {args.out}")
    return 0

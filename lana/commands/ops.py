"""List the candidate ops of every teacher layer.

Each layer gets the teacher's own op, identity where the shapes allow it, and the pool's families
adapted to the layer's input shape, output shape and stride.  --json prints
{"teacher", "pool", "layers": [{"name", "in_shape", "out_shape", "stride", "ops": [op key, ...]}]}
with the canonical op keys the LUTs use; the plain form is a table per layer with parameters and FLOPs.
"""

from __future__ import annotations

import argparse
import json
import sys

from lana.cli import command_parser, layer_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "ops", __doc__)
    p.add_argument("--teacher", required=True, help="registry name or path/to/file.py:factory")
    p.add_argument("--pool", default="small", help="full, small or single-shot (default: small)")
    layer_arguments(p)
    p.add_argument("--layer", type=int, action="append", help="show only these layer indices")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def pool_listing(teacher: str, pool: str, selector: str | None = None,
                 input_shape: str | None = None) -> dict:
    """The ``--json`` document of ``lana ops`` as a Python dict."""
    from lana.pool import build_pool
    from lana.teachers import create_teacher

    t = create_teacher(teacher, selector=selector, input_shape=input_shape, pretrained=False)
    layers = build_pool(t, pool)
    return {
        "teacher": teacher, "pool": pool,
        "layers": [{"name": lp.layer.name, "in_shape": list(lp.layer.in_shape),
                    "out_shape": list(lp.layer.out_shape), "stride": lp.layer.stride,
                    "ops": lp.keys,
                    "failed": [{"op": s.key, "reason": r} for s, r in lp.failed]}
                   for lp in layers],
    }


def run(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        listing = pool_listing(args.teacher, args.pool, args.selector, args.input_shape)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    n = len(listing["layers"])
    missing = [i for i in args.layer or () if not 0 <= i < n]
    if missing:
        from lana.errors import LanaError

        raise LanaError(f"--layer {missing[0]}: {args.teacher} has layers 0-{n - 1}; list them all "
                        f"with `lana ops --teacher {args.teacher} --pool {args.pool}`")
    if args.json:
        json.dump(listing, sys.stdout, indent=1)
        print()
        return 0
    _print_tables(args.teacher, listing, args.layer)
    return 0


def _print_tables(teacher_name: str, listing: dict, only: list[int] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from lana.pool import op_stats
    from lana.spec import parse_key
    from lana.teachers import create_teacher, is_user_module

    teacher = (None if is_user_module(teacher_name)
               else create_teacher(teacher_name, pretrained=False))
    console = Console()
    stats: dict[str, tuple[int, int]] = {}
    for i, layer in enumerate(listing["layers"]):
        if only and i not in only:
            continue
        table = Table(title=f"layer {i} {layer['name']}  {tuple(layer['in_shape'])} -> "
                      f"{tuple(layer['out_shape'])}  stride {layer['stride']}  "
                      f"({len(layer['ops'])} ops)", title_justify="left")
        for col, just in (("op", "left"), ("family", "left"), ("params", "right"),
                          ("MFLOPs", "right")):
            table.add_column(col, justify=just)
        for key in layer["ops"]:
            spec = parse_key(key)
            if key not in stats:
                module = teacher.layer_module(i) if (teacher and spec.family == "teacher") else None
                try:
                    stats[key] = op_stats(spec, module)
                except Exception:  # stats are informative only; never fail the listing on them
                    stats[key] = (-1, -1)
            params, flops = stats[key]
            table.add_row(key.split("|")[0], spec.family, f"{params:,}" if params >= 0 else "?",
                          f"{flops / 1e6:,.2f}" if flops >= 0 else "?")
        console.print(table)

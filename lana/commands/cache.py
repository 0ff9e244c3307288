"""Show and trim what lana keeps between runs (ONNX exports, the native timer build, benchmark LUTs).

The cache is $LANA_CACHE_DIR, else $XDG_CACHE_HOME/lana, else ~/.cache/lana.  ONNX exports grow with
every pool, batch size and torch version profiled (a full pool of a large teacher is gigabytes);
everything in it can be deleted at any time, at the cost of exporting, building or profiling again.

    lana cache                                  # where it is, and how much each part holds
    lana cache prune --max-size 5G              # keep the most recently used exports within 5 GiB
    lana cache prune --older-than 30d --dry-run # what exports unused for 30 days would go
    lana cache clear --part onnx                # delete all exports
"""

from __future__ import annotations

import argparse
import json
import time

from lana.cli import command_parser


def register(sub: argparse._SubParsersAction) -> None:
    from lana.cache import PARTS

    p = command_parser(sub, "cache", __doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_show)
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION")
    show = actions.add_parser("show", help="where the cache is and how much each part holds")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)
    pr = actions.add_parser("prune", help="delete least recently used ONNX exports")
    pr.add_argument("--max-size", help="keep at most this much (like 500M, 5G, 2.5GB)")
    pr.add_argument("--older-than", help="delete exports unused for this long (like 12h, 30d, 2w)")
    pr.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.set_defaults(func=run_prune)
    cl = actions.add_parser("clear", help="delete parts of the cache entirely")
    cl.add_argument("--part", action="append", choices=PARTS,
                    help="part to delete (repeatable; default: all of them)")
    cl.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    cl.add_argument("--json", action="store_true", help="machine-readable output")
    cl.set_defaults(func=run_clear)


def _age(mtime: float | None) -> str:
    if mtime is None:
        return "-"
    s = max(0.0, time.time() - mtime)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return "just now"


def run_show(args: argparse.Namespace) -> int:
    from lana.cache import cache_root, format_size, usage

    parts = usage()
    if args.json:
        print(json.dumps({"root": str(cache_root()), "parts": [p.to_dict() for p in parts]},
                         indent=1))
        return 0
    print(f"cache {cache_root()}: {format_size(sum(p.bytes for p in parts))} in "
          f"{sum(p.files for p in parts)} files")
    for p in parts:
        print(f"  {p.name:<11}{format_size(p.bytes):>11} {p.files:>7} files   newest "
              f"{_age(p.newest):<14} oldest {_age(p.oldest)}")
    return 0


def _report(verb: str, removed, args: argparse.Namespace) -> int:
    from lana.cache import format_size

    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **removed.to_dict()}, indent=1))
        return 0
    would = "would delete" if args.dry_run else verb
    kept = (f"; {removed.kept_files} files ({format_size(removed.kept_bytes)}) kept"
            if verb == "pruned" else "")
    print(f"{would} {removed.files} files ({format_size(removed.bytes)}){kept}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from lana.cache import parse_age, parse_size, prune

    removed = prune(parse_size(args.max_size) if args.max_size is not None else None,
                    parse_age(args.older_than) if args.older_than is not None else None,
                    dry_run=args.dry_run)
    return _report("pruned", removed, args)


def run_clear(args: argparse.Namespace) -> int:
    from lana.cache import PARTS, clear

    removed = clear(tuple(args.part) if args.part else PARTS, dry_run=args.dry_run)
    return _report("deleted", removed, args)

"""Measure every candidate op of a teacher on a device and write a versioned latency LUT.

Each distinct (op, shape) key is measured once across all layers, plus the teacher skeleton (the
LUT's fixed part), with the device preset's backend, precision, batch size, threads and protocol
(see `lana devices`).  Entries are saved as they are measured; after Ctrl-C or a kill, run the same
command with --resume and nothing is measured twice.  Ops whose export or engine build fails are
recorded as failed and skipped by the search; --resume tries them again.  --force keeps the LUT it
replaces as <out>.bak until the new profile completes; one profile at a time writes a LUT file.
Shards (--shard i/n) are joined with `lana lut merge`.  ONNX files are exported before timing
starts (--jobs processes); the ops are then timed one at a time.
The machine's load is checked before and during timing: profiling beside other work inflates every
latency, so a busy machine is warned about and recorded in the LUT (`lana lut show`).

    lana-profile --device cpu-ort --teacher demo --pool small --out luts/cpu-ort/demo-small.json
"""

from __future__ import annotations

import argparse
import json
import sys

from lana.cli import command_parser, layer_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "profile", __doc__)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True,
                   help="device preset name (see `lana devices`) or path/to/preset.toml")
    p.add_argument("--teacher", required=True, help="registry name or path/to/file.py:factory")
    p.add_argument("--pool", default="full", help="full, small or single-shot (default: full)")
    p.add_argument("--out", help="LUT file to write (default: luts/<device>/<teacher>.json, "
                                 "<teacher>-<pool>.json for pools other than full)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--resume", action="store_true", help="continue an existing LUT file")
    p.add_argument("--force", action="store_true", help="overwrite an existing LUT file")
    p.add_argument("--shard", help="measure only shard i of n (i/n, 1-based); merge with `lana lut merge`")
    layer_arguments(p)
    p.add_argument("--cache-dir", help="folder of cached ONNX exports (default: onnx/ in "
                                       "$LANA_CACHE_DIR, else $XDG_CACHE_HOME/lana, else "
                                       "~/.cache/lana; see `lana cache`)")
    p.add_argument("--keep-samples", action="store_true", help="store raw samples in every entry")
    p.add_argument("--jobs", type=int,
                   help="processes exporting ONNX files before timing starts (default: one per CPU "
                        "for 200 ops or more, else 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's report as JSON (total, "
                   "measured, reused, failed, noisy: counts of op keys; skeleton: measured, "
                   "noisy, failed, reused or null)")


def run(args: argparse.Namespace) -> int:
    from lana.profile import profile

    report = profile(args.device, args.teacher, pool=args.pool, out=args.out,
                     batch_size=args.batch_size, resume=args.resume, force=args.force,
                     shard=args.shard, selector=args.selector, input_shape=args.input_shape,
                     cache_dir=args.cache_dir, keep_samples=args.keep_samples, jobs=args.jobs,
                     progress=not args.quiet and sys.stderr.isatty())
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    rate = report.measured / (report.loop_s / 60) if report.loop_s > 0 else 0.0
    retried = f" ({report.retried} tried again)" if report.retried else ""
    skeleton = {"measured": "; the skeleton measured", "noisy": "; the skeleton measured (noisy)",
                "failed": "; the skeleton failed", "reused": "; the skeleton already there",
                None: "; the skeleton is shard 1's"}[report.skeleton]
    print(f"{report.out}: {report.measured} measured, {report.reused} already there, "
          f"{report.failed} failed{retried}, {report.noisy} noisy of {report.total} ops{skeleton} "
          f"in {report.wall_s:.0f} s ({rate:.0f} ops/min)"
          + ("; the machine was busy: see the warning above" if report.load.get("busy") else ""))
    if args.cache_dir is None:
        _cache_hint()
    return 0


CACHE_HINT_BYTES = 10 * 1024 ** 3


def _cache_hint() -> None:
    """Say so when the export cache has grown large: it is never trimmed on its own."""
    from lana.cache import cache_root, format_size, usage

    (onnx,) = usage(parts=("onnx",))
    if onnx.bytes > CACHE_HINT_BYTES:
        print(f"note: the ONNX export cache {cache_root()} holds {format_size(onnx.bytes)}; "
              "`lana cache prune --max-size 5G` keeps the most recently used 5 GiB",
              file=sys.stderr)

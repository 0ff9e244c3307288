"""Fit measured end-to-end latency against the LUT sum and store the fit in the LUT.

Measures --samples random architectures of the LUT's pool on the device (spread over the whole
latency range, each measured --repeats times, interleaved, each next to the teacher so that
drift of the machine's speed cancels), holds a third out, fits
measured = offset + slope x LUT sum on the rest (several fits compete; the one with the lowest
cross-validated error wins), writes it to the LUT's calibration field (atomic write) and reports
the error before and after on the held-out architectures.  lana search and lana validate apply it.
A fit with a term per op family competes too, given 3 measured networks per parameter;
--no-family-terms keeps the fit affine, as lana run does (a search exploits those terms).

    lana lut calibrate --lut luts/cpu-ort/demo.json --device cpu-ort --teacher demo --samples 30

On a machine shared with other work, whose busy moments only ever add time, measure more repeats
and keep each architecture's fastest (--statistic min --no-drift-correction --repeats 5), and
profile the LUT several times, at different moments, joined with `lana lut merge --combine min`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Callable


def register_into(lut_sub: argparse._SubParsersAction) -> None:
    """Add ``calibrate`` to the ``lana lut`` subcommands."""
    from lana.cli import command_parser, whole

    p = command_parser(lut_sub, "calibrate", __doc__)
    p.add_argument("--lut", required=True, help="LUT file to calibrate (rewritten in place)")
    p.add_argument("--device", required=True, help="device preset the LUT was measured with")
    p.add_argument("--teacher", help="teacher the LUT is for (checked; default: the LUT's)")
    p.add_argument("--samples", type=int, default=30,
                   help="architectures to measure, a third held out (default 30)")
    p.add_argument("--repeats", type=int, default=3,
                   help="measurements of each architecture, interleaved (default 3)")
    p.add_argument("--holdout", type=float, default=0.33,
                   help="fraction held out from the fit to report on (default 0.33)")
    p.add_argument("--seed", type=whole(0), default=0, help="architecture sampling seed")
    p.add_argument("--pool", choices=("small", "full", "single-shot"),
                   help="draw the architectures from this pool only (default: every op the LUT "
                        "has); calibrate for the pool you will search")
    p.add_argument("--no-drift-correction", action="store_true",
                   help="do not scale each measurement by the teacher measured next to it")
    p.add_argument("--no-family-terms", action="store_true",
                   help="fit affine calibrations only, no term per op family (what lana run "
                        "does: a search exploits those terms)")
    p.add_argument("--statistic", choices=("median", "min", "fastest"), default="median",
                   help="what an architecture's repeats reduce to (default median); min (the "
                        "fastest repeat's median) and fastest (the fastest timed iteration, what "
                        "lana run fits) find the uncontended latency on a shared machine, with "
                        "--no-drift-correction")
    p.add_argument("--dry-run", action="store_true", help="report without writing the LUT")
    p.add_argument("--plot", help="write a PNG of predicted vs. measured latency here")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.calibrate import AFFINE_FITS, FIT_NAMES, calibrate
    from lana.commands.assemble import print_warnings
    from lana.errors import check_output_file

    if args.plot:
        check_output_file(args.plot, "--plot", "calibration.png")

    progress: Callable[[int, int], None] | None = None
    bar = None
    if not args.json and sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("measuring", total=None)

        def show(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        progress = show

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            report = calibrate(args.lut, args.device, teacher=args.teacher, samples=args.samples,
                               holdout=args.holdout, repeats=args.repeats, seed=args.seed,
                               write=not args.dry_run, plot=args.plot,
                               drift_correction=not args.no_drift_correction, pool=args.pool,
                               progress=progress, statistic=args.statistic,
                               candidates=AFFINE_FITS if args.no_family_terms else FIT_NAMES)
        finally:
            if bar is not None:
                bar.stop()
    print_warnings(caught)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    _print_report(report, args)
    return 0


def _print_report(report, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    fit = report.fit
    terms = "".join(f" + {v:+.4f} ms per {f} op" for f, v in fit.family_ms.items())
    console.print(f"fit ({fit.name}): measured = {fit.offset_ms:+.4f} ms + {fit.slope:.4f} x "
                  f"LUT sum{terms}")
    cv = ", ".join(f"{k} {v:.2%}" for k, v in sorted(report.cv_errors.items(), key=lambda kv: kv[1]))
    console.print(f"cross-validated mean |error| of each fit: {cv}")
    if fit.excluded:
        console.print(f"[yellow]ruled out: {', '.join(fit.excluded)}, which predict that the "
                      f"cheapest network of the LUT's layers takes no time (fitted on networks "
                      f"far from it) or a latency falling as the LUT sum grows; measure more "
                      f"samples to fit across the range[/]")
    for name, needed in fit.skipped.items():
        console.print(f"not fitted: {name}, whose parameters need {needed} networks in the fit "
                      f"set, not {report.train_after['n']}; measure more --samples to fit it")
    if "families" in report.cv_errors and not report.family_terms_supported:
        console.print("per-family terms are not applied by this LUT reader; only affine fits "
                      "were eligible")
    table = Table(title=f"|predicted - measured| / measured on {report.after['n']} held-out "
                  f"architectures", title_justify="left")
    for col in ("", "median", "worst", "mean signed"):
        table.add_column(col, justify="right" if col else "left")
    rows = [("LUT sum (before)", report.before)]
    if report.previous_held_out is not None:
        rows.append(("previous calibration", report.previous_held_out))
    rows.append(("calibrated (after)", report.after))
    for name, s in rows:
        table.add_row(name, f"{s['median_abs']:.1%}", f"{s['max_abs']:.1%}", f"{s['mean']:+.1%}")
    console.print(table)
    if report.written:
        console.print(f"wrote the calibration to {report.lut}")
    else:
        console.print("dry run: the LUT is unchanged")
    if args.plot:
        console.print(f"wrote {args.plot}")

"""Measure an architecture end to end on a device and compare with what its LUT predicted.

The network is built from the architecture file and timed with the LUT's backend, thread count and
protocol, the way the LUT entries were timed, in alternation with the teacher in the same session.
Prints predicted latency (raw LUT sum, and calibrated when the LUT has a calibration), measured
latency, the relative error, the speed-up measured (teacher / network, both measured here) beside
the predicted one, and whether the budget holds in reality.  Measured latency is taken the way the
LUT's calibration was fitted: each network's fastest iteration over the repeats for a LUT that lana
run calibrated (statistic "fastest"), else the median repeat's median.  The budget is --budget: milliseconds,
checked against the measured network, or 0.5x = half the teacher measured in this session (as lana
run and lana verify take it).  Without --budget, the budget the architecture file recorded as the
search was given it (lana search, verify and select record it, lana assemble keeps select's): a
relative one such as 0.5x is taken of the teacher measured in this session, as --budget 0.5x would
be, when the file was searched on this device; an absolute one, or the budget_ms of a file that
records no budget as given (older versions), is checked in milliseconds when the file was searched
with this LUT.  A note says why when the file's budget is left aside, and no budget is checked
then.  Exit status 1 when the measured latency exceeds the budget by more than --tolerance, so the
command can guard a budget in CI.  --json prints {"predicted_ms", "predicted_calibrated_ms",
"measured_ms", "rel_error", "teacher_measured_ms", "speedup", "budget_ms", "within_budget",
"budget" (the budget checked, as given: "0.5x", "4.2"), "budget_source" ("--budget 0.5x",
"architecture file (budget 0.5x)", or "architecture file" for its budget_ms), ...}.

    lana validate --arch run/arch.json --device cpu-ort --lut luts/cpu-ort/demo.json --budget 0.5x
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from lana.cli import command_parser, layer_arguments, whole


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "validate", __doc__)
    p.add_argument("--arch", required=True, help="architecture file written by lana search")
    p.add_argument("--index", type=int, help="which architecture of a file holding several")
    p.add_argument("--device", required=True, help="device preset the LUT was measured with")
    p.add_argument("--lut", required=True, help="the LUT the architecture was searched with")
    p.add_argument("--budget", help="milliseconds, or a fraction of the teacher measured beside "
                   "the network such as 0.5x (default: the budget the architecture file recorded "
                   "as the search was given it, when searched on this device: a relative one is "
                   "taken of the teacher measured here, as --budget 0.5x would be; a file that "
                   "records none (older versions): its budget_ms, when searched with this LUT)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="fraction the measured latency may exceed the budget by (default 0.05)")
    p.add_argument("--weights", help="student.pt to measure (default: random weights; latency "
                   "does not depend on them)")
    layer_arguments(p, "the LUT's")
    p.add_argument("--repeats", type=whole(1), default=3,
                   help="measure the network and the teacher alternately this many times (default 3); "
                   "each one's latency is its fastest iteration over them, or its median "
                   "repeat's median, as the LUT's calibration was fitted")
    p.add_argument("--plot", help="write a PNG of predicted vs. measured latency here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.commands.assemble import print_warnings
    from lana.errors import check_output_file
    from lana.validate import plot_predicted_vs_measured, validate

    if args.plot:
        check_output_file(args.plot, "--plot", "validate.png")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        result = validate(args.arch, args.device, args.lut, budget=args.budget,
                          tolerance=args.tolerance, weights=args.weights, index=args.index,
                          selector=args.selector, input_shape=args.input_shape,
                          repeats=args.repeats)
    print_warnings(caught)
    if args.plot:
        plot_predicted_vs_measured([(result.predicted_ms, result.measured_ms)], args.plot,
                                   calibrated=[(result.predicted_calibrated_ms,
                                                result.measured_ms)] if result.calibrated else None,
                                   title=f"{result.teacher} student on {result.device}")
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        _print_table(result)
        if args.plot:
            print(f"wrote {args.plot}")
    return 0 if result.passed else 1


def _print_table(r) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{r.teacher} student on {r.device} (LUT {r.lut})", title_justify="left")
    table.add_column("")
    table.add_column("ms", justify="right")
    table.add_column("vs. measured", justify="right")
    if r.calibrated:
        table.add_row("predicted (LUT sum)", f"{r.predicted_ms:.3f}", f"{r.rel_error_raw:+.1%}")
        table.add_row("predicted (calibrated)", f"{r.predicted_calibrated_ms:.3f}",
                      f"{r.rel_error:+.1%}")
    else:
        table.add_row("predicted (LUT sum, no calibration)", f"{r.predicted_ms:.3f}",
                      f"{r.rel_error_raw:+.1%}")
    how = "fastest iteration" if r.statistic == "fastest" else "median"
    table.add_row(f"measured ({how})", f"{r.measured_ms:.3f}",
                  f"p10 {r.measured_p10_ms:.3f} / p90 {r.measured_p90_ms:.3f}, n={r.measured_n}"
                  + (" NOISY" if r.noisy else ""))
    if not math.isnan(r.teacher_predicted_ms):
        table.add_row("teacher predicted" + ("" if r.calibrated else " (LUT sum)"),
                      f"{r.teacher_predicted_ms:.3f}",
                      f"speed-up {r.predicted_speedup:.2f}x predicted")
    if not math.isnan(r.teacher_measured_ms):
        table.add_row(f"teacher measured ({how})", f"{r.teacher_measured_ms:.3f}",
                      f"speed-up {r.speedup:.2f}x measured" + (" NOISY" if r.teacher_noisy else ""))
    if r.budget_ms is not None:
        verdict = ("[green]holds[/]" if r.within_budget else
                   "[yellow]missed, within tolerance[/]" if r.passed else "[red]MISSED[/]")
        # A relative budget is a fraction of the teacher measured here, an absolute one is in ms;
        # both are checked against the network measured here.
        origin = "" if r.budget_source.startswith("--budget") else " (architecture file)"
        label = (f"budget {r.budget} of measured teacher{origin}"
                 if r.budget_relative else f"budget ({r.budget_source}, absolute)")
        table.add_row(label, f"{r.budget_ms:.3f}",
                      f"{verdict} ({r.measured_ms / r.budget_ms - 1:+.1%}, tolerance "
                      f"{r.tolerance:.0%})")
    console = Console()
    console.print(table)
    if r.weights == "random":
        console.print("weights: random (latency does not depend on them)")
    if not r.calibrated:
        console.print("the LUT has no calibration; run lana lut calibrate to correct the LUT sum")
    if not r.passed:
        print(f"measured {r.measured_ms:.3f} ms exceeds the budget {r.budget_ms:.3f} ms by more "
              f"than {r.tolerance:.0%}", file=sys.stderr)

"""Guard a model's latency in CI: measure it against a fixed reference network, compare with a baseline.

The model (an ONNX file, a student.pt from lana assemble, or an architecture file) and a small
fixed reference network are measured alternately --repeats times in one process; the figure
compared is the median ratio model / reference, so a slower or busier CI machine does not read as
a regression.  --save-baseline FILE stores the run; --baseline FILE compares with a stored run and
exits with status 1 when the ratio grew by more than --tolerance.

    lana bench --model out/student.onnx --device cpu-ort --save-baseline bench/student.json
    lana bench --model out/student.onnx --device cpu-ort --baseline bench/student.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from lana.cli import command_parser, layer_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "bench", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="ONNX file, student.pt, or architecture JSON")
    src.add_argument("--arch", help="architecture file (built with random weights)")
    p.add_argument("--device", required=True, help="device preset (see lana devices)")
    layer_arguments(p)
    p.add_argument("--baseline", help="baseline file to compare with")
    p.add_argument("--save-baseline", help="write this run as a baseline file")
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="allowed slow-down of the ratio before failing (default 0.10 = 10 %%)")
    p.add_argument("--repeats", type=int, default=7,
                   help="alternating model/reference measurements (default 7)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.bench import bench, compare, read_baseline, save_baseline
    from lana.commands.assemble import print_warnings

    from lana.errors import check_output_file

    baseline = read_baseline(args.baseline) if args.baseline else None  # fail before measuring
    if args.save_baseline is not None:
        check_output_file(args.save_baseline, "--save-baseline", "baseline.json",
                          inputs=[("--model", args.model), ("--arch", args.arch)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        result = bench(args.model, args.device, arch=args.arch, repeats=args.repeats,
                       selector=args.selector, input_shape=args.input_shape)
    print_warnings(caught)
    comparison = compare(result, baseline, args.tolerance) if baseline is not None else None
    if args.save_baseline is not None:
        save_baseline(result, args.save_baseline)
    if args.json:
        out = {"result": result.to_dict(),
               "comparison": comparison.to_dict() if comparison else None,
               "saved": args.save_baseline}
        print(json.dumps(out, indent=1))
    else:
        _print(result, comparison, args.save_baseline)
    if comparison is not None:
        for w in comparison.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if comparison.regression:
            print(f"regression: {result.model} is {comparison.change:+.1%} slower relative to the "
                  f"reference than in {args.baseline} (tolerance {args.tolerance:.0%})",
                  file=sys.stderr)
            return 1
    return 0


def _print(result, comparison, saved: str | None) -> None:
    import statistics

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.model} on {result.device} ({result.repeats} repeats)",
                  title_justify="left")
    for col in ("", "now", "baseline"):
        table.add_column(col, justify="right" if col else "left")
    base = comparison.baseline if comparison else None
    table.add_row("model (ms)", f"{statistics.median(result.model_ms):.3f}",
                  f"{statistics.median(base.model_ms):.3f}" if base else "")
    table.add_row("reference (ms)", f"{statistics.median(result.reference_ms):.3f}",
                  f"{statistics.median(base.reference_ms):.3f}" if base else "")
    table.add_row("ratio model/reference", f"{result.ratio:.4f} (+-{result.noise:.1%})",
                  f"{base.ratio:.4f} (+-{base.noise:.1%})" if base else "")
    console = Console()
    console.print(table)
    if comparison is not None:
        verdict = ("[red]REGRESSION[/]" if comparison.regression else
                   "[green]faster[/] (consider saving a new baseline)" if comparison.improvement
                   else "[green]ok[/]")
        console.print(f"change {comparison.change:+.1%} (tolerance {comparison.tolerance:.0%}): "
                      f"{verdict}")
    if saved:
        console.print(f"saved baseline {saved}")

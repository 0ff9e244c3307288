"""Build the student network an architecture file describes, with its pretrained op weights.

Layers whose op is the teacher's keep the teacher's weights; other ops load their checkpoint from
the lana pretrain directory (--pretrain) and otherwise stay randomly initialised, with a warning
(latency does not depend on weights).  Writes DIR/arch.json, DIR/student.pt ({"arch", "state_dict",
...}; lana.assemble.load_student rebuilds the module from it alone), DIR/student.onnx (deployed
form, dynamic batch) and DIR/assembly.json (where each layer's weights came from).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from lana.cli import command_parser, layer_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "assemble", __doc__)
    p.add_argument("--arch", required=True, help="architecture file written by lana search")
    p.add_argument("--index", type=int, help="which architecture of a file holding several "
                   "(default: the first)")
    p.add_argument("--teacher", help="teacher name (default: the one the architecture names)")
    layer_arguments(p, "--pretrain")
    p.add_argument("--teacher-weights", help="state_dict file of the teacher (default: the "
                   "weights shipped with it, if any)")
    p.add_argument("--pretrain", help="lana pretrain output directory holding the op weights")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=run)


def print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Show caught warnings one line each, as the CLI does everywhere."""
    seen = set()
    for w in caught:
        text = str(w.message)
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from lana.assemble import assemble
    from lana.errors import check_output_dir

    check_output_dir(args.out, "--out", "student")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        result = assemble(args.arch, args.out, teacher=args.teacher, pretrain_dir=args.pretrain,
                          teacher_weights=args.teacher_weights, selector=args.selector,
                          input_shape=args.input_shape, index=args.index, onnx=not args.no_onnx)
    print_warnings(caught)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"student of {result.arch.teacher} ({len(result.weights)} layers)",
                  title_justify="left")
    for col in ("layer", "name", "op", "weights"):
        table.add_column(col)
    for w in result.weights:
        table.add_row(str(w.index), w.name, w.op.split("|")[0], w.source)
    console = Console()
    console.print(table)
    console.print(f"wrote {result.arch_path}, {result.student_path}"
                  + (f", {result.onnx_path}" if result.onnx_path else ""))
    return 0

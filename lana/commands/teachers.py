"""List the registered teacher networks.

One row per teacher: name, input shape, classes, layer count (the modules its layer selector
picks), parameters, the timm model whose state_dict loads into it (or "—"), and a description.
Any other nn.Module works as a teacher through "path/to/file.py:factory" with --selector.
--json prints a list of {"name", "input_shape", "num_classes", "n_layers", "params",
"timm_compatible", "timm_name", "description"}.
"""

from __future__ import annotations

import argparse
import json
import sys

from lana.cli import command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "teachers", __doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def teachers_listing() -> list[dict]:
    """The ``--json`` document of ``lana teachers``."""
    from lana.teachers import list_teachers

    return [info.to_dict() for info in list_teachers()]


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def run(args: argparse.Namespace) -> int:
    listing = teachers_listing()
    if args.json:
        json.dump(listing, sys.stdout, indent=1)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="teachers")
    for col, justify in (("name", "left"), ("input", "left"), ("classes", "right"),
                         ("layers", "right"), ("params", "right"), ("timm", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("description", overflow="fold", min_width=24)
    for t in listing:
        table.add_row(t["name"], "x".join(str(v) for v in t["input_shape"]),
                      str(t["num_classes"]), str(t["n_layers"]), _fmt_params(t["params"]),
                      t["timm_name"] or "—", t["description"])
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)
    return 0

"""List the device presets, and say which can run on this machine and why the others cannot.

A preset fixes backend, device, precision, batch size, threads and measurement protocol.  Built-in
presets ship with lana; add your own as TOML files in a directory named by LANA_PRESET_PATH, or pass
--device path/to/preset.toml to lana-profile.  A preset file that cannot be read is listed as
broken, with what is wrong in it, beside every preset that loads.  --json prints a list of
{"name", "backend", "device", "precision", "batch_size", "threads", "hardware", "usable", "reason",
"warning", "source", "description", "protocol", "broken"} (a broken file's settings are null and
its reason is the error loading it gives).  The exit status is 0 whenever the list is printed,
broken files included: like a preset that cannot run here, a broken file is a finding of the list.
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from lana.cli import command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "devices", __doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def list_devices() -> list[dict[str, Any]]:
    """Every preset with whether it can run here (the ``--json`` document); preset files that do
    not load are listed as broken with the reason, after the presets that do."""
    from profilers.device import scan_presets
    from profilers.system import cpu_model, gpu_info, usable_cpus

    seen: dict[str, Any] = {"cpu": cpu_model(), "logical_cpus": len(usable_cpus())}
    gpu_seen: dict[str, Any] | None = None
    presets, broken = scan_presets()
    out = []
    for preset in presets:
        reason = preset.unusable_reason()
        if preset.device == "cuda" and gpu_seen is None:
            gpu_seen = {**seen, **gpu_info()}
        warning = preset.hardware_warning(gpu_seen if preset.device == "cuda" else seen)
        out.append({
            "name": preset.name, "backend": preset.backend, "device": preset.device,
            "precision": preset.precision, "batch_size": preset.batch_size,
            "threads": preset.resolved_threads() if preset.device == "cpu" else None,
            "hardware": list(preset.hardware), "usable": reason is None, "reason": reason,
            "warning": warning, "source": preset.source, "description": preset.description,
            "protocol": preset.protocol.to_dict(), "broken": False,
        })
    for b in broken:
        out.append({
            "name": b.name, "backend": None, "device": None, "precision": None,
            "batch_size": None, "threads": None, "hardware": [], "usable": False,
            "reason": b.reason, "warning": None, "source": b.source, "description": "",
            "protocol": None, "broken": True,
        })
    return out


def run(args: argparse.Namespace) -> int:
    from lana.commands.assemble import print_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        devices = list_devices()
    print_warnings(caught)  # a user preset named like a built-in one
    if args.json:
        print(json.dumps(devices, indent=1))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="device presets", title_justify="left")
    for column in ("name", "backend", "device", "precision", "batch", "threads", "usable here"):
        table.add_column(column)
    notes = []
    for d in devices:
        if d["broken"]:
            notes.append(f"[red]{escape(d['name'])}[/]: {escape(d['reason'])}")
            status = f"[red]broken[/] ({len(notes)})"
        elif not d["usable"]:
            notes.append(f"[red]{escape(d['name'])}[/]: {escape(d['reason'])}")
            status = f"[red]no[/] ({len(notes)})"
        elif d["warning"]:
            notes.append(f"[yellow]{escape(d['name'])}[/]: {escape(d['warning'])}")
            status = f"[yellow]yes[/] ({len(notes)})"
        else:
            status = "[green]yes[/]"
        name = d["name"] if d["source"] == "builtin" else f"{d['name']} ({d['source']})"
        table.add_row(escape(name), d["backend"] or "-", d["device"] or "-", d["precision"] or "-",
                      str(d["batch_size"] or "-"), str(d["threads"] or "-"), status)
    console = Console()
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"({i}) {note}", soft_wrap=True)
    return 0

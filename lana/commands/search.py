"""Choose K diverse architectures per latency budget with an integer program (HiGHS).

Reads a scores file (lana score) and one or more LUTs (lana-profile); the i-th --budget limits
the i-th --lut (milliseconds, or 0.5x = half the teacher's latency on that LUT).  One --budget
may list several targets, 0.3x,0.4x,0.5x or a range 0.3x:0.7x:0.1x, for a Pareto front; each
target is warm-started from its neighbour's architectures.  Writes --out (JSON: per budget the
architectures in lana.arch/1 form with predicted latency per LUT, objective, HiGHS status, dual
bound and gap) and the Pareto front as a PNG beside it.

    lana search --lut luts/cpu-ort/demo.json --scores run/scores.json --budget 0.5x --k 10 \\
        --out run/search.json
"""

from __future__ import annotations

import argparse

from lana.cli import command_parser, whole


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "search", __doc__)
    p.add_argument("--lut", action="append", required=True, metavar="LUT",
                   help="LUT file; repeat for several devices (each gets a cost table)")
    p.add_argument("--scores", required=True, help="scores file written by lana score")
    p.add_argument("--budget", action="append", required=True, metavar="B",
                   help="budget for the LUT in the same position: ms, or 0.5x of the teacher; "
                   "one of them may be a list 0.3x,0.5x or a range 0.3x:0.7x:0.1x")
    p.add_argument("--k", type=int, default=10, help="architectures per budget (default 10)")
    p.add_argument("--overlap", type=float, default=0.7,
                   help="a new architecture shares at most this fraction of layers with each "
                   "earlier one (default 0.7)")
    p.add_argument("--single-shot", action="store_true",
                   help="only the teacher op and identity per layer (no pretraining needed)")
    p.add_argument("--max-params", metavar="P",
                   help="also limit parameters: a count (5M, 2.5e6) or a fraction (0.5x)")
    p.add_argument("--max-flops", metavar="F",
                   help="also limit FLOPs at batch 1 (PyTorch's flop counter): a count (600M, "
                   "1.2e9) or a fraction (0.5x)")
    p.add_argument("--baselines", action="store_true",
                   help="also run random sampling and evolutionary search on the same objective "
                   "and budgets for the same time as the integer program, and report their best")
    p.add_argument("--out", required=True, help="report JSON; the Pareto plot goes beside it")
    p.add_argument("--gap", type=float, default=0.005,
                   help="relative optimality gap each solve is proved within (default 0.005)")
    p.add_argument("--time-limit", type=float, default=2.0,
                   help="seconds per solve before reporting the gap reached (default 2)")
    p.add_argument("--time-budget", type=float,
                   help="seconds for all K solves of one budget together (default: no cap)")
    p.add_argument("--threads", type=whole(1), default=1, help="HiGHS threads (default 1)")
    p.add_argument("--strategy", choices=("top-down", "bottom-up", "cold"), default="top-down",
                   help="warm-start order for several budgets (default top-down)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from lana.search.report import search_files

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        report = search_files(luts=args.lut, scores=args.scores, budgets=args.budget,
                              out=args.out, k=args.k, overlap=args.overlap,
                              single_shot=args.single_shot, max_params=args.max_params,
                              max_flops=args.max_flops, gap=args.gap,
                              time_limit=args.time_limit, time_budget=args.time_budget,
                              threads=args.threads, strategy=args.strategy,
                              plot=not args.no_plot, baselines=args.baselines)
    for line in warning_lines(report, [str(w.message) for w in caught]):
        print(f"warning: {line}")
    _print_summary(report)
    if args.baselines:
        _print_baselines(report)
    print(f"wrote {args.out}" + (f" and {report['plot']}" if report.get("plot") else ""))
    return 0


def warning_lines(report: dict, caught: list[str]) -> list[str]:
    """What went wrong, once each: warnings raised while loading and solving that no target
    reports, then each target's own, labelled with its budget; the per-solve "stopped at its time
    limit" notes of a target become one line."""
    per_target = {w for t in report["targets"] for w in t["warnings"]}
    lines = [w for w in dict.fromkeys(caught) if w not in per_target]
    for t in report["targets"]:
        label = _budget_text(t, values=False)
        stopped = [a for a in t["architectures"] if a["status"] == "time_limit"]
        lines += [f"{label}: {w}" for w in t["warnings"] if "time limit with gap" not in w]
        if stopped:
            lines.append(f"{label}: {len(stopped)} of {t['found']} solves stopped at their time "
                         f"limit before proving the {report['gap']:.2%} gap (largest gap "
                         f"{max(a['gap'] for a in stopped):.2%}); a larger --time-limit or "
                         f"--time-budget tightens the certificates")
    return lines


def _budget_text(target: dict, *, values: bool = True) -> str:
    return ", ".join(f"{name} {b['given']}" + (f" ({b['limit']:.4g})" if values else "")
                     for name, b in target["budgets"].items())


def _print_summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['teacher']}: K={report['k']}, overlap {report['overlap']}, "
                  f"{report['time_s']:.2f} s", title_justify="left")
    for col in ("budget", "found", "best objective", "its predicted costs", "max gap", "time s"):
        table.add_column(col, justify="right")
    for t in report["targets"]:
        best = min(t["architectures"], key=lambda a: a["objective"], default=None)
        # costs in the order of the budget column, each named
        pred = (", ".join(f"{name} {best['costs'][name]:.4g}" for name in t["budgets"])
                if best else "-")
        table.add_row(_budget_text(t), str(t["found"]), f"{best['objective']:.5g}" if best else "-",
                      pred, f"{t['max_gap']:.2%}" if t["max_gap"] is not None else "-",
                      f"{t['time_s']:.2f}")
    Console().print(table)


def _print_baselines(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="baselines given the integer program's time (best objective; lower is "
                  "better)", title_justify="left")
    for col in ("budget", "integer program", "evolution", "random", "architectures looked at"):
        table.add_column(col, justify="right")
    for t in report["targets"]:
        b = t.get("baselines")
        if not b:
            continue
        best = min((a["objective"] for a in t["architectures"]), default=None)
        cells = [f"{best:.5g}" if best is not None else "-"]
        for name in ("evolution", "random"):
            cells.append(f"{b[name]['best']:.5g}" if b[name]["best"] is not None else "none found")
        looked = f"{b['evolution']['evaluated']:,} / {b['random']['evaluated']:,}"
        table.add_row(_budget_text(t, values=False), *cells, looked)
    Console().print(table)

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

from lana.cli import command_parser


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
    p.add_argument("--out", required=True, help="report JSON; the Pareto plot goes beside it")
    p.add_argument("--gap", type=float, default=0.005,
                   help="relative optimality gap each solve is proved within (default 0.005)")
    p.add_argument("--time-limit", type=float, default=2.0,
                   help="seconds per solve before reporting the gap reached (default 2)")
    p.add_argument("--time-budget", type=float,
                   help="seconds for all K solves of one budget together (default: no cap)")
    p.add_argument("--threads", type=int, default=1, help="HiGHS threads (default 1)")
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
                              gap=args.gap, time_limit=args.time_limit,
                              time_budget=args.time_budget, threads=args.threads,
                              strategy=args.strategy, plot=not args.no_plot)
    for w in caught:
        print(f"warning: {w.message}")
    _print_summary(report)
    print(f"wrote {args.out}" + (f" and {report['plot']}" if report.get("plot") else ""))
    return 0


def _print_summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['teacher']}: K={report['k']}, overlap {report['overlap']}, "
                  f"{report['time_s']:.2f} s", title_justify="left")
    for col in ("budget", "found", "best objective", "predicted", "max gap", "time s"):
        table.add_column(col, justify="right")
    for t in report["targets"]:
        budget = ", ".join(f"{name} {b['given']} ({b['limit']:.4g})" for name, b in t["budgets"].items())
        best = min(t["architectures"], key=lambda a: a["objective"], default=None)
        pred = ", ".join(f"{v:.4g}" for v in best["costs"].values()) if best else "-"
        table.add_row(budget, str(t["found"]), f"{best['objective']:.5g}" if best else "-", pred,
                      f"{t['max_gap']:.2%}" if t["max_gap"] is not None else "-", f"{t['time_s']:.2f}")
    Console().print(table)

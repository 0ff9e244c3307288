"""Measure a search's candidates end to end; drop those over the budget, search again if too few fit.

Every architecture the search found for --budget is assembled and timed with the LUT's backend and
protocol, in turn with the teacher (a relative budget such as 0.5x is taken of that measured
teacher); a network's latency is its fastest timed iteration over its --repeats, which busy moments
of a shared machine cannot lower.  While fewer than --min-kept meet the budget, the search runs again under a
predicted limit corrected by what was measured (the measured/predicted ratio after one search, a
straight line through all candidates after more), at most --rounds times.  --out holds the passing
architectures (what lana select reads) and every measurement; exit status 1 when none passed (the
fastest measured are kept then).

    lana verify --search run/search.json --lut run/lut.json --device cpu-ort --budget 0.5x \\
        --out run/verify.json
"""

from __future__ import annotations

import argparse
import json
import sys

from lana.cli import command_parser, whole


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "verify", __doc__)
    p.add_argument("--search", required=True, help="search result written by lana search")
    p.add_argument("--lut", required=True, help="the LUT the search used")
    p.add_argument("--device", required=True, help="device preset the LUT was measured with")
    p.add_argument("--budget", required=True, help="which budget of the search result (e.g. 0.5x, "
                   "or ms); the measured latency must meet it")
    p.add_argument("--scores", help="scores file for re-searching (default: the one the search "
                   "result names)")
    p.add_argument("--min-kept", type=int, default=3,
                   help="search again while fewer candidates pass (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="re-searches at most (default 3)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved measurements per network, median kept (default 3)")
    p.add_argument("--settle", type=whole(0), default=2,
                   help="measure a round again (after 30 s) up to this many times while the "
                        "teacher is more than 30%% off its calibrated prediction (default 2)")
    p.add_argument("--out", required=True, help="JSON to write (e.g. run/verify.json)")
    p.add_argument("--json", action="store_true", help="print the written document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lana.commands.pretrain import call_reporting_warnings
    from lana.errors import check_output_file
    from lana.verify import verify

    check_output_file(args.out, "--out", "verify.json",
                      inputs=[("--search", args.search), ("--lut", args.lut),
                              ("--scores", args.scores)])

    res = call_reporting_warnings(
        verify, args.search, args.lut, args.device, args.budget, scores=args.scores,
        out=args.out, min_kept=args.min_kept, rounds=args.rounds, repeats=args.repeats,
        settle=args.settle,
        log=lambda line: print(line, file=sys.stderr))
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    print(f"{res['passed']} of {len(res['measured'])} measured candidates met the budget "
          f"({res['researched']} re-search(es)); wrote {args.out}", file=sys.stderr)
    return 1 if res["fallback"] else 0

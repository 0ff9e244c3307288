"""How far one round of end-to-end measurements is from the truth, by drift-correction window,
and with each network's fastest iteration instead.

``lana lut calibrate`` (by default) measures networks interleaved, each right after the teacher,
and scales each repeat by (median teacher timing) / (teacher timing around it): the median of
``window`` teacher timings in the order they were taken (:func:`lana.calibrate.combine_repeats`).
``lana run`` and ``lana verify`` take each network's fastest timed iteration over its repeats
instead, uncorrected (``statistic="fastest"``); the same timings are reduced that way too, against
a reference of the fastest iterations over all rounds.  This
benchmark measures ``--networks`` architectures of the demo LUT's pool (the teacher first) for
``--rounds`` rounds of ``--repeats`` repeats, as one verify round does, and keeps every raw timing.
The reference for a network is its latency over the teacher's, each the median of its raw timings
over all rounds.  Per window (1: the timing right before the network alone), it prints how far each
round's figures are from that reference: median, 90th percentile and worst relative error of a
network's latency / teacher latency, and the spread of one network's figure across rounds.  Every
window is applied to the same timings, so the comparison holds on a busy machine; the absolute
errors say how busy it was.

    python benchmarks/drift_correction.py                  # 2-7 minutes here, longer when busy
    python benchmarks/drift_correction.py --rounds 8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run(args) -> dict:
    from lana.calibrate import combine_repeats, measure_repeats, sample_architectures
    from lana.validate import open_lut

    lut, preset = open_lut(args.lut, args.device)
    archs = sample_architectures(lut, args.networks, seed=args.seed)  # the teacher first
    t0 = time.perf_counter()
    rounds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(args.rounds):
            rounds.append(measure_repeats(archs, lut, preset, repeats=args.repeats))
            print(f"round {r + 1}/{args.rounds} measured", file=sys.stderr)
    seconds = time.perf_counter() - t0
    pooled = [statistics.median(m.median for rs in rounds for m, _ in rs[j])
              for j in range(len(archs))]
    reference = [p / pooled[0] for p in pooled[1:]]
    out = {"lut": args.lut, "device": args.device, "networks": len(archs), "rounds": args.rounds,
           "repeats": args.repeats, "seconds": round(seconds, 1), "windows": {}}
    teacher_refs = [r.median for rs in rounds for run in rs for _, r in run if r is not None]
    out["teacher_timing_spread"] = (max(teacher_refs) - min(teacher_refs)) / statistics.median(
        teacher_refs)
    for window in args.windows:
        errors, per_network = [], [[] for _ in reference]
        for rs in rounds:
            figures = combine_repeats(rs, "median", True, window)
            for j, ((figure, _), ref) in enumerate(zip(figures[1:], reference)):
                ratio = figure / figures[0][0]
                errors.append(abs(ratio / ref - 1))
                per_network[j].append(ratio)
        out["windows"][str(window)] = _errors(errors, per_network)
    fastest = [min(m.fastest for rs in rounds for m, _ in rs[j]) for j in range(len(archs))]
    errors, per_network = [], [[] for _ in reference]
    for rs in rounds:
        figures = combine_repeats(rs, "fastest", drift_correction=False)
        for j, (figure, _) in enumerate(figures[1:]):
            ratio = figure / figures[0][0]
            errors.append(abs(ratio / (fastest[j + 1] / fastest[0]) - 1))
            per_network[j].append(ratio)
    out["fastest"] = _errors(errors, per_network)
    return out


def _errors(errors: list[float], per_network: list[list[float]]) -> dict:
    """The figures printed for one reduction: errors against the reference, and how much one
    network's latency / teacher latency moves from round to round (median over networks of
    standard deviation / mean)."""
    sd = [statistics.pstdev(v) / statistics.fmean(v) for v in per_network if len(v) > 1]
    return {"median_error": statistics.median(errors),
            "p90_error": statistics.quantiles(errors, n=10, method="inclusive")[-1],
            "max_error": max(errors), "round_to_round_sd": statistics.median(sd) if sd else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lut", default=os.path.join(ROOT, "luts", "cpu-ort", "demo.json"))
    p.add_argument("--device", default="cpu-ort")
    p.add_argument("--networks", type=int, default=11, help="the teacher and this many - 1 others")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3, help="repeats per round, as lana verify")
    p.add_argument("--windows", default="1,3,5", help="drift-correction windows to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        args.windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        p.error(f"--windows takes odd counts separated by commas (1,3,5), got {args.windows!r}")
    if args.networks < 2 or args.rounds < 2 or args.repeats < 1:
        p.error("--networks and --rounds need at least 2, --repeats at least 1")
    if any(w < 1 or w % 2 == 0 for w in args.windows):
        p.error(f"--windows takes odd counts (1, 3, 5, ...), got {args.windows}")
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['networks']} networks of {args.lut} on {args.device}, {args.rounds} rounds x "
          f"{args.repeats} repeats in {out['seconds']:.0f} s; teacher timings spread "
          f"{out['teacher_timing_spread']:.0%} (max - min over median)")
    print("error of one round's latency / teacher latency against all rounds pooled:")
    rows = [(f"median, drift window {w}", v) for w, v in out["windows"].items()]
    for label, v in rows + [("fastest iteration", out["fastest"])]:
        print(f"  {label:24s} median {v['median_error']:.1%}, 90th pct {v['p90_error']:.1%}, "
              f"worst {v['max_error']:.1%}; round-to-round sd {v['round_to_round_sd']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

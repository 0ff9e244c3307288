"""Inspect and combine latency LUTs: show one, diff two, merge the shards of one profile.

    lana lut show luts/cpu-ort/demo.json        # device, load, protocol, coverage, noisy, extremes, families
    lana lut diff A.json B.json                 # op by op: ratio B/A, who is faster, per family
    lana lut merge part1.json part2.json --out full.json
    lana lut merge run1.json run2.json run3.json --combine min --out fastest.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lana.cli import command_parser, whole


def describe_calibration(cal: dict) -> str:
    """A calibration as people read it: the fit, what it was fitted on, and its error."""
    text = f"{cal.get('offset_ms', 0.0):+.4f} ms + {cal.get('slope', 1.0):.4f} x LUT sum"
    terms = cal.get("family_ms") or {}
    if terms:
        text += ", per op " + ", ".join(f"{f} {v:+.4f} ms" for f, v in sorted(terms.items()))
    if cal.get("model"):
        text += f"; the {cal['model']} fit"
    if cal.get("n_fit") is not None:
        text += (f" on {cal['n_fit']} networks" + (f" of the {cal['pool']} pool"
                                                    if cal.get("pool") else ""))
    held = cal.get("held_out") or {}
    after = held.get("after") if isinstance(held, dict) else None
    if isinstance(after, dict) and after.get("median_abs") is not None:
        text += (f"; held-out error median {100 * after['median_abs']:.1f} %"
                 + (f", worst {100 * after['max_abs']:.1f} %" if after.get("max_abs") is not None
                    else ""))
    return text


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "lut", __doc__)
    actions = p.add_subparsers(dest="lut_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="summarise one LUT")
    show.add_argument("lut", help="LUT file")
    show.add_argument("--top", type=whole(0), default=5,
                      help="how many slowest/fastest ops to list")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)
    d = actions.add_parser("diff", help="compare two LUTs op by op")
    d.add_argument("a", help="first LUT (the reference)")
    d.add_argument("b", help="second LUT")
    d.add_argument("--top", type=whole(0), default=5, help="how many largest changes to list")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=run_diff)
    m = actions.add_parser("merge", help="join the shards of one lana-profile run, or combine "
                                         "whole profiles taken at different moments")
    m.add_argument("luts", nargs="+", help="two or more shard LUT files of one profile (or "
                                           "whole profiles, with --combine)")
    m.add_argument("--combine", choices=("min", "median"),
                   help="the files are whole profiles of one pool: per op, keep the fastest "
                        "profile's entry (min; on a shared machine, whose busy moments only add "
                        "time) or the median")
    m.add_argument("--out", required=True, help="merged LUT file to write")
    m.set_defaults(func=run_merge)
    try:  # `lana lut calibrate` lives in its own module
        from lana.commands.lut_calibrate import register_into
    except ModuleNotFoundError as exc:
        if exc.name != "lana.commands.lut_calibrate":
            raise
    else:
        register_into(actions)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g} ms"


def load_of(device: dict[str, Any]) -> dict[str, Any] | None:
    """The machine's load while a LUT was measured (``device.seen.load``); for merged shards, the
    busiest shard's (or combined profile's), contended when any of them was.  None for LUTs made
    before loads were recorded."""
    seens = [device.get("seen"), *device.get("seen_shards", []), *device.get("seen_profiles", [])]
    loads = [seen.get("load") for seen in seens if isinstance(seen, dict)]
    loads = [load for load in loads if isinstance(load, dict)]
    if not loads:
        return None
    busiest = max(loads, key=lambda load: (bool(load.get("busy")), load.get("others_peak") or 0.0))
    contended = [load for load in loads if load.get("contended")]
    if contended and not busiest.get("contended"):
        return {**busiest, "contended": True,
                "contention_warning": contended[0].get("contention_warning")}
    return busiest


def format_summary(s: dict[str, Any]) -> str:
    from profilers.load import describe_load

    dev, proto = s["device"], s["protocol"]
    seen = dev.get("seen") or {}
    lines = [
        f"{s['path']}: teacher {s['teacher']}, pool {s['pool']}, input {'x'.join(map(str, s['input_shape']))}",
        f"device   {dev.get('preset')}: {dev.get('backend')} {dev.get('device', '')} "
        f"{dev.get('precision')}, batch {dev.get('batch_size')}, threads {dev.get('threads')}",
        f"ran on   {seen.get('cpu')}" + (f", {seen['gpu']} (driver {seen.get('driver')})" if seen.get("gpu") else "")
        + "".join(f", {lib} {seen[lib]}" for lib in ("onnxruntime", "torch", "tensorrt") if seen.get(lib)),
        f"load     {describe_load(s.get('load', load_of(dev)))}",
        f"protocol warm-up {proto.get('warmup_s')} s / {proto.get('warmup_iters')} it, then >= "
        f"{proto.get('min_iters')} it and >= {proto.get('min_time_s')} s, {proto.get('statistic')}, "
        f"noise > {proto.get('noise_threshold')} IQR/median re-measured",
        f"created  {s['created']}, op code {s['ops_fingerprint']}",
        f"coverage {s['measured']} measured, {s['failed']} failed, {s['missing']} missing of "
        f"{s['required']} needed; {s['noisy']} noisy",
        f"fixed    {_ms(s['fixed_ms'])} (skeleton); teacher predicted {_ms(s['teacher_total_ms'])}"
        + (f"\ncalib.   {describe_calibration(s['calibration'])}" if s["calibration"] else ""),
        "slowest  " + "; ".join(f"{k} {_ms(v)}" for k, v in s["slowest"]),
        "fastest  " + "; ".join(f"{k} {_ms(v)}" for k, v in s["fastest"]),
        "families " + ", ".join(f"{f} {_ms(v['median_ms'])} (n={v['n']})"
                                for f, v in s["families"].items()),
    ]
    if s["failed_examples"]:
        lines.append("failed   " + "; ".join(f"{k}: {r}" for k, r in s["failed_examples"]))
    return "\n".join(lines)


def format_diff(d: dict[str, Any]) -> str:
    r, rel = d["ratio_b_over_a"], d["abs_rel_change"]

    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}x"

    differs = d.get("differs") or {}
    what = ", ".join(f"{name} ({a} vs {b})" for name, (a, b) in differs.items())
    lines = []
    if set(differs) - {"preset"}:
        lines.append(f"WARNING  A and B differ in {what}: they time different ops and networks, so "
                     f"the figures below compare different things, not two devices")
    elif differs:
        lines.append(f"note     A and B differ in {what}: the figures below compare the devices")
    lines += [
        f"A {d['a']['path']} ({d['a']['preset']})  vs  B {d['b']['path']} ({d['b']['preset']})",
        f"ops      {d['common']} in both, {d['only_a']} only in A, {d['only_b']} only in B",
        f"B/A      min {x(r['min'])}, p10 {x(r['p10'])}, median {x(r['median'])}, p90 {x(r['p90'])}, "
        f"max {x(r['max'])}; fixed {x(d['fixed_ratio'])}",
        f"faster   A on {d['a_faster']} ops, B on {d['b_faster']} ops",
    ]
    if d["same_device"] and rel["median"] is not None:
        lines.append(f"repeat   |B-A|/A median {rel['median']:.2%}, p95 {rel['p95']:.2%}")
    lines.append("families " + ", ".join(f"{f} {x(v['median_ratio'])} (n={v['n']})"
                                         for f, v in d["families"].items()))
    lines.append("largest  " + "; ".join(f"{k} {a:.4g} -> {b:.4g} ms"
                                         for k, a, b in d["largest_changes"]))
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    from lana.lut import Lut, summarize

    s = summarize(Lut.load(args.lut, check_fingerprint=False), top=args.top)
    s["load"] = load_of(s["device"])
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from lana.lut import Lut, diff

    d = diff(Lut.load(args.a, check_fingerprint=False), Lut.load(args.b, check_fingerprint=False),
             top=args.top)
    print(json.dumps(d, indent=1) if args.json else format_diff(d))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from lana.errors import check_output_file
    from lana.lut import LutError, merge, summarize

    check_output_file(args.out, "--out", "merged.json", LutError,
                      inputs=[("input", path) for path in args.luts])
    merged = merge(args.luts, args.out, combine=args.combine)
    s = summarize(merged)
    print(f"{args.out}: {s['measured']} measured, {s['failed']} failed, {s['missing']} missing of "
          f"{s['required']} needed (from {len(args.luts)} files)")
    return 0

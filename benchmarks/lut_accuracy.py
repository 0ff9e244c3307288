"""LUT accuracy on ``cpu-ort``: predicted vs. measured end-to-end latency, before and after calibration.

For each teacher (default: ``demo`` at 32 px and ``efficientnet_b0`` at 224 px, small pool) this
profiles a LUT with the ``cpu-ort`` preset (or reuses one in ``--lut-dir`` made with the same op
code), then runs :func:`lana.calibrate.calibrate`: random architectures spread over the latency
range are measured end to end (``--repeats`` interleaved rounds), a third are held out, the
calibration is fitted on the rest, and the held-out error is reported before (raw LUT sum) and
after calibration.  Targets: after calibration, median |predicted - measured| / measured <= 3 %
and the worst <= 8 %.

The default protocol is the one for a machine shared with other work, whose busy moments only
ever add time: three profiles per pool, minutes apart, joined per entry by their fastest
(``lana lut merge --combine min``), and each architecture's fastest of five interleaved repeats
(``--statistic min``, no drift correction).  ``--profiles 1 --statistic median --repeats 3`` is
``lana lut calibrate``'s default protocol, for comparison.

    python benchmarks/lut_accuracy.py                       # table, PNGs in --plot-dir
    python benchmarks/lut_accuracy.py --json                # one JSON object on stdout
    python benchmarks/lut_accuracy.py --profiles 1 --statistic median --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a checkout: make `lana` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MEDIAN = 0.03
TARGET_WORST = 0.08
# reductions of one set of repeats that the report compares: (statistic, drift correction)
COMPARE = (("min", False), ("median", True))


def lut_paths(teacher: str, device: str, lut_dir: Path, profiles: int) -> list[Path]:
    """Where the ``profiles`` small-pool profiles of ``teacher`` are kept (one per profile)."""
    from lana.ops import ops_fingerprint

    stem = f"{teacher}-small-{Path(device).stem}-{ops_fingerprint()}"
    return [lut_dir / f"{stem}{'' if i == 0 else f'-p{i + 1}'}.json" for i in range(profiles)]


def profile_once(teacher: str, device: str, path: Path, log) -> float:
    """Profile (or complete: resume) the small pool of ``teacher`` into ``path``; seconds taken."""
    from lana.profile import profile

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = profile(device, teacher, pool="small", out=path, resume=path.exists())
    if report.measured:
        log(f"{teacher}: profiled {report.measured} ops ({report.noisy} noisy, "
            f"{report.failed} failed, {report.reused} already there) into {path}")
    return time.perf_counter() - start


def prepare_luts(teachers: list[str], device: str, lut_dir: Path, log, profiles: int = 1,
                 combine: str = "min") -> dict[str, tuple[Path, float]]:
    """A current small-pool LUT per teacher in ``lut_dir`` (profiled, or completed when the pool
    gained ops since; nothing is measured twice), and the seconds its profiles took.

    With ``profiles`` > 1 each pool is profiled that many times, the teachers taking turns so
    that one teacher's profiles lie minutes apart, and the LUT used is
    ``lana lut merge --combine`` of them: per entry the fastest profile's (``min``) or the median.
    """
    from lana.lut import merge

    paths = {t: lut_paths(t, device, lut_dir, profiles) for t in teachers}
    seconds = dict.fromkeys(teachers, 0.0)
    for i in range(profiles):
        for t in teachers:
            seconds[t] += profile_once(t, device, paths[t][i], log)
    if profiles == 1:
        return {t: (paths[t][0], seconds[t]) for t in teachers}
    out = {}
    for t in teachers:
        merged = paths[t][0].with_name(f"{paths[t][0].stem}-{combine}{profiles}.json")
        merge(paths[t], merged, combine=combine)
        out[t] = (merged, seconds[t])
    return out


def run(teachers: list[str], *, device: str, samples: int, repeats: int, lut_dir: Path,
        plot_dir: Path | None, seed: int, write: bool, log, drift_correction: bool = False,
        profiles: int = 3, combine: str = "min", statistic: str = "min") -> dict[str, Any]:
    import torch

    from lana.calibrate import calibrate

    torch.set_num_threads(1)
    lut_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"device": device, "samples": samples, "repeats": repeats,
                           "drift_correction": drift_correction, "profiles": profiles,
                           "combine": combine, "statistic": statistic,
                           "targets": {"median": TARGET_MEDIAN, "worst": TARGET_WORST},
                           "command": " ".join(["python", "benchmarks/lut_accuracy.py",
                                                *sys.argv[1:]]),
                           "load_avg_1m_start": os.getloadavg()[0], "teachers": {}}
    luts = prepare_luts(teachers, device, lut_dir, log, profiles, combine)
    for teacher in teachers:
        path, profile_s = luts[teacher]
        plot = plot_dir / f"lut_accuracy_{teacher}.png" if plot_dir else None
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = calibrate(path, device, teacher=teacher, samples=samples, repeats=repeats,
                               seed=seed, write=write, plot=plot,
                               drift_correction=drift_correction, statistic=statistic,
                               compare=[c for c in COMPARE if c != (statistic, drift_correction)])
        seconds = time.perf_counter() - start
        b, a = report.before, report.after
        ok = a["median_abs"] <= TARGET_MEDIAN and a["max_abs"] <= TARGET_WORST
        log(f"{teacher}: held-out n={a['n']}  before median {b['median_abs']:.1%} worst "
            f"{b['max_abs']:.1%}  ->  after median {a['median_abs']:.1%} worst {a['max_abs']:.1%}"
            f"  [{'meets' if ok else 'misses'} the targets]  fit {report.fit.name} "
            f"offset {report.fit.offset_ms:+.3f} ms slope {report.fit.slope:.3f}  ({seconds:.0f} s)")
        for name, alt in report.alternatives.items():
            log(f"{teacher}:   the same repeats reduced by {name}: after median "
                f"{alt['after']['median_abs']:.1%} worst {alt['after']['max_abs']:.1%} "
                f"(fit {alt['model']})")
        doc = report.to_dict()
        doc.update({"lut": str(path), "profile_s": profile_s, "calibrate_s": seconds,
                    "plot": str(plot) if plot else None, "meets_targets": ok})
        out["teachers"][teacher] = doc
    out["load_avg_1m_end"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    from lana.cache import cache_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default="demo,efficientnet_b0",
                        help="comma-separated teacher names (default: demo,efficientnet_b0)")
    parser.add_argument("--device", default="cpu-ort", help="device preset (default cpu-ort)")
    parser.add_argument("--samples", type=int, default=30, help="architectures per teacher")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per architecture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profiles", type=int, default=3,
                        help="profile each pool this many times, the teachers taking turns")
    parser.add_argument("--combine", choices=("min", "median"), default="min",
                        help="how the profiles join into the LUT, per entry (default min)")
    parser.add_argument("--statistic", choices=("min", "median"), default="min",
                        help="what an architecture's repeats reduce to (default min)")
    parser.add_argument("--drift-correction", action=argparse.BooleanOptionalAction,
                        help="scale measurements by the teacher measured next to them (default: "
                             "only with --statistic median)")
    parser.add_argument("--lut-dir", default=str(cache_root() / "benchmarks"),
                        help="where the profiled LUTs are kept (default: $LANA_CACHE_DIR/benchmarks)")
    parser.add_argument("--plot-dir", default=".", help="where PNGs go ('' for none)")
    parser.add_argument("--write", action="store_true", help="store the calibration in the LUTs")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = run([t.strip() for t in args.teachers.split(",") if t.strip()], device=args.device,
                 samples=args.samples, repeats=args.repeats, lut_dir=Path(args.lut_dir),
                 plot_dir=Path(args.plot_dir) if args.plot_dir else None, seed=args.seed,
                 write=args.write, log=log, profiles=args.profiles, combine=args.combine,
                 statistic=args.statistic,
                 drift_correction=(args.statistic == "median" if args.drift_correction is None
                                   else args.drift_correction))
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LUT accuracy on ``cpu-ort``: predicted vs. measured end-to-end latency, before and after calibration.

For each teacher (default: ``demo`` at 32 px and ``efficientnet_b0`` at 224 px, small pool) this
profiles a LUT with the ``cpu-ort`` preset (or reuses one in ``--lut-dir`` made with the same op
code), then runs :func:`lana.calibrate.calibrate`: random architectures spread over the latency
range are measured end to end (``--repeats`` interleaved rounds), a third are held out, the
calibration is fitted on the rest, and the held-out error is reported before (raw LUT sum) and
after calibration.  Targets: after calibration, median |predicted - measured| / measured <= 3 %
and the worst <= 8 %.

    python benchmarks/lut_accuracy.py                       # table, PNGs in --plot-dir
    python benchmarks/lut_accuracy.py --json                # one JSON object on stdout
    python benchmarks/lut_accuracy.py --teachers demo --samples 30 --repeats 3
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


def lut_for(teacher: str, device: str, lut_dir: Path, log, profiles: int = 1
            ) -> tuple[Path, float]:
    """A current small-pool LUT of ``teacher`` in ``lut_dir``: profiled, or completed (resume)
    when the teacher or pool gained ops since; nothing is measured twice.

    With ``profiles`` > 1 the pool is profiled that many times (separate files) and the LUT used
    holds, per entry, the median of the profiles: an entry that a disturbance of the machine
    inflated in one profile does not reach the prediction.
    """
    import statistics

    from lana.lut import Lut
    from lana.ops import ops_fingerprint
    from lana.profile import profile

    stem = f"{teacher}-small-{Path(device).stem}-{ops_fingerprint()}"
    paths = [lut_dir / f"{stem}{'' if i == 0 else f'-p{i + 1}'}.json" for i in range(profiles)]
    start = time.perf_counter()
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = profile(device, teacher, pool="small", out=path, resume=path.exists())
        if report.measured:
            log(f"{teacher}: profiled {report.measured} ops ({report.noisy} noisy, "
                f"{report.failed} failed, {report.reused} already there) into {path}")
    seconds = time.perf_counter() - start
    if profiles == 1:
        return paths[0], seconds
    luts = [Lut.load(p) for p in paths]
    merged = Lut.load(paths[0])
    for key in merged.required_keys():
        values = [lut.latency(key) for lut in luts if lut.has(key)]
        if values:
            merged.entries[key] = {**merged.entries[key], "median": statistics.median(values),
                                   "profiles": values}
    merged.data["fixed"] = {**merged.fixed,
                            "median": statistics.median(lut.fixed_ms for lut in luts)}
    merged.data["calibration"] = None
    merged.data["merged_from"] = [str(p) for p in paths]
    out = lut_dir / f"{stem}-median{profiles}.json"
    merged.save(out)
    return out, seconds


def run(teachers: list[str], *, device: str, samples: int, repeats: int, lut_dir: Path,
        plot_dir: Path | None, seed: int, write: bool, log, drift_correction: bool = True,
        profiles: int = 1) -> dict[str, Any]:
    import torch

    from lana.calibrate import calibrate

    torch.set_num_threads(1)
    lut_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"device": device, "samples": samples, "repeats": repeats,
                           "drift_correction": drift_correction, "profiles": profiles,
                           "targets": {"median": TARGET_MEDIAN, "worst": TARGET_WORST},
                           "command": " ".join(["python", "benchmarks/lut_accuracy.py",
                                                *sys.argv[1:]]),
                           "load_avg_1m_start": os.getloadavg()[0], "teachers": {}}
    for teacher in teachers:
        path, profile_s = lut_for(teacher, device, lut_dir, log, profiles)
        plot = plot_dir / f"lut_accuracy_{teacher}.png" if plot_dir else None
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = calibrate(path, device, teacher=teacher, samples=samples, repeats=repeats,
                               seed=seed, write=write, plot=plot,
                               drift_correction=drift_correction)
        seconds = time.perf_counter() - start
        b, a = report.before, report.after
        ok = a["median_abs"] <= TARGET_MEDIAN and a["max_abs"] <= TARGET_WORST
        log(f"{teacher}: held-out n={a['n']}  before median {b['median_abs']:.1%} worst "
            f"{b['max_abs']:.1%}  ->  after median {a['median_abs']:.1%} worst {a['max_abs']:.1%}"
            f"  [{'meets' if ok else 'misses'} the targets]  fit {report.fit.name} "
            f"offset {report.fit.offset_ms:+.3f} ms slope {report.fit.slope:.3f}  ({seconds:.0f} s)")
        doc = report.to_dict()
        doc.update({"lut": str(path), "profile_s": profile_s, "calibrate_s": seconds,
                    "plot": str(plot) if plot else None, "meets_targets": ok})
        out["teachers"][teacher] = doc
    out["load_avg_1m_end"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    from lana.export import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default="demo,efficientnet_b0",
                        help="comma-separated teacher names (default: demo,efficientnet_b0)")
    parser.add_argument("--device", default="cpu-ort", help="device preset (default cpu-ort)")
    parser.add_argument("--samples", type=int, default=30, help="architectures per teacher")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per architecture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profiles", type=int, default=1,
                        help="profile the pool this many times; the LUT takes each entry's median")
    parser.add_argument("--no-drift-correction", action="store_true",
                        help="do not scale measurements by the teacher measured next to them")
    parser.add_argument("--lut-dir", default=str(default_cache_dir().parent / "benchmarks"),
                        help="where the profiled LUTs are kept (default: $LANA_CACHE_DIR/benchmarks)")
    parser.add_argument("--plot-dir", default=".", help="where PNGs go ('' for none)")
    parser.add_argument("--write", action="store_true", help="store the calibration in the LUTs")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = run([t.strip() for t in args.teachers.split(",") if t.strip()], device=args.device,
                 samples=args.samples, repeats=args.repeats, lut_dir=Path(args.lut_dir),
                 plot_dir=Path(args.plot_dir) if args.plot_dir else None, seed=args.seed,
                 write=args.write, log=log, drift_correction=not args.no_drift_correction,
                 profiles=args.profiles)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

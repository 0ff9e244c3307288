"""Latency regression checks for users' CI: a model's speed relative to a fixed reference network.

Absolute latency on a CI machine drifts with load, frequency scaling and neighbours; a regression
check on it either cries wolf or misses real slow-downs.  :func:`bench` therefore measures the model
and a small fixed reference network (:func:`reference_net`, built in code with seeded weights) in
the same process, alternating them over several repeats (A B B A ...), and compares the median of
the per-repeat ratios model / reference with a stored baseline.  Drift that slows both leaves the
ratio alone; a model that got slower moves it.

The model is an ONNX file, a ``student.pt`` (from ``lana assemble``), or an architecture file.
Baselines are JSON (``lana.bench/1``) holding the ratio, the per-repeat ratios, the absolute
figures and what the machine was.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from lana.errors import LanaError, read_json_file

if TYPE_CHECKING:
    from torch import nn

    from profilers import Measurement, Protocol

BENCH_SCHEMA = "lana.bench/1"
REFERENCE_NAME = "lana.bench.reference/1"  # change when reference_net changes
REFERENCE_INPUT = (3, 112, 112)


class BenchError(LanaError):
    """A benchmark that cannot run or compare as asked."""


def reference_net() -> "nn.Module":
    """The fixed reference network: a conv stem, three stages of two depthwise-separable blocks, a head.

    About half a millisecond on two CPU cores at :data:`REFERENCE_INPUT`; made of the kernels the
    networks LANA builds are made of (dense, depthwise and pointwise convs; BN folds on export).
    Weights are seeded, so every run builds the same network.
    """
    import torch
    from torch import nn

    def cba(cin: int, cout: int, k: int, s: int, groups: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU()]

    width = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers: list[nn.Module] = cba(3, width, 3, 2)
        for out, stride in ((64, 2), (128, 2), (192, 1)):
            layers += cba(width, width, 3, stride, groups=width) + cba(width, out, 1, 1)
            layers += cba(out, out, 3, 1, groups=out) + cba(out, out, 1, 1)
            width = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
        net = nn.Sequential(*layers)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class BenchModel:
    """A model to benchmark: an ONNX path or a module, its input (C, H, W) and a label."""

    model: Any  # Path of an ONNX file, or an nn.Module
    input_shape: tuple[int, int, int]
    label: str
    digest: str  # sha256 of the file the model came from


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def onnx_input_shape(path: str | Path) -> tuple[int, int, int]:
    """(C, H, W) of an ONNX file's first input; the batch dimension may be symbolic."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for foreign files
        raise BenchError(f"{path} is not a readable ONNX file ({type(exc).__name__}); export it "
                         f"again") from exc
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BenchError(f"{path} has {len(inputs)} inputs; lana bench times single-input "
                         f"image models")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
        raise BenchError(f"{path}: input {inputs[0].name} has shape {dims}; lana bench needs a "
                         f"fixed (N, C, H, W) input with only the batch symbolic")
    return (int(dims[1]), int(dims[2]), int(dims[3]))


def load_bench_model(model: str | Path | None = None, arch: str | Path | None = None, *,
                     selector: str | None = None, input_shape: Any = None) -> BenchModel:
    """Read what ``--model`` (ONNX, student.pt or architecture JSON) or ``--arch`` names
    (``selector`` and ``input_shape``: an architecture's user-module teacher's)."""
    if (model is None) == (arch is None):
        raise BenchError("pass exactly one of --model (ONNX file, student.pt or architecture "
                         "JSON) and --arch")
    path = Path(model if model is not None else arch)  # type: ignore[arg-type]
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise BenchError(f"{path} {what}; pass an ONNX file, a student.pt from lana "
                         f"assemble, or an architecture file from lana search")
    suffix = path.suffix.lower()
    if arch is not None or suffix == ".json":
        from lana.assemble import build_student, read_arch
        from lana.teachers import create_teacher

        a = read_arch(path)
        teacher = create_teacher(a.teacher, selector=selector, input_shape=input_shape,
                                 pretrained=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net, _ = build_student(a, teacher)
        return BenchModel(net, teacher.input_shape, str(path), _sha256(path))
    if suffix == ".onnx":
        return BenchModel(path, onnx_input_shape(path), str(path), _sha256(path))
    if suffix in (".pt", ".pth"):
        from lana.assemble import load_student, read_student

        payload = read_student(path)
        shape = tuple(payload.get("teacher", {}).get("input_shape") or ())
        net = load_student(path)
        if len(shape) != 3:
            from lana.teachers import create_teacher

            shape = create_teacher(payload["arch"]["teacher"], pretrained=False).input_shape
        return BenchModel(net, tuple(int(v) for v in shape), str(path), _sha256(path))
    raise BenchError(f"{path}: unknown model file type {suffix!r}; pass .onnx, student.pt or an "
                     f"architecture .json")


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run (milliseconds; ratio = model / reference)."""

    model: str  # label (the path given)
    digest: str  # sha256 prefix of the model file
    device: str  # preset name
    repeats: int
    model_ms: tuple[float, ...]  # per-repeat medians
    reference_ms: tuple[float, ...]
    ratios: tuple[float, ...]  # per-repeat model / reference
    seen: Mapping[str, Any] = field(default_factory=dict)  # CPU model, threads, library versions
    protocol: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""

    noisy: tuple[bool, ...] = ()  # per repeat: a measurement of it stayed noisy

    @property
    def clean_ratios(self) -> tuple[float, ...]:
        """Ratios of the repeats whose measurements were not flagged noisy (all when none is)."""
        clean = tuple(r for r, bad in zip(self.ratios, self.noisy) if not bad)
        return clean or self.ratios

    @property
    def ratio(self) -> float:
        """Median ratio over the clean repeats: a repeat that another process on the machine
        disturbed (flagged noisy by the timing core) does not count."""
        return statistics.median(self.clean_ratios)

    @property
    def noise(self) -> float:
        """Relative spread of the clean ratios (IQR / median; half-range for < 4 repeats)."""
        r = sorted(self.clean_ratios)
        if len(r) < 2:
            return 0.0
        if len(r) < 4:
            spread = (r[-1] - r[0]) / 2
        else:
            q = statistics.quantiles(r, n=4, method="inclusive")
            spread = q[2] - q[0]
        return spread / self.ratio

    def to_dict(self) -> dict[str, Any]:
        return {"schema": BENCH_SCHEMA, "model": self.model, "digest": self.digest,
                "device": self.device, "reference": REFERENCE_NAME,
                "ratio": self.ratio, "noise": self.noise,
                "model_ms": statistics.median(self.model_ms),
                "reference_ms": statistics.median(self.reference_ms), "repeats": self.repeats,
                "ratios": list(self.ratios), "noisy_repeats": list(self.noisy),
                "model_ms_repeats": list(self.model_ms),
                "reference_ms_repeats": list(self.reference_ms), "seen": dict(self.seen),
                "protocol": dict(self.protocol), "created": self.created}

    @classmethod
    def from_dict(cls, data: Any, where: str = "baseline") -> "BenchResult":
        if not isinstance(data, Mapping) or data.get("schema") != BENCH_SCHEMA:
            raise BenchError(f"{where} is not a lana bench baseline (schema {BENCH_SCHEMA!r}); "
                             f"make one with lana bench ... --save-baseline FILE")
        if data.get("reference") != REFERENCE_NAME:
            raise BenchError(f"{where} was measured against reference {data.get('reference')!r}, "
                             f"this lana uses {REFERENCE_NAME!r}; save a new baseline")
        try:
            return cls(model=str(data["model"]), digest=str(data.get("digest", "")),
                       device=str(data["device"]), repeats=int(data["repeats"]),
                       model_ms=tuple(float(v) for v in data["model_ms_repeats"]),
                       reference_ms=tuple(float(v) for v in data["reference_ms_repeats"]),
                       ratios=tuple(float(v) for v in data["ratios"]),
                       noisy=tuple(bool(v) for v in data.get("noisy_repeats", ())),
                       seen=dict(data.get("seen") or {}), protocol=dict(data.get("protocol") or {}),
                       created=str(data.get("created", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchError(f"{where} is damaged ({type(exc).__name__}: {exc}); save a new "
                             f"baseline with --save-baseline") from None


def interleaved(a: Any, a_shape: Any, b: Any, b_shape: Any, preset: Any, *, repeats: int,
                protocol: "Protocol | None" = None, config: Any = None,
                labels: tuple[str, str] = ("the model", "the reference network"),
                ) -> tuple[list["Measurement"], list["Measurement"], dict[str, Any]]:
    """Measurements of ``a`` and ``b`` in each of ``repeats`` alternating rounds, and a's info.

    Both networks are activated once; round ``i`` measures A then B when ``i`` is even and B then A
    when odd, so a trend over the run affects both alike.  Shapes include the batch.
    """
    from lana.validate import NetworkSession

    a_ms: list[Measurement] = []
    b_ms: list[Measurement] = []
    with NetworkSession(a, a_shape, preset, protocol=protocol, config=config,
                        label=labels[0]) as sa, \
            NetworkSession(b, b_shape, preset, protocol=protocol, config=config,
                           label=labels[1]) as sb:
        info = sa.info()
        for i in range(repeats):
            if i % 2 == 0:
                a_ms.append(sa.measure())
                b_ms.append(sb.measure())
            else:
                b_ms.append(sb.measure())
                a_ms.append(sa.measure())
    return a_ms, b_ms, info


def clean_ratio(a: Sequence["Measurement"], b: Sequence["Measurement"]) -> float:
    """Median of a/b over the rounds where neither measurement is noisy (all rounds when none)."""
    pairs = [(x, y) for x, y in zip(a, b) if not (x.noisy or y.noisy)] or list(zip(a, b))
    return statistics.median(x.median / y.median for x, y in pairs)


def bench(model: str | Path | None = None, device: str = "cpu-ort", *,
          arch: str | Path | None = None, repeats: int = 7,
          protocol: "Protocol | None" = None, bench_model: BenchModel | None = None,
          selector: str | None = None, input_shape: Any = None) -> BenchResult:
    """Measure a model and the reference network alternately ``repeats`` times on ``device``."""
    from lana.validate import resolve_device
    from profilers import system

    if repeats < 1:
        raise BenchError(f"--repeats must be >= 1, got {repeats}")
    preset = resolve_device(device)
    target = (bench_model if bench_model is not None else
              load_bench_model(model, arch, selector=selector, input_shape=input_shape))
    protocol = protocol or preset.protocol
    batch = preset.batch_size
    model_m, ref_m, info = interleaved(
        target.model, (batch, *target.input_shape), reference_net(), (batch, *REFERENCE_INPUT),
        preset, repeats=repeats, protocol=protocol, labels=(target.label, "the reference network"))
    model_ms = [m.median for m in model_m]
    ref_ms = [m.median for m in ref_m]
    seen = {"cpu": system.cpu_model(), "threads": info.get("intra_op_threads", info.get("threads")),
            "onnxruntime": system.library_version("onnxruntime"),
            "torch": system.library_version("torch")}
    return BenchResult(
        model=target.label, digest=target.digest, device=preset.name, repeats=repeats,
        model_ms=tuple(model_ms), reference_ms=tuple(ref_ms),
        ratios=tuple(a / b for a, b in zip(model_ms, ref_ms)), seen=seen,
        protocol=protocol.to_dict(), noisy=tuple(x.noisy or y.noisy for x, y in zip(model_m, ref_m)),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


# ---------------------------------------------------------------------------------------------
# Baselines


def save_baseline(result: BenchResult, path: str | Path) -> Path:
    from lana.atomic import write_text

    path = Path(path)
    write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")
    return path


def read_baseline(path: str | Path) -> BenchResult:
    data = read_json_file(path, BenchError, "baseline",
                          missing=f"make it with lana bench ... --save-baseline {path}",
                          invalid="save a new one with --save-baseline")
    return BenchResult.from_dict(data, f"baseline {path}")


@dataclass(frozen=True)
class Comparison:
    """A run against a baseline: ``change`` = ratio / baseline ratio - 1 (positive is slower)."""

    current: BenchResult
    baseline: BenchResult
    tolerance: float

    @property
    def change(self) -> float:
        return self.current.ratio / self.baseline.ratio - 1

    @property
    def noise(self) -> float:
        """Combined relative noise of the two ratios."""
        return math.hypot(self.current.noise, self.baseline.noise)

    @property
    def regression(self) -> bool:
        return self.change > self.tolerance

    @property
    def improvement(self) -> bool:
        return self.change < -self.tolerance

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.noise > self.tolerance / 2:
            out.append(f"the ratios are noisy ({self.noise:.1%} spread) against a {self.tolerance:.0%} "
                       f"tolerance; raise --repeats or --tolerance, or run on a quieter machine")
        cpu_now, cpu_then = self.current.seen.get("cpu"), self.baseline.seen.get("cpu")
        if cpu_now and cpu_then and cpu_now != cpu_then:
            out.append(f"the baseline was measured on {cpu_then}, this run on {cpu_now}; ratios "
                       f"carry over between CPUs only roughly")
        if self.current.seen.get("threads") != self.baseline.seen.get("threads"):
            out.append(f"the baseline used {self.baseline.seen.get('threads')} threads, this run "
                       f"{self.current.seen.get('threads')}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.current.ratio, "baseline_ratio": self.baseline.ratio,
                "change": self.change, "tolerance": self.tolerance, "noise": self.noise,
                "regression": self.regression, "improvement": self.improvement,
                "model_ms": statistics.median(self.current.model_ms),
                "baseline_model_ms": statistics.median(self.baseline.model_ms),
                "warnings": self.warnings}


def compare(current: BenchResult, baseline: BenchResult, tolerance: float = 0.10) -> Comparison:
    """Compare a run with a baseline of the same device; a slow-down beyond ``tolerance`` regresses."""
    if not 0 < tolerance < 10:
        raise BenchError(f"--tolerance is a fraction (0.10 = 10 %), got {tolerance}")
    if current.device != baseline.device:
        raise BenchError(f"the baseline was measured on device {baseline.device!r}, not "
                         f"{current.device!r}; pass --device {baseline.device} or save a baseline "
                         f"for {current.device} with --save-baseline")
    return Comparison(current, baseline, float(tolerance))


__all__ = ["BENCH_SCHEMA", "BenchError", "BenchModel", "BenchResult", "Comparison",
           "REFERENCE_INPUT", "bench", "clean_ratio", "compare", "interleaved", "load_bench_model", "onnx_input_shape",
           "read_baseline", "reference_net", "save_baseline"]

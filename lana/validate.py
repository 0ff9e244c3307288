"""End-to-end latency validation: the assembled network measured against what its LUT predicted.

A LUT predicts a network as the sum of its parts, but runtimes are not additive (per-call overhead,
caches, fusion across layer boundaries).  :func:`validate` builds the network an architecture file
describes, measures it end to end through exactly the path the LUT entries were measured with
(``lana.ops.deploy``, ONNX export when the backend takes ONNX, the ``profilers`` backend with the
LUT's thread count and protocol), the teacher in alternation with it in the same session, and
reports predicted (raw and calibrated) against measured, the measured speed-up, and whether a
latency budget holds in reality (a relative one, ``0.5x``, taken of the teacher measured there).

:class:`NetworkSession` is that measuring path for whole networks; calibration (``lana.calibrate``)
and ``lana bench`` use it too, so every end-to-end figure in the toolkit is taken the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from lana.errors import LanaError, UnknownNameError

if TYPE_CHECKING:
    from torch import nn

    from lana.assemble import Architecture
    from lana.lut import Lut
    from profilers import BackendConfig, Measurement, Preset, Protocol


class ValidationError(LanaError):
    """Validation that cannot run as asked (bad budget, LUT for another device or input size)."""


# ---------------------------------------------------------------------------------------------
# Devices, LUT settings, measuring


def resolve_device(device: str) -> "Preset":
    """The device preset ``device`` (a name or a TOML path), refused when it cannot run here."""
    from profilers import ProfilerError, UnknownPresetError, load_preset

    try:
        preset = load_preset(device)
    except UnknownPresetError as exc:
        raise UnknownNameError(str(exc)) from None
    except ProfilerError as exc:
        raise ValidationError(str(exc)) from None
    reason = preset.unusable_reason()
    if reason is not None:
        raise ValidationError(f"device {preset.name!r} cannot run here: {reason}")
    return preset


def open_lut(path: str | Path, device: str, *, teacher: str | None = None) -> tuple["Lut", "Preset"]:
    """Load a LUT and the preset it must have been measured with; refuses a LUT of another device."""
    from lana.lut import Lut

    preset = resolve_device(device)
    lut = Lut.load(path, teacher=teacher)
    if lut.preset != preset.name:
        raise ValidationError(
            f"LUT {path} was measured on device {lut.preset!r}, not {preset.name!r}; pass "
            f"--device {lut.device_arg} or a LUT of {preset.name} (lana-profile --device {device} "
            f"--teacher {lut.teacher} --pool {lut.pool} --out NEW.json)")
    if lut.batch_size != preset.batch_size:
        preset = dataclasses.replace(preset, batch_size=lut.batch_size)
    return lut, preset


def check_lut_layers(lut: "Lut", teacher: Any) -> None:
    """Refuse a LUT whose layer list is not this teacher's (another selector, or the teacher
    changed since profiling): its entries would describe other layers."""
    layers = lut.layers
    if not layers:
        return
    problem = None
    if len(layers) != len(teacher.layers):
        problem = f"{len(layers)} layers, the teacher has {len(teacher.layers)}"
    else:
        for i, (entry, layer) in enumerate(zip(layers, teacher.layers)):
            own = teacher.teacher_spec(i).key
            listed = [k for k in entry.get("ops", ()) if k.startswith("teacher:")]
            if entry.get("name") != layer.name or (listed and own not in listed):
                problem = f"layer {i} ({layer.name}) differs"
                break
    if problem is not None:
        raise ValidationError(f"LUT {lut.path} was profiled for another version of teacher "
                              f"{teacher.name} ({problem}); re-profile it: "
                              f"{lut.command(resume=True)}")


def lut_protocol(lut: "Lut") -> "Protocol":
    """The protocol the LUT's entries were measured with (fields this version does not know dropped)."""
    from profilers import Protocol

    names = {f.name for f in dataclasses.fields(Protocol)}
    return Protocol.from_dict({k: v for k, v in lut.protocol.items() if k in names})


def lut_backend_config(lut: "Lut", preset: "Preset") -> "BackendConfig":
    """The preset's backend settings with the LUT's recorded thread count (a CPU preset says
    ``threads = "physical"``, which may resolve differently on this machine)."""
    config = preset.backend_config()
    recorded = lut.device.get("threads")
    if config.device == "cpu" and isinstance(recorded, int) and recorded != config.threads:
        warnings.warn(f"the LUT was measured with {recorded} threads, this machine's preset gives "
                      f"{config.threads}; measuring with {recorded} so the figures compare",
                      stacklevel=2)
        config = dataclasses.replace(config, threads=recorded)
    return config


# A whole network runs for milliseconds, long enough for a busy machine's scheduler to cut into
# many iterations of one attempt; such an attempt is flagged noisy by the timing core and, with
# these re-measurements, replaced by a clean one when the machine allows.
NETWORK_RETRIES = 3


def network_protocol(protocol: "Protocol") -> "Protocol":
    """``protocol`` for whole networks: the same, with at least :data:`NETWORK_RETRIES`
    re-measurements of a noisy attempt (the least noisy attempt is kept)."""
    return protocol.replace(retries=max(protocol.retries, NETWORK_RETRIES))


def robust_pick(measurements: Sequence["Measurement"]) -> "Measurement":
    """The repeat to report: of the repeats not flagged noisy (all of them when every one is),
    the one whose median is the median."""
    if not measurements:
        raise ValueError("no measurements to pick from")
    clean = [m for m in measurements if not m.noisy] or list(measurements)
    clean.sort(key=lambda m: m.median)
    return clean[(len(clean) - 1) // 2]


class NetworkSession:
    """A whole network on a preset's backend, activated once and measured as often as asked.

    ``model`` is an ``nn.Module`` (put in deployed form on a copy, exported to a temporary ONNX file
    when the backend takes ONNX; the same path ``lana.profile`` measures ops with) or the path of an
    ONNX file.  ``input_shape`` includes the batch.  Use as a context manager.
    """

    def __init__(self, model: "nn.Module | str | Path", input_shape: Sequence[int],
                 preset: "Preset", *, config: "BackendConfig | None" = None,
                 protocol: "Protocol | None" = None, label: str = "") -> None:
        self.model = model
        self.input_shape = tuple(int(v) for v in input_shape)
        self.preset = preset
        self.config = config if config is not None else preset.backend_config()
        self.protocol = network_protocol(protocol if protocol is not None else preset.protocol)
        self.label = label
        self._backend = None
        self._tmp: str | None = None

    def __enter__(self) -> "NetworkSession":
        import torch

        from lana.export import export_onnx
        from lana.ops import deploy
        from profilers import BuildError, ProfilerError, get_backend

        backend_cls = get_backend(self.preset.backend)
        model: Any = self.model
        if isinstance(model, (str, Path)):
            if backend_cls.accepts != "onnx":
                raise ValidationError(f"device {self.preset.name!r} times torch modules, not ONNX "
                                      f"files; pass a student.pt or an architecture instead")
            model = Path(model)
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # exporting; the backend sets its own threads
            try:
                model = deploy(copy.deepcopy(model))
                if backend_cls.accepts == "onnx":
                    self._tmp = tempfile.mkdtemp(prefix="lana-net-")
                    model = export_onnx(model, self.input_shape, Path(self._tmp) / "net.onnx")
            except BaseException:
                self._cleanup()
                raise
            finally:
                torch.set_num_threads(threads)
        backend = backend_cls(model, self.input_shape, self.config)
        try:
            backend.activate()
        except (BuildError, ProfilerError) as exc:
            self._cleanup()
            raise ValidationError(f"cannot run {self.label or 'the network'} on "
                                  f"{self.preset.name}: {exc}") from None
        except BaseException:
            self._cleanup()
            raise
        self._backend = backend
        return self

    def measure(self, protocol: "Protocol | None" = None) -> "Measurement":
        if self._backend is None:
            raise RuntimeError("NetworkSession.measure() outside 'with'")
        return self._backend.measure(network_protocol(protocol) if protocol else self.protocol)

    def info(self) -> dict[str, Any]:
        return self._backend.info() if self._backend is not None else {}

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __exit__(self, *exc: object) -> None:
        try:
            if self._backend is not None:
                self._backend.deactivate()
        finally:
            self._backend = None
            self._cleanup()


def measure_network(model: "nn.Module | str | Path", input_shape: Sequence[int], preset: "Preset",
                    *, config: "BackendConfig | None" = None, protocol: "Protocol | None" = None,
                    repeats: int = 1, label: str = "") -> "Measurement":
    """Measure one network end to end (``repeats`` times in one session, see :func:`robust_pick`)."""
    with NetworkSession(model, input_shape, preset, config=config, protocol=protocol,
                        label=label) as session:
        runs = [session.measure() for _ in range(max(1, repeats))]
    return robust_pick(runs)


# ---------------------------------------------------------------------------------------------
# Budgets


def is_relative_budget(text: str | float | None) -> bool:
    """Whether a budget is a fraction of the teacher (``"0.5x"``) rather than milliseconds."""
    return isinstance(text, str) and text.strip().lower().endswith("x")


def parse_budget(text: str | float | None, teacher_ms: float | None = None) -> float | None:
    """``"4.2"``/``"4.2ms"`` -> 4.2 ms; ``"0.5x"`` -> half of ``teacher_ms`` (the teacher's latency
    the caller goes by: measured beside the network, or LUT-predicted); ``None`` -> ``None``."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value, relative = float(text), False
    else:
        m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(x|ms)?\s*", str(text),
                         re.IGNORECASE)
        if not m:
            raise ValidationError(f"budget {text!r} is neither milliseconds (e.g. 4.2) nor a "
                                  f"fraction of the teacher (e.g. 0.5x)")
        value, relative = float(m[1]), (m[2] or "").lower() == "x"
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(f"budget must be positive: milliseconds (e.g. 4.2) or a fraction of "
                              f"the teacher (e.g. 0.5x), got {text!r}")
    if relative:
        if teacher_ms is None:
            raise ValidationError(f"budget {text!r} is relative to the teacher, whose latency is "
                                  f"unknown here; pass milliseconds")
        return value * teacher_ms
    return value


# Two predictions of one network by the same LUT agree to rounding; one LUT against another (or the
# same LUT re-calibrated) differs by far more.
SAME_PREDICTION = 1e-3


def architecture_budget(arch: "Architecture", lut: "Lut", device: str
                        ) -> tuple[float | None, str | None]:
    """The architecture file's ``budget_ms`` when it is this LUT's (``None`` otherwise), and a line
    saying why it was left aside (``None`` when it applies or there is none).

    ``budget_ms`` is the predicted limit the search ran under, in the terms of the one LUT the
    search's ``predicted_ms`` names: it applies only when that is a LUT of ``device`` (a preset
    name) predicting this network as this LUT does.  A budget searched on another device, with
    another LUT of this device, or with several LUTs (the file does not say whose it is) would
    judge the network against a number that was never about this device.
    """
    if arch.budget_ms is None:
        return None, None
    given = f"the architecture file's budget_ms ({arch.budget_ms:.4g} ms)"
    fix = "no budget is checked; pass --budget to check one"
    tables = list(arch.predicted_ms)
    if not tables:
        return None, (f"{given} does not say which LUT it was searched with (no predicted_ms); "
                      f"{fix}")
    if len(tables) > 1:
        return None, (f"{given} comes from a search over several LUTs ({', '.join(tables)}) and "
                      f"does not say whose it is; {fix}")
    if tables[0] != device:
        return None, f"{given} was searched on device {tables[0]}, not {device}; {fix}"
    recorded, here = float(arch.predicted_ms[tables[0]]), lut.predict(arch.ops)
    if not math.isclose(recorded, here, rel_tol=SAME_PREDICTION):
        return None, (f"{given} was searched with another LUT of {device} (it predicted this "
                      f"network at {recorded:.4g} ms, LUT {lut.path} at {here:.4g} ms); {fix}")
    return arch.budget_ms, None


def _budget_text(value: Any) -> str | None:
    """``value`` as a budget string validate can check (``"0.5x"``, ``"12.5"``), else ``None``."""
    if value is None or isinstance(value, bool):
        return None
    text = f"{float(value):g}" if isinstance(value, (int, float)) else str(value).strip().lower()
    try:
        parse_budget(text, 1.0)
    except ValidationError:
        return None
    return text


def _own_budget(node: Any) -> str | None:
    """The budget as given that an architecture object records itself: a ``budget`` field, or
    the ``selection`` record ``lana select`` adds (kept by ``lana assemble``)."""
    if not isinstance(node, Mapping):
        return None
    own = _budget_text(node.get("budget"))
    if own is None and isinstance(node.get("selection"), Mapping):
        own = _budget_text(node["selection"].get("budget"))
    return own


def arch_budget(arch: "Architecture", label: Any = None) -> str | None:
    """The budget as the search was given it (``"0.5x"``, ``"12.5"``) for ``arch``: the one it
    records itself (:func:`_own_budget`), else ``label``, what the file it came from records around
    it (:func:`lana.assemble.read_arch_budget`); None when neither is a budget."""
    return _own_budget(arch.extra) or _budget_text(label)


def recorded_budget(doc: Any, index: int | None = None, path: str | Path = "architecture file"
                    ) -> str | None:
    """The budget as the search was given it (``"0.5x"``, ``"12.5"``) that the parsed architecture
    document ``doc`` records for the architecture ``read_arch(path, index)`` reads, or ``None``
    when it records none (files written before budgets were recorded, hand-written files).

    ``lana search`` records it per target (``budgets`` -> table -> ``given``), ``lana verify`` as
    ``budget``, ``lana select`` (and ``lana assemble`` after it) as ``selection.budget``.
    """
    from lana.assemble import arch_in_document

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read_arch says it when it reads the file
            arch, label = arch_in_document(doc, path, index)
    except LanaError:
        return None
    return arch_budget(arch, label)


@dataclass(frozen=True)
class BudgetChoice:
    """The budget :func:`validate` checks, before the measurement turns it into milliseconds."""

    given: str | float | None  # for parse_budget: "0.5x", "4.2", or ms; None: no budget checked
    source: str | None  # where it came from ("--budget 0.5x", "architecture file", ...)
    note: str | None = None  # why the architecture file's budget was left aside

    @property
    def relative(self) -> bool:
        return is_relative_budget(self.given)

    @property
    def label(self) -> str | None:
        """The budget as given, as text (``"0.5x"``, ``"4.2"``); ``None`` without one."""
        if self.given is None:
            return None
        return f"{self.given:g}" if isinstance(self.given, (int, float)) else str(self.given)


ARCH_BUDGET_SOURCE = "architecture file"


def resolve_budget(budget: str | float | None, arch: "Architecture", lut: "Lut", device: str,
                   recorded: str | None = None) -> BudgetChoice:
    """Which budget :func:`validate` checks (no measurement here).

    An explicit ``budget`` (``--budget``) always.  Without it the budget the architecture file
    recorded as the search was given it (``recorded``, see :func:`recorded_budget`): a relative
    one (``0.5x``) is taken, like ``--budget 0.5x``, of the teacher measured beside the network,
    when the architecture was searched on ``device`` (one LUT, of this preset; which LUT of it
    does not matter, the teacher is measured).  Otherwise (an absolute budget, or none recorded:
    files of older versions) the file's ``budget_ms``, the search's predicted limit, in
    milliseconds, when it is this LUT's (:func:`architecture_budget`).
    """
    if budget is not None:
        return BudgetChoice(budget, f"--budget {budget}")
    recorded = _budget_text(recorded)
    if recorded is not None and is_relative_budget(recorded):
        given = f"the architecture file's budget {recorded}"
        fix = f"no budget is checked; pass --budget {recorded} to check it against the teacher here"
        tables = list(arch.predicted_ms)
        if not tables:
            note = f"{given} does not say which device it was searched on (no predicted_ms); {fix}"
        elif len(tables) > 1:
            note = (f"{given} comes from a search over several LUTs ({', '.join(tables)}) and does "
                    f"not say whose it is; {fix}")
        elif tables[0] != device:
            note = f"{given} was searched on device {tables[0]}, not {device}; {fix}"
        else:
            return BudgetChoice(recorded, f"{ARCH_BUDGET_SOURCE} (budget {recorded})")
        return BudgetChoice(None, None, note)
    budget_ms, note = architecture_budget(arch, lut, device)
    return BudgetChoice(budget_ms, ARCH_BUDGET_SOURCE if budget_ms is not None else None, note)


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class Validation:
    """Predicted against measured latency of one network on one device (milliseconds), the
    teacher measured beside it in the same session."""

    teacher: str  # teacher name
    device: str  # preset name
    lut: str  # LUT path
    ops: tuple[str, ...]  # the architecture's op keys
    predicted_ms: float  # LUT sum (fixed + entries), uncalibrated
    predicted_calibrated_ms: float  # lut.predict: calibrated when the LUT has a calibration
    measured_ms: float  # the end-to-end latency, by ``statistic``
    measured_p10_ms: float
    measured_p90_ms: float
    measured_n: int  # timed iterations behind the median
    noisy: bool  # the measurement stayed above the protocol's noise threshold
    teacher_predicted_ms: float  # lut.predict of the teacher itself (NaN when the LUT lacks it)
    budget_ms: float | None  # the budget checked against measured_ms, if any
    budget_source: str | None  # where the budget came from
    tolerance: float  # measured may exceed the budget by this fraction before it fails
    weights: str  # "random" or the student file measured
    calibrated: bool  # the LUT has a calibration
    # The teacher measured in alternation with the network, in the same session (NaN: not measured)
    teacher_measured_ms: float = math.nan
    teacher_noisy: bool = False
    budget_relative: bool = False  # budget_ms is a fraction of teacher_measured_ms
    budget_note: str | None = None  # why the architecture file's budget was not checked
    budget: str | None = None  # the budget checked, as given ("0.5x", "4.2"), if any
    # What measured_ms and teacher_measured_ms are: "median" (the median repeat's median
    # iteration) or "fastest" (the fastest iteration over the repeats), as the LUT was calibrated
    statistic: str = "median"
    measured_median_ms: float = math.nan  # the median repeat's median, whatever ``statistic``

    @property
    def rel_error(self) -> float:
        """(predicted_calibrated - measured) / measured: what the search believed, relative."""
        return (self.predicted_calibrated_ms - self.measured_ms) / self.measured_ms

    @property
    def rel_error_raw(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def speedup(self) -> float:
        """Measured teacher / measured network, both from the same session (NaN without the
        teacher's measurement)."""
        return self.teacher_measured_ms / self.measured_ms

    @property
    def predicted_speedup(self) -> float:
        """The LUT's (calibrated) teacher / network: what the search believed."""
        return self.teacher_predicted_ms / self.predicted_calibrated_ms

    @property
    def within_budget(self) -> bool | None:
        """Measured latency at or under the budget (None without a budget)."""
        return None if self.budget_ms is None else self.measured_ms <= self.budget_ms

    @property
    def passed(self) -> bool:
        """False when the measured latency exceeds the budget by more than the tolerance."""
        return self.budget_ms is None or self.measured_ms <= self.budget_ms * (1 + self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        def number(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "predicted_ms": self.predicted_ms,
            "predicted_calibrated_ms": self.predicted_calibrated_ms,
            "measured_ms": self.measured_ms, "rel_error": self.rel_error,
            "budget_ms": self.budget_ms, "within_budget": self.within_budget,
            "passed": self.passed, "tolerance": self.tolerance,
            "rel_error_raw": self.rel_error_raw, "calibrated": self.calibrated,
            "measured_p10_ms": self.measured_p10_ms, "measured_p90_ms": self.measured_p90_ms,
            "measured_n": self.measured_n, "noisy": self.noisy, "statistic": self.statistic,
            "measured_median_ms": number(self.measured_median_ms),
            "teacher_measured_ms": number(self.teacher_measured_ms),
            "teacher_noisy": self.teacher_noisy,
            "teacher_predicted_ms": number(self.teacher_predicted_ms),
            "speedup": number(self.speedup), "predicted_speedup": number(self.predicted_speedup),
            "budget": self.budget, "budget_source": self.budget_source,
            "budget_relative": self.budget_relative,
            "budget_note": self.budget_note,
            "teacher": self.teacher, "device": self.device, "lut": self.lut,
            "weights": self.weights, "ops": list(self.ops),
        }


def predicted(lut: "Lut", ops: Sequence[str]) -> tuple[float, float]:
    """(raw, calibrated) LUT prediction of a network; coverage errors name the profile command."""
    lut.require(ops)
    return lut.predict_raw(ops), lut.predict(ops)


def validate(arch: "Architecture | str | Path", device: str, lut: str | Path, *,
             budget: str | float | None = None, tolerance: float = 0.05,
             weights: str | Path | None = None, index: int | None = None,
             selector: str | None = None, input_shape: Any = None, repeats: int = 3,
             protocol: "Protocol | None" = None) -> Validation:
    """Measure the network of ``arch`` end to end on ``device``, the teacher in alternation with it
    in the same session, and compare with ``lut``.

    ``budget`` is milliseconds, checked against the measured network, or ``"<f>x"``: a fraction of
    the teacher measured beside it (as ``lana run`` and ``lana verify`` take it, so a machine
    running faster or slower as a whole than when the LUT was profiled cannot decide it).  Without
    it the budget the architecture file recorded as the search was given it: a relative one
    (``0.5x``) is taken of the teacher measured here, exactly as ``budget="0.5x"`` would be, when
    the file was searched on this device; an absolute one, or the ``budget_ms`` of a file that
    records no budget as given (older versions), is checked in milliseconds when the file was
    searched with this LUT (:func:`resolve_budget`; otherwise a warning says why none is checked).
    ``budget``/``budget_source`` of the result say which budget was checked and where it came
    from.  ``weights`` is a
    ``student.pt`` (refused when missing); without it the network is measured with random weights
    (latency does not depend on them).  ``protocol`` overrides the LUT's (tests); ``repeats`` (3,
    as the command) alternates teacher and network that many times.  Each one's latency is taken
    the way the LUT's calibration was fitted, so prediction and measurement compare like with
    like: its fastest iteration over the repeats for a calibration fitted to fastest iterations
    (as ``lana run`` fits it, see :data:`lana.verify.STATISTIC`), else its median repeat's median
    (:func:`robust_pick`).
    """
    from lana.assemble import (Architecture, build_student, check_arch, load_student,
                               read_arch_budget, teacher_architecture)
    from lana.bench import interleaved
    from lana.teachers import create_teacher, recorded_layout

    if not 0 <= tolerance < 10:
        raise ValidationError(f"--tolerance is a fraction (0.05 = 5 %), got {tolerance}")
    if repeats < 1:
        raise ValidationError(f"--repeats must be at least 1 (alternating measurements of the "
                              f"network and the teacher), not {repeats}")
    if weights is not None and not Path(weights).is_file():
        what = "is not a file" if Path(weights).exists() else "does not exist"
        raise ValidationError(f"weights file {weights} {what}; pass the student.pt that lana "
                              f"assemble or lana finetune wrote, or leave out --weights to measure "
                              f"random weights (latency does not depend on them)")
    parse_budget(budget, 1.0)  # refuse a malformed budget before any work
    label = None
    if not isinstance(arch, Architecture):
        arch, label = read_arch_budget(arch, index)
    recorded = arch_budget(arch, label)
    lut_obj, preset = open_lut(lut, device, teacher=arch.teacher)
    selector, input_shape = recorded_layout(arch.teacher, lut_obj.data, selector, input_shape)
    teacher = create_teacher(arch.teacher, selector=selector or lut_obj.data.get("selector"),
                             input_shape=input_shape, pretrained=False)
    if tuple(lut_obj.input_shape) != tuple(teacher.input_shape):
        raise ValidationError(f"LUT {lut} was profiled at input {tuple(lut_obj.input_shape)}, the "
                              f"teacher runs at {teacher.input_shape}; use a LUT of this input size")
    check_lut_layers(lut_obj, teacher)
    check_arch(arch, teacher)
    raw, calibrated = predicted(lut_obj, arch.ops)
    teacher_keys = teacher_architecture(teacher).ops
    teacher_ms = lut_obj.predict(teacher_keys) if all(lut_obj.has(k) for k in teacher_keys) else None
    choice = resolve_budget(budget, arch, lut_obj, preset.name, recorded)
    if choice.note is not None:
        warnings.warn(choice.note, stacklevel=2)

    model = None
    used = "random"
    if weights is not None:
        model = load_student(weights)
        saved = [str(k) for k in read_student_ops(weights)]
        if saved != list(arch.ops):
            raise ValidationError(f"{weights} holds another architecture than the one given; "
                                  f"pass the student.pt assembled from it")
        used = str(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model is None:
            model, _ = build_student(arch, teacher, check=False)
        # The teacher as verify and calibration measure it: every layer the teacher's op.
        teacher_model, _ = build_student(teacher_architecture(teacher, arch.pool), teacher,
                                         check=False)
    config = lut_backend_config(lut_obj, preset)
    shape = (preset.batch_size, *teacher.input_shape)
    runs, teacher_runs, _ = interleaved(
        model, shape, teacher_model, shape, preset, repeats=repeats,
        protocol=protocol or lut_protocol(lut_obj), config=config,
        labels=(f"the student of {arch.teacher}", f"teacher {arch.teacher}"))
    m, t = robust_pick(runs), robust_pick(teacher_runs)
    statistic = "fastest" if (lut_obj.calibration or {}).get("statistic") == "fastest" else "median"
    if statistic == "fastest":
        measured_ms = min(r.fastest for r in runs)
        teacher_measured = min(r.fastest for r in teacher_runs)
    else:
        measured_ms, teacher_measured = m.median, t.median
    # A relative budget is taken of the teacher measured in this session, an absolute one as is.
    budget_ms = parse_budget(choice.given, teacher_measured)
    return Validation(
        teacher=arch.teacher, device=preset.name, lut=str(lut), ops=tuple(arch.ops),
        predicted_ms=raw, predicted_calibrated_ms=calibrated, measured_ms=measured_ms,
        measured_p10_ms=m.p10, measured_p90_ms=m.p90, measured_n=m.n, noisy=m.noisy,
        teacher_predicted_ms=teacher_ms if teacher_ms is not None else math.nan,
        budget_ms=budget_ms, budget_source=choice.source, tolerance=float(tolerance),
        weights=used, calibrated=lut_obj.calibration is not None,
        teacher_measured_ms=teacher_measured,
        teacher_noisy=t.noisy, budget_relative=choice.relative, budget_note=choice.note,
        budget=choice.label, statistic=statistic, measured_median_ms=m.median)


def read_student_ops(path: str | Path) -> list[str]:
    from lana.assemble import read_student

    return list(read_student(path)["arch"]["ops"])


# ---------------------------------------------------------------------------------------------
# Plot


def plot_predicted_vs_measured(points: Sequence[tuple[float, float]], path: str | Path, *,
                               calibrated: Sequence[tuple[float, float]] | None = None,
                               title: str = "predicted vs. measured latency",
                               band: float = 0.05) -> Path:
    """Scatter of (predicted, measured) ms with the y = x line and a +-``band`` band (PNG, Agg).

    ``points`` are raw LUT sums; ``calibrated`` (optional) the same networks after calibration.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    series = [("LUT sum", points, "tab:blue", "o")]
    if calibrated:
        series.append(("calibrated", calibrated, "tab:orange", "s"))
    every = [v for _, pts, _, _ in series for p in pts for v in p]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    line = [lo - pad, hi + pad]
    ax.plot(line, line, color="black", lw=1, label="measured = predicted")
    ax.fill_between(line, [v * (1 - band) for v in line], [v * (1 + band) for v in line],
                    color="grey", alpha=0.2, label=f"+-{band:.0%}")
    for name, pts, color, marker in series:
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, color=color, marker=marker,
                       label=name, alpha=0.8)
    ax.set_xlabel("predicted (ms)")
    ax.set_ylabel("measured end to end (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from lana.atomic import save_figure

    save_figure(fig, path)
    plt.close(fig)
    return path


__all__ = ["BudgetChoice", "NetworkSession", "Validation", "ValidationError",
           "arch_budget", "architecture_budget", "check_lut_layers", "recorded_budget",
           "resolve_budget",
           "lut_backend_config", "lut_protocol",
           "measure_network", "network_protocol", "open_lut", "parse_budget", "robust_pick", "plot_predicted_vs_measured",
           "predicted", "resolve_device", "validate"]

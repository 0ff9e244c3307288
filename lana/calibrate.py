"""LUT calibration: fit measured end-to-end latency against the LUT sum, store it in the LUT.

A LUT sum is biased: each entry was measured as its own session, so it carries a per-call overhead
the assembled network pays once; caches and fusion across layer boundaries do the rest.  The bias
is mostly affine in the sum.  :func:`calibrate` measures random architectures of the LUT's pool end
to end (chosen to spread over the whole latency range), holds a third of them out, fits
``measured = offset_ms + slope * lut_sum`` on the rest, and stores the fit in the LUT's
``calibration`` field (atomic write), where :meth:`lana.lut.Lut.predict` applies it.

Several fits compete and the one with the lowest cross-validated error on the fitting set wins
(never the training error): ordinary least squares, least squares on relative error (the figure
users read), a Huber-robust version of that (a disturbed measurement does not drag the line), an
offset-only fit (slope 1; fewer parameters for few samples), and no correction at all (stored as
offset 0, slope 1, so a LUT that needs none says so).  Per-family terms (a fixed
``ms`` per op of a family, for what an affine map cannot express) are fitted as well; they are
fitted only on enough networks (:data:`FAMILY_POINTS_PER_PARAM`) and stored only when they earn
their keep by cross-validation *and* the installed LUT reader applies them
(:func:`lut_applies_family_terms`).  The report gives the error before and after on the
held-out architectures, which no fit has seen.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import random
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from lana.errors import LanaError
from lana.spec import parse_key

if TYPE_CHECKING:
    import numpy as np

    from lana.lut import Lut
    from profilers import Preset, Protocol

# A richer fit must beat the best affine one's cross-validated error by this fraction to be chosen.
EARN_KEEP = 0.10
# Fitted networks per parameter the per-family model needs to be fitted at all (an offset, a slope
# and a term per family).  With fewer it nearly interpolates its points: the Huber scale (the MAD of
# the residuals) collapses, and each cross-validation fold, fitted on 4/5 of the points, has about
# two per parameter, so the CV error that must beat the affine fits by EARN_KEEP measures luck.
# Three keeps every fold above two points per parameter.  Affine fits need 3 points (2 parameters).
FAMILY_POINTS_PER_PARAM = 3
CV_REPEATS = 3  # shuffles of the repeated K-fold cross-validation


class CalibrationError(LanaError):
    """Calibration that cannot run as asked (too few samples, a LUT without layers)."""


class TooFewArchitectures(CalibrationError):
    """The pool holds fewer distinct architectures than a calibration needs."""


# ---------------------------------------------------------------------------------------------
# Applying a calibration


def apply_calibration(calibration: Mapping[str, Any] | None, raw_ms: float,
                      keys: Sequence[str] = ()) -> float:
    """The calibrated prediction of a network whose LUT sum (fixed included) is ``raw_ms``.

    ``offset_ms + slope * raw_ms``, plus ``family_ms[family]`` for every op of ``keys`` whose family
    has a term.  Every term is linear in the per-layer choice, so a search can fold the calibration
    into per-op costs (``slope * latency + family_ms[family]``) and stay exact.
    """
    if calibration is None:
        return raw_ms
    out = float(calibration["offset_ms"]) + float(calibration["slope"]) * raw_ms
    terms = calibration.get("family_ms") or {}
    if terms:
        for key in keys:
            out += float(terms.get(parse_key(key).family, 0.0))
    return out


def lut_applies_family_terms() -> bool:
    """Whether the installed :meth:`Lut.predict` applies ``family_ms`` terms of a calibration."""
    from lana.lut import Lut, LutError
    from lana.spec import OpSpec

    key = OpSpec.make("identity", (1, 1, 1), (1, 1, 1)).key
    lut = Lut.new(teacher="t", pool="small", input_shape=(1, 1, 1), device={"preset": "x"},
                  protocol={"units": "ms"}, ops_fingerprint="x")
    lut.set_fixed({"median": 1.0})
    lut.set_entry(key, {"median": 1.0})
    lut.data["calibration"] = {"kind": "affine", "offset_ms": 0.0, "slope": 1.0,
                               "family_ms": {"identity": 1.0}}
    try:
        return abs(lut.predict([key]) - 3.0) < 1e-9
    except (LutError, KeyError, TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class Fit:
    """One fitted calibration model."""

    name: str  # "none", "offset", "ols", "relative", "huber", "families"
    offset_ms: float
    slope: float
    family_ms: Mapping[str, float] = field(default_factory=dict)  # ms per op of a family
    cv_error: float = math.nan  # cross-validated mean |relative error| on the fitting set
    # better-scoring models that predict no time for some network, or a slope <= 0
    excluded: tuple[str, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)  # model: points it needed, not fitted

    @property
    def n_params(self) -> int:
        return {"none": 0, "offset": 1}.get(self.name, 2) + len(self.family_ms)

    def predict(self, raw_ms: float, keys: Sequence[str] = ()) -> float:
        return apply_calibration(self.to_calibration(), raw_ms, keys)

    def to_calibration(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "affine", "offset_ms": self.offset_ms, "slope": self.slope}
        if self.family_ms:
            out["family_ms"] = dict(self.family_ms)
        return out


def _family_counts(keys: Sequence[str], families: Sequence[str]) -> list[float]:
    counts = dict.fromkeys(families, 0.0)
    for key in keys:
        fam = parse_key(key).family
        if fam in counts:
            counts[fam] += 1.0
    return [counts[f] for f in families]


def _solve(X: "np.ndarray", y: "np.ndarray", w: "np.ndarray", ridge: "np.ndarray") -> "np.ndarray":
    """Weighted least squares with a per-coefficient ridge penalty."""
    import numpy as np

    sw = np.sqrt(w)
    A = X * sw[:, None]
    b = y * sw
    if ridge.any():
        A = np.vstack([A, np.diag(np.sqrt(ridge))])
        b = np.concatenate([b, np.zeros(len(ridge))])
    coef, *_ = np.linalg.lstsq(A, b, rcond=None)
    return coef


def _fit_one(name: str, raw: "np.ndarray", measured: "np.ndarray",
             counts: "np.ndarray | None", families: Sequence[str]) -> Fit:
    import numpy as np

    y = measured
    if name == "none":
        return Fit(name, 0.0, 1.0)
    if name == "offset":
        offset = float(np.median(y - raw))
        return Fit(name, offset, 1.0)
    X = np.column_stack([np.ones_like(raw), raw])
    ridge = np.zeros(2)
    if name == "families" and counts is not None and counts.shape[1]:
        X = np.column_stack([X, counts])
        # Shrink the family terms (the residuals are relative, so the penalty is on each term
        # relative to the mean latency): this breaks the collinearity of family counts that sum
        # to the layer count, and a term has to be supported by many samples to move.
        scale = 1e-2 * len(y) / float(np.mean(y)) ** 2
        ridge = np.concatenate([ridge, np.full(counts.shape[1], scale)])
    w = 1.0 if name == "ols" else 1.0 / np.maximum(y, 1e-9) ** 2
    w = np.broadcast_to(np.asarray(w, dtype=float), y.shape).copy()
    coef = _solve(X, y, w, ridge)
    if name in ("huber", "families"):
        # Iteratively reweighted least squares with Huber weights on relative residuals.
        for _ in range(30):
            rel = (X @ coef - y) / y
            mad = float(np.median(np.abs(rel - np.median(rel)))) * 1.4826
            c = 1.345 * max(mad, 1e-4)
            hub = np.where(np.abs(rel) <= c, 1.0, c / np.maximum(np.abs(rel), 1e-12))
            new = _solve(X, y, hub / y ** 2, ridge)
            if np.allclose(new, coef, rtol=1e-9, atol=1e-12):
                break
            coef = new
    fam = {f: float(v) for f, v in zip(families, coef[2:])} if name == "families" else {}
    return Fit(name, float(coef[0]), float(coef[1]), fam)


FIT_NAMES = ("none", "offset", "ols", "relative", "huber", "families")
# The fits that keep the LUT's ranking of networks (a monotone map of the LUT sum).  A search
# optimises against its cost model and lands where the model is most optimistic: per-family terms
# give it a lever (a negative identity term makes skipping layers look cheaper than it measures),
# so a calibration made for a search uses these.
AFFINE_FITS = ("none", "offset", "ols", "relative", "huber")


def fit_model(name: str, raw_ms: Sequence[float], measured_ms: Sequence[float],
              keys: Sequence[Sequence[str]] | None = None) -> Fit:
    """Fit one model of :data:`FIT_NAMES` to all points, without model selection."""
    import numpy as np

    if name not in FIT_NAMES:
        raise CalibrationError(f"unknown calibration model {name!r}; valid: {', '.join(FIT_NAMES)}")
    families: list[str] = []
    counts = None
    if name == "families":
        if keys is None:
            raise CalibrationError("the families model needs each network's op keys")
        families = sorted({parse_key(k).family for ks in keys for k in ks})
        counts = np.array([_family_counts(ks, families) for ks in keys])
    return _fit_one(name, np.asarray(raw_ms, dtype=float), np.asarray(measured_ms, dtype=float),
                    counts, families)


def fit_calibration(raw_ms: Sequence[float], measured_ms: Sequence[float],
                    keys: Sequence[Sequence[str]] | None = None, *,
                    candidates: Sequence[str] = FIT_NAMES, folds: int = 5, seed: int = 0,
                    allow_family_terms: bool = True,
                    cheapest: (tuple[float, Sequence[str]]
                               | Callable[[Mapping[str, Any]], float] | None) = None
                    ) -> tuple[Fit, dict[str, float]]:
    """Fit every candidate model, pick by cross-validated error; returns (best, {name: cv error}).

    The error is the mean |predicted - measured| / measured over :data:`CV_REPEATS` shuffles of
    K folds of the given points, all of them: a model whose errors gather at the ends of the
    latency range (an offset alone where the slope is not 1) must not hide them.  The ``families``
    model must beat the best affine one by :data:`EARN_KEEP` (relative) to be chosen.  ``keys``
    (each network's op keys) enable the ``families`` model, fitted only on at least
    :data:`FAMILY_POINTS_PER_PARAM` points per parameter (``Fit.skipped`` says when it was not);
    ``allow_family_terms=False`` still scores it but never picks it.  ``cheapest`` (the raw LUT sum
    and op keys of the cheapest network the search may pick, or a function giving a calibration's
    lowest prediction, :meth:`lana.lut.Lut.lowest_prediction`) rules out a model that predicts it
    takes no time at all: a negative offset fitted on networks far from it, extrapolated.  A model
    with a slope <= 0 is ruled out too (``none`` always qualifies).
    """
    import numpy as np

    raw = np.asarray(raw_ms, dtype=float)
    y = np.asarray(measured_ms, dtype=float)
    n = len(raw)
    if n < 3 or len(y) != n:
        raise CalibrationError(f"calibration needs at least 3 measured networks, got {n}; pass "
                               f"--samples 12 or more")
    if (y <= 0).any():
        raise CalibrationError("a measured latency is not positive; re-run the calibration")
    families: list[str] = []
    counts = None
    if keys is not None:
        seen: dict[str, int] = {}
        for ks in keys:
            for k in ks:
                fam = parse_key(k).family
                seen[fam] = seen.get(fam, 0) + 1
        # Only families that vary between networks can be told apart from the offset.
        families = sorted(f for f in seen
                          if len({_family_counts(ks, [f])[0] for ks in keys}) > 1)
        counts = np.array([_family_counts(ks, families) for ks in keys]) if families else None
    names = [c for c in candidates if c != "families" or counts is not None]
    skipped: dict[str, int] = {}
    if "families" in names and n < FAMILY_POINTS_PER_PARAM * (2 + len(families)):
        skipped["families"] = FAMILY_POINTS_PER_PARAM * (2 + len(families))
        names.remove("families")
    k = max(2, min(folds, n))
    splits = []
    for r in range(CV_REPEATS):  # repeated K-fold: one split's luck does not pick the model
        order = list(range(n))
        random.Random(seed * 1000 + r).shuffle(order)
        fold_of = np.empty(n, dtype=int)
        fold_of[order] = np.arange(n) % k
        splits.append(fold_of)
    cv: dict[str, float] = {}
    for name in names:
        errors = []
        for fold_of in splits:
            for f in range(k):
                train, test = fold_of != f, fold_of == f
                if train.sum() < 3 or not test.any():
                    continue
                fit = _fit_one(name, raw[train], y[train],
                               counts[train] if counts is not None else None, families)
                pred = fit.offset_ms + fit.slope * raw[test]
                if fit.family_ms:
                    pred = pred + counts[test] @ np.array([fit.family_ms[f_] for f_ in families])
                errors += list(np.abs(pred - y[test]) / y[test])
        cv[name] = float(np.mean(errors)) if errors else math.inf

    def sound(fit: Fit) -> bool:
        if not fit.slope > 0:
            return False
        if cheapest is None:
            return True
        if callable(cheapest):
            return cheapest(fit.to_calibration()) > 0
        return fit.predict(*cheapest) > 0

    # Each model fitted to all points predicts the cheapest network in time, or is ruled out.
    sane = {c: c == "none" or sound(_fit_one(c, raw, y, counts, families)) for c in names}
    simple = [c for c in names if c in ("none", "offset", "ols", "relative", "huber")
              and sane[c]] or ["none"]
    best_simple = min(simple, key=lambda c: cv.get(c, math.inf))
    best = best_simple
    if ("families" in cv and allow_family_terms
            and cv["families"] < cv.get(best_simple, math.inf) * (1 - EARN_KEEP)
            and sane["families"]):
        best = "families"
    fit = _fit_one(best, raw, y, counts, families)
    excluded = tuple(c for c in names if not sane[c] and cv[c] < cv.get(best, math.inf))
    return Fit(fit.name, fit.offset_ms, fit.slope, fit.family_ms, cv.get(best, math.nan),
               excluded, skipped), cv


def error_stats(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Median and worst |predicted - measured| / measured, and the mean signed error."""
    rel = [(p - m) / m for p, m in zip(predicted, measured)]
    if not rel:
        return {"n": 0, "median_abs": math.nan, "max_abs": math.nan, "mean": math.nan}
    return {"n": len(rel), "median_abs": statistics.median(abs(r) for r in rel),
            "max_abs": max(abs(r) for r in rel), "mean": statistics.fmean(rel)}


# ---------------------------------------------------------------------------------------------
# Sampling architectures


def layer_choices(lut: "Lut", pool: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """Per layer, the op keys the LUT has a latency for (teacher op first when present).

    ``pool`` (op keys per layer, e.g. a smaller pool's) restricts the choice to those keys, so a
    calibration can concentrate on the architectures a search over that pool will return.
    """
    if not lut.layers:
        raise CalibrationError(f"LUT {lut.path} lists no layers; re-profile it with lana-profile")
    if pool is not None and len(pool) != len(lut.layers):
        raise CalibrationError(f"the pool has {len(pool)} layers but LUT {lut.path} has "
                               f"{len(lut.layers)}; pass the LUT's own teacher")
    choices = []
    for i, layer in enumerate(lut.layers):
        ops = [k for k in layer.get("ops", ()) if lut.has(k)]
        if pool is not None:
            allowed = set(pool[i])
            ops = [k for k in ops if k in allowed]
        if not ops:
            raise CalibrationError(f"layer {i} ({layer.get('name')}) has no measured op in LUT "
                                   f"{lut.path}; complete it: {lut.command(resume=True)}")
        ops.sort(key=lambda k: not k.startswith("teacher:"))
        choices.append(ops)
    return choices


def sample_architectures(lut: "Lut", n: int, *, seed: int = 0, pool_size: int = 4000,
                         pool: Sequence[Sequence[str]] | None = None) -> list[tuple[str, ...]]:
    """``n`` distinct architectures of the LUT's pool spread evenly over the predicted range.

    Candidates mix "keep the teacher op" with uniform random ops at rates from 0 to 1, so both
    near-teacher and heavily replaced networks occur; then one candidate is taken nearest each of
    ``n`` evenly spaced latency targets between the fastest and slowest candidate.  The teacher
    itself is always one of them, the first.  ``pool`` restricts the ops as in :func:`layer_choices`.
    """
    if n < 1:
        raise CalibrationError(f"--samples must be >= 1, got {n}")
    choices = layer_choices(lut, pool)
    rng = random.Random(seed)
    teacher = tuple(c[0] for c in choices)
    cands: dict[tuple[str, ...], float] = {teacher: lut.predict_raw(teacher)}
    for j in range(pool_size):
        keep = rng.random() ** 1.5 if j % 3 else 0.0
        ops = tuple(c[0] if (len(c) == 1 or rng.random() < keep) else rng.choice(c[1:])
                    for c in choices)
        if ops not in cands:
            cands[ops] = lut.predict_raw(ops)
    ranked = sorted(cands.items(), key=lambda kv: kv[1])
    lo, hi = ranked[0][1], ranked[-1][1]
    picked: list[tuple[str, ...]] = [teacher]
    used = {teacher}
    values = [v for _, v in ranked]
    import bisect

    for i in range(n - 1):
        target = lo + (hi - lo) * (i + 0.5) / max(1, n - 1)
        pos = bisect.bisect_left(values, target)
        # nearest unused candidate around the target
        best = None
        for delta in range(len(ranked)):
            for p in (pos - delta, pos + delta):
                if 0 <= p < len(ranked) and ranked[p][0] not in used:
                    best = ranked[p][0]
                    break
            if best is not None:
                break
        if best is None:
            break
        picked.append(best)
        used.add(best)
    return picked[:n]


# ---------------------------------------------------------------------------------------------
# Measuring many networks


@dataclass(frozen=True)
class Point:
    """One measured architecture."""

    ops: tuple[str, ...]
    raw_ms: float  # LUT sum, fixed included
    measured_ms: float  # median (or min) of the clean repeats, see measure_architectures
    spread: float  # (max - min) of the repeats / measured_ms: the measurement's own noise
    held_out: bool = False


def measure_architectures(archs: Sequence[Sequence[str]], lut: "Lut", preset: "Preset", *,
                          protocol: "Protocol | None" = None, repeats: int = 3,
                          drift_correction: bool = True,
                          progress: Callable[[int, int], None] | None = None,
                          selector: str | None = None, statistic: str = "median"
                          ) -> list[tuple[float, float]]:
    """(latency, spread) end to end of each architecture on ``preset``, ``repeats`` times.

    Repeats are interleaved (every network once, then every network again), so slow drift of the
    machine spreads over all networks instead of biasing some.  With ``drift_correction`` the
    teacher network is measured right before every network, in a session kept open for the round,
    and each measurement is scaled by (median teacher latency) / (teacher latency around it; see
    :func:`combine_repeats`): a machine that runs everything 1.5x slower for half a minute
    (frequency, a neighbour) then leaves the figures alone.  A network's figure is the median
    (``statistic="min"``: the minimum) of its repeats whose measurements were not flagged noisy
    (all of them when every one was); the spread is (max - min) / that figure.  Each network is
    exported once, unless the networks would fill the disk (see :func:`measure_repeats`).

    The minimum suits a machine shared with other work, whose slow periods only ever add time:
    with repeats spread over minutes it finds each network's uncontended latency, where the
    median follows how much of the run was slow.  Use it without drift correction (a teacher
    timing caught in a fast moment would scale a repeat below anything the machine ran).
    ``statistic="fastest"`` goes further: each network's fastest timed iteration over all its
    repeats, which busy moments shorter than a measurement cannot move either.
    """
    check_statistic(statistic)
    runs = measure_repeats(archs, lut, preset, protocol=protocol, repeats=repeats,
                           references=drift_correction, progress=progress, selector=selector)
    return combine_repeats(runs, statistic, drift_correction)


STATISTICS = ("median", "min", "fastest")


def check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise CalibrationError(f"statistic must be one of {', '.join(STATISTICS)}, got "
                               f"{statistic!r}")


def measure_repeats(archs: Sequence[Sequence[str]], lut: "Lut", preset: "Preset", *,
                    protocol: "Protocol | None" = None, repeats: int = 3, references: bool = True,
                    progress: Callable[[int, int], None] | None = None,
                    selector: str | None = None) -> list[list[tuple[Any, Any]]]:
    """The raw repeats of :func:`measure_architectures`: per network, (its timing, the teacher's
    timing right before it, or None without ``references``) for every round.

    Each network is built and exported (or, for a backend that times torch modules, kept in
    memory) once, before the first round, as long as the networks so far take at most half of
    the free space there (:func:`free_storage`); the sampled networks of a large teacher
    can take hundreds of MB each.  Those that do not fit are built again for each round and
    dropped after their measurement, which costs time, not correctness: a warning says so."""
    if repeats < 1:
        raise CalibrationError(f"--repeats must be at least 1 (end-to-end measurements of each "
                               f"network), not {repeats}")
    import shutil
    import tempfile

    import torch

    from lana.assemble import Architecture, build_student, teacher_architecture
    from lana.export import export_onnx
    from lana.ops import deploy
    from lana.teachers import create_teacher, recorded_layout
    from lana.validate import NetworkSession, check_lut_layers, lut_backend_config, lut_protocol
    from profilers import get_backend

    selector, input_shape = recorded_layout(lut.teacher, lut.data, selector)
    teacher = create_teacher(lut.teacher, selector=selector or lut.data.get("selector"),
                             input_shape=input_shape, pretrained=False)
    check_lut_layers(lut, teacher)
    config = lut_backend_config(lut, preset)
    protocol = protocol or lut_protocol(lut)
    shape = (lut.batch_size, *teacher.input_shape)
    takes_onnx = get_backend(preset.backend).accepts == "onnx"
    tmp = tempfile.mkdtemp(prefix="lana-calib-")
    threads = torch.get_num_threads()

    def build(ops: Sequence[str]) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net, _ = build_student(Architecture(lut.teacher, lut.pool, tuple(ops)), teacher,
                                   check=False)
        return deploy(net)

    def prepare(net: Any, name: str) -> Any:
        if not takes_onnx:
            return net
        torch.set_num_threads(1)
        try:
            return export_onnx(net, shape, Path(tmp) / f"{name}.onnx")
        finally:
            torch.set_num_threads(threads)

    try:
        free, where = free_storage(tmp if takes_onnx else None)
        budget = free // 2
        used, reference = 0, None
        if references:
            net = build(teacher_architecture(teacher).ops)
            used, reference = module_bytes(net), prepare(net, "reference")
        kept: dict[int, Any] = {}
        for j, ops in enumerate(archs):
            net = build(ops)
            size = module_bytes(net)
            if used + size <= budget:
                kept[j] = prepare(net, f"net{j}")
                used += size
        net = None  # the networks not kept are built again when measured
        if len(kept) < len(archs) and repeats > 1:
            warnings.warn(f"{len(archs) - len(kept)} of {len(archs)} networks would take more "
                          f"than half of the {free / 2 ** 30:.1f} GB of free {where} beside the "
                          f"others; each of them is built again for every one of the {repeats} "
                          f"repeats, which takes longer" + (
                              " (point TMPDIR to a larger disk to avoid it)" if takes_onnx
                              else ""), stacklevel=2)
        runs: list[list[tuple[Any, Any]]] = [[] for _ in archs]
        total = len(archs) * repeats
        done = 0
        for _ in range(repeats):
            with contextlib.ExitStack() as stack:
                ref = (stack.enter_context(NetworkSession(reference, shape, preset, config=config,
                                                          protocol=protocol, label="the teacher"))
                       if reference is not None else None)
                for j, ops in enumerate(archs):
                    model = kept[j] if j in kept else prepare(build(ops), "passing")
                    ref_m = ref.measure() if ref is not None else None
                    with NetworkSession(model, shape, preset, config=config, protocol=protocol,
                                        label=f"network {j}") as session:
                        runs[j].append((session.measure(), ref_m))
                    if j not in kept and takes_onnx:
                        Path(model).unlink(missing_ok=True)
                    done += 1
                    if progress is not None:
                        progress(done, total)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return runs


def module_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers: about the size of its ONNX export."""
    return sum(t.numel() * t.element_size()
               for t in (*module.parameters(), *module.buffers()))


def free_storage(folder: str | None) -> tuple[int, str]:
    """(bytes, what) free where the networks measured together are kept: the disk of ``folder``
    (their ONNX exports), or without one the available memory (the modules themselves); ``what``
    names the place for messages."""
    import os
    import shutil

    if folder is not None:
        return shutil.disk_usage(folder).free, f"disk space in {Path(folder).parent}"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, "memory"
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "memory"
    except (AttributeError, OSError, ValueError):  # no way to tell here: no limit
        return 1 << 62, "memory"


def combine_repeats(runs: Sequence[Sequence[tuple[Any, Any]]], statistic: str = "median",
                    drift_correction: bool = True, window: int = 3) -> list[tuple[float, float]]:
    """Per network of :func:`measure_repeats`: the median (or min) of its clean repeats, each
    drift-corrected unless ``drift_correction`` is off (the teacher timings are then ignored), and
    the spread of all its repeats.  A repeat's figure is its median iteration; with
    ``statistic="fastest"``, its fastest iteration, and the network's figure the fastest of all its
    repeats (noisy ones included: interference only ever adds time).

    Drift correction scales a repeat by (median teacher timing) / (local teacher timing), where the
    local timing is the median of the teacher timings right before the network, right after it
    (before the next network) and before the previous one, in the order they were taken.  A
    slowdown that two neighbouring teacher timings share is drift and is followed; one teacher
    timing caught alone in a burst shorter than a measurement is not, where scaling by it alone
    would move the network next to it by the size of the burst.  ``window`` (odd) is how many
    teacher timings that median takes; 1 scales by the timing right before the network alone."""
    check_statistic(statistic)
    if window < 1 or window % 2 == 0:
        raise CalibrationError(f"the drift-correction window must be an odd count of teacher "
                               f"timings (1, 3, 5, ...), got {window}")
    half = window // 2
    n_repeats = max((len(rs) for rs in runs), default=0)
    order = [(j, k) for k in range(n_repeats) for j in range(len(runs)) if k < len(runs[j])]
    clean_refs = [None if r is None or r.noisy else r.median
                  for r in (runs[j][k][1] for j, k in order)]
    refs = [v for v in clean_refs if v is not None]
    ref_all = statistics.median(refs) if refs and drift_correction else None
    local: dict[tuple[int, int], float] = {}
    if ref_all is not None:
        for t, (j, k) in enumerate(order):
            near = [v for v in clean_refs[max(0, t - half):t + half + 1] if v is not None]
            if clean_refs[t] is not None:
                local[j, k] = statistics.median(near)
    out = []
    for j, rs in enumerate(runs):
        values, clean = [], []
        for k, (m, r) in enumerate(rs):
            scale = ref_all / local[j, k] if (j, k) in local else 1.0
            value = (m.fastest if statistic == "fastest" else m.median) * scale
            values.append(value)
            if statistic == "fastest" or (not m.noisy and (ref_all is None or r is None
                                                           or not r.noisy)):
                clean.append(value)
        figure = (statistics.median if statistic == "median" else min)(clean or values)
        out.append((figure, (max(values) - min(values)) / figure if figure > 0 else math.inf))
    return out


# ---------------------------------------------------------------------------------------------
# The calibrate stage


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate` measured, chose and stored."""

    lut: str
    device: str
    fit: Fit
    cv_errors: Mapping[str, float]
    points: tuple[Point, ...]
    before: Mapping[str, float]  # held-out error of the raw LUT sum
    after: Mapping[str, float]  # held-out error of the chosen fit
    train_before: Mapping[str, float]
    train_after: Mapping[str, float]
    previous: Mapping[str, Any] | None  # the calibration the LUT had before
    previous_held_out: Mapping[str, float] | None  # that calibration's held-out error
    family_terms_supported: bool
    written: bool
    seconds: float
    alternatives: Mapping[str, Any] = field(default_factory=dict)  # see calibrate(compare=...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lut": self.lut, "device": self.device, "model": self.fit.name,
            "calibration": self.fit.to_calibration(), "cv_errors": dict(self.cv_errors),
            "excluded": list(self.fit.excluded), "skipped": dict(self.fit.skipped),
            "held_out": {"before": dict(self.before), "after": dict(self.after)},
            "fit_set": {"before": dict(self.train_before), "after": dict(self.train_after)},
            "previous": self.previous, "previous_held_out": self.previous_held_out,
            "family_terms_supported": self.family_terms_supported, "written": self.written,
            "seconds": self.seconds, "alternatives": dict(self.alternatives),
            "points": [{"raw_ms": p.raw_ms, "measured_ms": p.measured_ms, "spread": p.spread,
                        "held_out": p.held_out,
                        "calibrated_ms": self.fit.predict(p.raw_ms, p.ops)} for p in self.points],
        }


def split_held_out(n: int, fraction: float) -> list[bool]:
    """Every k-th network (in latency order) held out, so both sets span the whole range."""
    if not 0 < fraction < 1:
        raise CalibrationError(f"--holdout is a fraction between 0 and 1, got {fraction}")
    n_out = max(1, round(n * fraction))
    step = n / n_out
    out_idx = {min(n - 1, int(step * i + step / 2)) for i in range(n_out)}
    return [i in out_idx for i in range(n)]


def calibrate(lut_path: str | Path, device: str, *, teacher: str | None = None,
              samples: int = 30, holdout: float = 0.33, repeats: int = 3, seed: int = 0,
              protocol: "Protocol | None" = None, write: bool = True,
              plot: str | Path | None = None, candidates: Sequence[str] = FIT_NAMES,
              drift_correction: bool = True, pool: str | None = None,
              progress: Callable[[int, int], None] | None = None,
              statistic: str = "median", compare: Sequence[tuple[str, bool]] = ()
              ) -> CalibrationReport:
    """Measure ``samples`` architectures of the LUT's pool on ``device``, fit, store, report.

    The fit uses the architectures not held out; ``before``/``after`` are errors on the held-out
    ones.  ``write=False`` reports without touching the LUT.  ``plot`` writes a PNG of predicted
    against measured latency, before and after.  ``pool`` (``small``, ``full``, ``single-shot``)
    draws the architectures from that pool of the LUT's teacher only (default: every op the LUT
    has), so the fit is best where a search over that pool will look.  ``statistic`` is what a
    network's repeats reduce to (see :func:`measure_architectures`).  ``compare`` lists other
    (statistic, drift correction) reductions of the same repeats whose held-out errors the report
    also gives (``alternatives``): a comparison the machine's changes of speed cannot tilt.
    """
    from lana.lut import Lut
    from lana.validate import lut_protocol, open_lut

    start = time.perf_counter()
    lut, preset = open_lut(lut_path, device, teacher=teacher)
    if samples < 6:
        raise CalibrationError(f"--samples must be at least 6 (some are held out), got {samples}")
    keys = None
    if pool is not None:
        from lana.pool import build_pool
        from lana.teachers import create_teacher, recorded_layout

        selector, input_shape = recorded_layout(lut.teacher, lut.data)
        try:
            layers = build_pool(create_teacher(lut.teacher, selector=selector,
                                               input_shape=input_shape, pretrained=False), pool)
        except LanaError:
            raise
        except Exception as exc:
            raise CalibrationError(f"cannot build pool {pool!r} of teacher {lut.teacher!r} "
                                   f"({exc}); pass a pool and the LUT's own teacher") from exc
        keys = [lp.keys for lp in layers]
    archs = sample_architectures(lut, samples, seed=seed, pool=keys)
    if len(archs) < 6:
        raise TooFewArchitectures(f"the LUT's pool has only {len(archs)} distinct "
                                  f"architectures; calibration needs 6 or more")
    held = split_held_out(len(archs), holdout)  # refuses a bad --holdout before measuring
    raws = [lut.predict_raw(ops) for ops in archs]
    check_statistic(statistic)
    for other, _ in compare:
        check_statistic(other)
    runs = measure_repeats(archs, lut, preset, protocol=protocol, repeats=repeats,
                           references=drift_correction or any(d for _, d in compare),
                           progress=progress)
    supported = lut_applies_family_terms()
    order = sorted(range(len(archs)), key=lambda j: raws[j])
    cheapest_ops = [min(ops, key=lut.latency) for ops in layer_choices(lut, keys)]
    pool_cheapest = (lut.predict_raw(cheapest_ops), cheapest_ops)

    def lowest(cal: Mapping[str, Any]) -> float:
        # What Lut.predict checks: the cheapest network of every op the LUT's layers hold, which
        # may be cheaper than the pool's (a full-pool LUT calibrated on its small pool).
        low = lut.lowest_prediction(cal)
        return apply_calibration(cal, *pool_cheapest) if low is None else low

    def evaluate(reduce_by: str, drift: bool):
        measured = combine_repeats(runs, reduce_by, drift)
        points: list[Point] = [None] * len(archs)  # type: ignore[list-item]
        for rank, j in enumerate(order):
            points[j] = Point(tuple(archs[j]), raws[j], measured[j][0], measured[j][1], held[rank])
        train = [p for p in points if not p.held_out]
        fit, cv = fit_calibration([p.raw_ms for p in train], [p.measured_ms for p in train],
                                  [p.ops for p in train], candidates=candidates, seed=seed,
                                  allow_family_terms=supported, cheapest=lowest)
        return points, train, [p for p in points if p.held_out], fit, cv

    def stats(points: Sequence[Point], f: Callable[[Point], float]) -> dict[str, float]:
        return error_stats([f(p) for p in points], [p.measured_ms for p in points])

    alternatives = {}
    for other, drift in compare:
        _, _, other_test, other_fit, _ = evaluate(other, drift)
        alternatives[f"{other}{', drift-corrected' if drift else ''}"] = {
            "model": other_fit.name, "before": stats(other_test, lambda p: p.raw_ms),
            "after": stats(other_test, lambda p: other_fit.predict(p.raw_ms, p.ops))}
    pts, train, test, fit, cv = evaluate(statistic, drift_correction)
    previous = lut.calibration
    prev_held = (stats(test, lambda p: apply_calibration(previous, p.raw_ms, p.ops))
                 if previous else None)
    before = stats(test, lambda p: p.raw_ms)
    after = stats(test, lambda p: fit.predict(p.raw_ms, p.ops))
    calibration = {
        **fit.to_calibration(), "model": fit.name, "cv_error": fit.cv_error,
        "cv_errors": cv, "excluded": list(fit.excluded), "skipped": dict(fit.skipped),
        "n_fit": len(train), "n_held_out": len(test), "repeats": repeats, "pool": pool,
        "drift_correction": drift_correction, "statistic": statistic,
        "held_out": {"before": before, "after": after},
        "fitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": (protocol or lut_protocol(lut)).to_dict(),
        "points": [[round(p.raw_ms, 6), round(p.measured_ms, 6), int(p.held_out)] for p in pts],
    }
    written = False
    if write:
        fresh = Lut.load(lut.path, check_fingerprint=False)  # entries may have grown meanwhile
        fresh.data["calibration"] = calibration
        fresh.save(lut.path)
        written = True
    report = CalibrationReport(
        lut=str(lut.path), device=preset.name, fit=fit, cv_errors=cv, points=tuple(pts),
        before=before, after=after,
        train_before=stats(train, lambda p: p.raw_ms),
        train_after=stats(train, lambda p: fit.predict(p.raw_ms, p.ops)),
        previous=previous, previous_held_out=prev_held, family_terms_supported=supported,
        written=written, seconds=time.perf_counter() - start, alternatives=alternatives)
    if plot is not None:
        plot_report(report, plot)
    return report


def plot_report(report: CalibrationReport, path: str | Path) -> Path:
    """PNG of predicted (raw and calibrated) against measured latency, held-out points marked."""
    from lana.lut import Lut
    from lana.validate import plot_predicted_vs_measured

    raw = [(p.raw_ms, p.measured_ms) for p in report.points]
    cal = [(report.fit.predict(p.raw_ms, p.ops), p.measured_ms) for p in report.points]
    teacher = Lut.load(report.lut, check_fingerprint=False).teacher
    title = (f"{teacher} on {report.device}, {len(report.points)} networks\nheld-out median "
             f"|error| {report.before['median_abs']:.1%} -> {report.after['median_abs']:.1%}, worst "
             f"{report.before['max_abs']:.1%} -> {report.after['max_abs']:.1%}")
    return plot_predicted_vs_measured(raw, path, calibrated=cal, title=title)


__all__ = ["AFFINE_FITS", "CalibrationError", "CalibrationReport", "EARN_KEEP",
           "FAMILY_POINTS_PER_PARAM", "FIT_NAMES", "Fit", "Point", "TooFewArchitectures",
           "apply_calibration", "calibrate", "error_stats", "fit_calibration", "fit_model",
           "layer_choices", "lut_applies_family_terms", "measure_architectures", "plot_report",
           "sample_architectures", "split_held_out"]

"""Measure a search's candidates end to end before one is chosen; search again when too few fit.

The search trusts the LUT's prediction.  A calibration fitted on a few dozen networks over the whole
latency range can still be 10-20 % off for the networks a search lands on, so a candidate predicted
at the budget may miss it in reality.  :func:`verify` closes that loop on the device itself:

1. every candidate of the budget is assembled and measured end to end with the LUT's backend and
   protocol, ``repeats`` times in turn with the teacher (see
   :func:`lana.calibrate.measure_architectures`); a network's latency is its fastest timed
   iteration (:data:`STATISTIC`, below);
2. a candidate passes when its measured latency meets the budget, a relative budget (``0.5x``)
   being taken of the teacher measured in the same round;
3. while fewer than ``min_kept`` pass, the search runs again under a predicted limit corrected by
   what was measured (:func:`_next_limit`: the measured / predicted ratio after one round, a line
   through all candidates after more), aiming :data:`AIM` inside the budget, at most ``rounds``
   times.  For a relative budget both sides are taken relative to the teacher.

The passing architectures (all rounds) go to the selection; every measured one is recorded::

    {"schema": "lana.verify/1", "teacher", "pool", "device", "budget": "0.5x",
     "budget_ms": the search's predicted limit,
     "architectures": [{"ops": [...], "objective", "predicted_ms": {table: ms}, "measured_ms",
                        "measured_ratio", "round", "search_limit_ms"}, ...],  # what select reads
     "measured": [{"keys": [...], "objective", "predicted_ms", "measured_ms", "measured_ratio",
                   "spread", "passed", "round", "x", "y"}, ...],    # every candidate measured
     "rounds": [{"limit_ms", "found", "passed", "teacher_ms", "budget_ms", "ratio_q75",
                 "spread_median", "teacher_vs_calibration", "attempts", "method"}, ...],
     "passed": N, "researched": R, "fallback": false}

``measured_ratio`` is measured / the teacher measured in the same round; ``x`` and ``y`` are
predicted and measured in the budget's frame: relative to the teacher's prediction and measurement
for a relative budget, milliseconds otherwise.

When no candidate passes after the last round, the ``min_kept`` fastest measured ones are kept
(``fallback``: true) with a warning, so the run goes on and its validation reports the miss.

A shared machine goes through slow periods lasting minutes, and they do not slow every network
alike: in one run here the teacher measured 1.55 ms in the verify stage, 1.5x its calibrated
prediction, the candidates only 1.2x theirs, so candidates passed at 0.49 of the teacher that
measured 0.61 of it minutes later.  When the teacher of a round measures more than
:data:`OFF_SPEED` away from its calibrated prediction (fitted shortly before, in a run), the round
is measured again after :data:`SETTLE_S` seconds, up to ``settle`` times, and the attempt whose
teacher came closest to the prediction is kept; the log says so, and the round records
``teacher_vs_calibration`` and ``attempts``.

Busy moments shorter than a round make single candidates look fast: in another run three of ten
near-identical candidates passed at 0.42-0.49 of the teacher with their repeats spread 63-109 %,
while the other seven measured 0.60-0.79, and the student measured 0.62 in the validation.  A
candidate that passes on repeats spread more than :data:`BUSY_SPREAD` is therefore measured
again beside the teacher and passes only if it passes again (``remeasured_ratio`` and
``remeasured_spread`` record that measurement).

Those runs took each network's median iteration, drift-corrected by the teacher measured before
it.  A network's fastest iteration is what it costs when nothing else gets in its way, and busy
moments, which only ever add time, cannot lower it: measuring the 20 candidates of a run four
times, at different moments of a busy day here, the ratio of a candidate to the teacher varied by
13 % (median standard deviation of its logarithm) with medians and 5 % with fastest iterations.
Verify and the run's validation therefore both compare fastest iterations.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from lana.errors import LanaError

VERIFY_SCHEMA = "lana.verify/1"
MIN_SHRINK = 0.01  # each re-search lowers the predicted limit by at least this share
AIM = 0.02  # a re-search aims this share inside the budget
BUSY_SPREAD = 0.15  # a round spread more (median) is reported as noisy; a pass measured again
OFF_SPEED = 0.30  # a teacher this far from its calibrated prediction: the machine's speed changed
SETTLE_S = 30.0  # pause before measuring such a round again
# What a network's latency is taken as, here and in lana run's validation: its fastest timed
# iteration over its repeats (see lana.calibrate.combine_repeats).
STATISTIC = "fastest"


class VerifyError(LanaError):
    """A verification request that cannot run (bad options, a LUT layer without its teacher op, a
    search result naming no scores file to search again with)."""


class VerifyWarning(UserWarning):
    """No candidate met the budget in measurement; the fastest measured ones were kept."""


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def verify(search: str | Path, lut: str | Path, device: str, budget: str, *,
           scores: str | Path | None = None, out: str | Path | None = None,
           min_kept: int = 3, rounds: int = 3, repeats: int = 3, k: int | None = None,
           overlap: float | None = None, settle: int = 2, settle_s: float = SETTLE_S,
           progress: Callable[[str, int, int], None] | None = None,
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the candidates of ``budget`` in ``search``, search again while too few pass.

    ``scores`` defaults to the scores file the search result names; ``k`` and ``overlap`` to the
    search's own.  ``progress(label, done, total)`` is called after each measurement; ``log``
    receives one line per round.  Returns the document described in the module docstring and
    writes it to ``out`` when given.
    """
    from lana.calibrate import measure_architectures
    from lana.select import architectures_in, read_search_result
    from lana.validate import is_relative_budget, open_lut, parse_budget

    if min_kept < 1:
        raise VerifyError(f"min_kept must be at least 1, got {min_kept}")
    if rounds < 0:
        raise VerifyError(f"rounds must be 0 or more, got {rounds}")
    start = time.perf_counter()
    doc = read_search_result(search)
    cands = architectures_in(doc, search, budget)
    doc = doc if isinstance(doc, dict) else {}
    the_lut, preset = open_lut(lut, device, teacher=cands[0].arch.teacher)
    relative = is_relative_budget(budget)
    teacher_ops = _teacher_ops(the_lut)
    teacher_pred = the_lut.predict(teacher_ops)
    predicted_budget = parse_budget(budget, teacher_pred)
    searched = [Path(v) for v in (doc.get("luts") or {}).values() if isinstance(v, str)]
    same_lut = not searched or any(_same_file(v, lut) for v in searched)
    # the search's limit (predicted ms), when it was predicted by this LUT
    limit = (cands[0].arch.budget_ms if same_lut else None) or predicted_budget
    if not same_lut and log is not None:
        log(f"note: the search used {', '.join(map(str, searched))}, not {lut}; a re-search "
            f"starts from {predicted_budget:.4f} ms, the budget as {lut} predicts it")
    search_budget_ms = limit
    table_name = None
    k = int(k or doc.get("k") or len(cands))
    overlap = float(overlap or doc.get("overlap") or 0.7)
    scores = scores or _recorded_scores(doc.get("scores"), search)
    table = None  # what a re-search searches, read once, before measuring: a bad file fails now
    if scores and rounds > 0:
        from lana.search.errors import SearchWarning
        from lana.search.files import load_table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SearchWarning)
            table = load_table(scores, [lut])

    def measure(networks: list, tick: Callable[[int, int], None]) -> list[tuple[float, float]]:
        """(fastest iteration, spread) of the teacher, then of each network, measured in turn
        ``repeats`` times (see :data:`STATISTIC`)."""
        return measure_architectures([teacher_ops] + networks, the_lut, preset, repeats=repeats,
                                     progress=tick, statistic=STATISTIC, drift_correction=False)

    measured: list[dict[str, Any]] = []
    round_log: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    batch = [(tuple(c.arch.ops), c.arch.objective, dict(c.arch.predicted_ms)) for c in cands]
    for r in range(rounds + 1):
        batch = [b for b in batch if b[0] not in seen]
        seen.update(b[0] for b in batch)
        if not batch:
            break

        def tick(done: int, total: int, _r: int = r) -> None:
            if progress is not None:
                progress(f"round {_r + 1}: measuring {len(batch)} candidates", done, total)

        results, off, attempts = None, math.inf, 0
        for attempt in range(settle + 1):
            if attempt:
                time.sleep(settle_s)
            got = measure([b[0] for b in batch], tick)
            attempts += 1
            ratio = got[0][0] / teacher_pred
            if results is None or abs(math.log(ratio)) < off:
                results, off = got, abs(math.log(ratio))
            if the_lut.calibration is None or abs(ratio - 1) <= OFF_SPEED:
                break
            if log is not None:
                again = (f"measuring the round again in {settle_s:.0f} s" if attempt < settle
                         else "keeping the attempt closest to it")
                log(f"round {r + 1}: the teacher measured {got[0][0]:.4f} ms, {ratio:.2f}x its "
                    f"calibrated prediction ({teacher_pred:.4f} ms): the machine runs at another "
                    f"speed than when the LUT was calibrated, and ratios to the teacher may not "
                    f"hold; {again}")
        teacher_ms = results[0][0]
        budget_ms = parse_budget(budget, teacher_ms) if relative else predicted_budget
        # The budget's frame: a relative budget compares each network with the teacher, measured
        # (this round) and predicted, so a machine running faster or slower as a whole between
        # rounds does not move the figures.
        scale_meas, scale_pred = (teacher_ms, teacher_pred) if relative else (1.0, 1.0)
        for (ops, objective, pred), (ms, spread) in zip(batch, results[1:]):
            pred_ms = the_lut.predict(ops)
            measured.append({"keys": list(ops), "objective": objective,
                             "predicted_ms": pred or {preset.name: pred_ms},
                             "predicted_calibrated_ms": pred_ms, "measured_ms": ms,
                             "measured_ratio": ms / teacher_ms, "spread": spread,
                             "x": pred_ms / scale_pred, "y": ms / scale_meas,
                             "passed": ms <= budget_ms, "round": r})
        this = [m for m in measured if m["round"] == r]
        # A pass on repeats that spread widely may be a lucky moment of a busy machine: such
        # candidates are measured again (beside the teacher) and pass only if they pass again.
        unsure = [m for m in this if m["passed"] and m["spread"] > BUSY_SPREAD]
        if unsure:
            again = measure([m["keys"] for m in unsure], tick)
            limit_again = parse_budget(budget, again[0][0]) if relative else budget_ms
            for m, (ms, spread) in zip(unsure, again[1:]):
                m.update(passed=ms <= limit_again, remeasured_ratio=ms / again[0][0],
                         remeasured_spread=spread)
            if log is not None:
                log(f"round {r + 1}: {len(unsure)} candidate(s) passed on repeats spread over "
                    f"{BUSY_SPREAD:.0%}; measured again, "
                    f"{sum(1 for m in unsure if m['passed'])} still pass")
        passed = sum(1 for m in measured if m["passed"])
        q75 = _quantile([m["y"] / m["x"] for m in this], 0.75)
        spread = _quantile([s for _, s in results], 0.5)
        round_log.append({"limit_ms": limit, "found": len(batch),
                          "passed": sum(1 for m in this if m["passed"]),
                          "teacher_ms": teacher_ms, "budget_ms": budget_ms, "ratio_q75": q75,
                          "spread_median": spread,
                          "teacher_vs_calibration": teacher_ms / teacher_pred,
                          "attempts": attempts})
        if log is not None:
            busy = (f"; the machine was busy: repeats of a network spread {spread:.0%} (median), "
                    f"so verdicts near the budget are uncertain (more --repeats steady them)"
                    if spread > BUSY_SPREAD else "")
            log(f"round {r + 1}: {round_log[-1]['passed']} of {len(batch)} candidates within "
                f"{budget_ms:.4f} ms measured (teacher {teacher_ms:.4f} ms; measured/predicted "
                f"upper quartile {q75:.3f}{' relative to the teacher' if relative else ''}){busy}")
        if passed >= min(min_kept, len(cands)) or r == rounds:
            break
        goal = (budget_ms / scale_meas) * (1 - AIM)
        x_new, method = _next_limit(measured, goal, q75)
        round_log[-1]["method"] = method
        new_limit = min(limit * (1 - MIN_SHRINK), x_new * scale_pred)
        batch, limit, table_name = _search_again(table, new_limit, k, overlap,
                                                 single_shot=bool(doc.get("single_shot")),
                                                 table_name=table_name, log=log)

    kept = [m for m in measured if m["passed"]]
    fallback = not kept
    if fallback:
        kept = sorted(measured, key=lambda m: m["y"])[:min_kept]  # fastest in the budget's frame
        warnings.warn(f"no candidate met the budget {budget} in measurement after "
                      f"{len(round_log)} round(s); keeping the {len(kept)} fastest measured "
                      f"(re-calibrate the LUT with lana lut calibrate, or raise the budget)",
                      VerifyWarning, stacklevel=2)
    result = {
        "schema": VERIFY_SCHEMA, "teacher": the_lut.teacher, "pool": cands[0].arch.pool,
        "layer_names": list(cands[0].arch.layer_names), "device": preset.name,
        "budget": str(budget), "budget_ms": search_budget_ms, "search": str(search),
        "lut": str(lut),
        "architectures": [{"ops": m["keys"], "objective": m["objective"],
                           "predicted_ms": m["predicted_ms"], "measured_ms": m["measured_ms"],
                           "measured_ratio": m["measured_ratio"], "round": m["round"],
                           "search_limit_ms": round_log[m["round"]]["limit_ms"]}
                          for m in kept],
        "measured": measured, "rounds": round_log,
        "passed": sum(1 for m in measured if m["passed"]), "researched": len(round_log) - 1,
        "fallback": fallback, "repeats": repeats, "seconds": round(time.perf_counter() - start, 2),
    }
    if out is not None:
        from lana.atomic import write_text

        write_text(Path(out), json.dumps(result, indent=1) + "\n")
    return result


def unverified(search: str | Path, budget: str, reason: str, *,
               out: str | Path | None = None) -> dict[str, Any]:
    """The search's candidates of ``budget`` passed on unmeasured (``"skipped"``: ``reason``), in
    the document :func:`verify` writes, for when this machine cannot measure the LUT's device."""
    from lana.select import read_architectures

    cands = read_architectures(search, budget)
    arch = cands[0].arch
    result = {
        "schema": VERIFY_SCHEMA, "teacher": arch.teacher, "pool": arch.pool,
        "layer_names": list(arch.layer_names), "budget": str(budget), "budget_ms": arch.budget_ms,
        "search": str(search), "skipped": reason,
        "architectures": [{"ops": list(c.arch.ops), "objective": c.arch.objective,
                           "predicted_ms": dict(c.arch.predicted_ms)} for c in cands],
        "measured": [], "rounds": [], "passed": 0, "researched": 0, "fallback": False,
    }
    if out is not None:
        from lana.atomic import write_text

        write_text(Path(out), json.dumps(result, indent=1) + "\n")
    return result


def _next_limit(measured: Sequence[dict[str, Any]], goal: float, q75: float
                ) -> tuple[float, str]:
    """The predicted value (budget frame) at which a new search should land to measure ``goal``.

    With candidates from one search only: ``goal`` over the upper quartile of measured / predicted.
    With two or more searches at different limits: a straight line measured = a + b * predicted
    through every candidate so far (least squares), shifted up by the upper quartile of its
    residuals, solved for ``goal`` (a secant step: the prediction's error need not be
    proportional).  A line with no clear positive slope falls back to the ratio.
    """
    import numpy as np

    rounds = {m["round"] for m in measured}
    if len(rounds) >= 2:
        x = np.array([m["x"] for m in measured])
        y = np.array([m["y"] for m in measured])
        if np.ptp(x) > 1e-9:
            b, a = np.polyfit(x, y, 1)
            if b > 0.05:
                shift = float(np.quantile(y - (a + b * x), 0.75))
                return max((goal - a - shift) / b, 1e-12), "secant"
    return goal / q75, "ratio"


def _teacher_ops(lut: Any) -> list[str]:
    ops = []
    for i, layer in enumerate(lut.layers):
        teacher = [k for k in layer.get("ops", ()) if k.startswith("teacher:")]
        if not teacher:
            raise VerifyError(f"layer {i} of LUT {lut.path} has no teacher op; re-profile it with "
                              f"lana-profile")
        ops.append(teacher[0])
    return ops


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _recorded_scores(recorded: Any, search: str | Path) -> Path | None:
    """The scores file a search result names: as recorded (relative to where the search ran),
    else the file of that name beside the search result (a run directory moved or read from
    elsewhere)."""
    if not isinstance(recorded, str) or not recorded:
        return None
    path = Path(recorded)
    beside = Path(search).parent / path.name
    return beside if not path.is_file() and beside.is_file() else path


def _search_again(table: Any, limit_ms: float, k: int, overlap: float, *,
                  single_shot: bool, table_name: str | None,
                  log: Callable[[str], None] | None
                  ) -> tuple[list[tuple[tuple[str, ...], float, dict]], float, str]:
    """K new architectures of ``table`` (the scores and the LUT) under ``limit_ms`` (predicted),
    never below the cheapest reachable."""
    from lana.search import Budget, search
    from lana.search.errors import SearchWarning

    if table is None:
        raise VerifyError("the search result names no scores file; pass scores= (lana run's "
                          "scores.json)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SearchWarning)
        name = table_name or table.table_names[0]
        floor = (table.single_shot() if single_shot else table).minimum(name)
        if limit_ms < floor:
            limit_ms = floor * (1 + 1e-9)
        res = search(table, [Budget(name, limit_ms)], k=k, overlap=overlap,
                     single_shot=single_shot)
    if log is not None:
        log(f"searching again under {limit_ms:.4f} ms predicted: {len(res.solutions)} found")
    batch = [(tuple(s.keys), float(s.objective),
              {n: float(s.costs[n]) for n in table.table_names if table.units.get(n) == "ms"})
             for s in res.solutions]
    return batch, limit_ms, name


__all__ = ["VERIFY_SCHEMA", "VerifyError", "VerifyWarning", "unverified", "verify"]

"""The last two stages of ``lana run``: end-to-end validation and the report (summary, markdown, PNGs)."""

from __future__ import annotations

import json
import statistics
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lana.run import Pipeline


def validate_run(p: "Pipeline") -> dict[str, Any]:
    """Measure teacher and student end to end in one session on the run's device and LUT protocol.

    Both stay open while they are measured in alternation (the run's ``repeats`` rounds, the
    order flipping each round) so drift of a shared machine hits both.  Each one's latency is its
    fastest timed iteration over the rounds, as the verify stage takes it (see
    :data:`lana.verify.STATISTIC`), and the speed-up and the budget's verdict come from those; the
    median of the round medians is recorded beside it (``median_ms``, ``speedup_median``).  The predicted-vs-measured plot also shows the other candidates: those the
    verify stage measured, scaled to this session's teacher, or (a run without that stage) the
    search's candidates, measured once each here with random weights.
    """
    from lana.assemble import load_student, read_arch, teacher_architecture
    from lana.bench import interleaved
    from lana.lut import Lut
    from lana.ops import deploy
    from lana.select import read_architectures
    from lana.validate import (is_relative_budget, lut_backend_config, lut_protocol,
                               measure_network, parse_budget)
    from profilers import load_preset

    lut = Lut.load(p.path("lut.json"), teacher=p.config.teacher)
    preset = load_preset(p.config.device)
    config, protocol = lut_backend_config(lut, preset), lut_protocol(lut)
    shape = (lut.batch_size, *p.teacher.input_shape)
    teacher_model = deploy(p.teacher.model)
    student = deploy(load_student(p.path("finetune") / "student.pt"))
    arch = read_arch(p.path("select.json"))
    teacher_keys = teacher_architecture(p.teacher).ops

    # both open at once, measured in alternating rounds (the order flipping each round)
    s_meas, t_meas, _ = interleaved(student, shape, teacher_model, shape, preset,
                                    repeats=p.config.repeats, protocol=protocol, config=config,
                                    labels=("the student", "the teacher"))
    t_runs, s_runs = [m.median for m in t_meas], [m.median for m in s_meas]
    teacher_ms, student_ms = min(m.fastest for m in t_meas), min(m.fastest for m in s_meas)
    teacher_med, student_med = statistics.median(t_runs), statistics.median(s_runs)

    points = _verified_points(p, lut, arch.ops, teacher_ms)
    if not points:
        for cand in read_architectures(p.path("search.json"), p.config.budget)[:10]:
            if list(cand.arch.ops) == list(arch.ops):
                continue
            from lana.assemble import build_student

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random weights are fine: only latency is measured
                model = deploy(build_student(cand.arch, p.teacher)[0])
            measured = measure_network(model, shape, preset, config=config, protocol=protocol,
                                       label="candidate").fastest
            points.append({"predicted_ms": lut.predict(cand.arch.ops),
                           "predicted_raw_ms": lut.predict_raw(cand.arch.ops),
                           "measured_ms": measured})

    teacher_pred = lut.predict(teacher_keys)
    budget_ms = parse_budget(p.config.budget, teacher_pred)
    # A budget relative to the teacher ("0.5x") is checked against the teacher measured in this
    # session, so a machine running faster or slower as a whole since calibration cannot decide it.
    measured_budget_ms = (parse_budget(p.config.budget, teacher_ms)
                          if is_relative_budget(p.config.budget) else budget_ms)
    result = {
        "teacher": {"measured_ms": teacher_ms, "median_ms": teacher_med, "runs_ms": t_runs,
                    "predicted_ms": teacher_pred, "predicted_raw_ms": lut.predict_raw(teacher_keys)},
        "student": {"measured_ms": student_ms, "median_ms": student_med, "runs_ms": s_runs,
                    "predicted_ms": lut.predict(arch.ops), "predicted_raw_ms": lut.predict_raw(arch.ops)},
        "statistic": "fastest",
        "candidates": points,
        "speedup": teacher_ms / student_ms,
        "speedup_median": teacher_med / student_med,
        "predicted_speedup": teacher_pred / lut.predict(arch.ops),
        "budget_ms": budget_ms,
        "budget_measured_ms": measured_budget_ms,
        "within_budget": student_ms <= measured_budget_ms * (1 + p.config.tolerance),
        "tolerance": p.config.tolerance,
        "device": p.config.device, "batch_size": lut.batch_size,
        "calibrated": lut.calibration is not None,
    }
    from lana.atomic import write_text

    write_text(p.path("validation.json"), json.dumps(result, indent=1) + "\n")
    return result


def _verified_points(p: "Pipeline", lut: Any, chosen: Any, teacher_ms: float) -> list[dict[str, Any]]:
    """The candidates the verify stage measured (all rounds, the chosen one left out), each scaled
    to this session's teacher: measured / (teacher measured beside it) x ``teacher_ms``.  Empty
    without a verify stage or when it measured nothing."""
    if not p.path("verify.json").exists():
        return []
    doc = json.loads(p.path("verify.json").read_text())
    points = []
    for m in doc["measured"]:
        if list(m["keys"]) == list(chosen):
            continue
        points.append({"predicted_ms": lut.predict(m["keys"]),
                       "predicted_raw_ms": lut.predict_raw(m["keys"]),
                       "measured_ms": m["measured_ratio"] * teacher_ms, "round": m["round"]})
    return points


def summarize(p: "Pipeline") -> dict[str, Any]:
    val = json.loads(p.path("validation.json").read_text())
    metrics = json.loads((p.path("finetune") / "metrics.json").read_text())
    return {
        "statistic": val.get("statistic", "median"),
        "teacher": {"latency_ms": round(val["teacher"]["measured_ms"], 4),
                    "median_ms": round(val["teacher"].get("median_ms",
                                                          val["teacher"]["measured_ms"]), 4),
                    "predicted_ms": round(val["teacher"]["predicted_ms"], 4),
                    "predicted_raw_ms": round(val["teacher"]["predicted_raw_ms"], 4),
                    "top1": round(100 * metrics["teacher_top1"], 2)},
        "student": {"latency_ms": round(val["student"]["measured_ms"], 4),
                    "median_ms": round(val["student"].get("median_ms",
                                                          val["student"]["measured_ms"]), 4),
                    "predicted_ms": round(val["student"]["predicted_ms"], 4),
                    "predicted_raw_ms": round(val["student"]["predicted_raw_ms"], 4),
                    "top1": round(100 * metrics["final_top1"], 2)},
        "calibrated": bool(val.get("calibrated")),
        "speedup": round(val["speedup"], 3),
        "predicted_speedup": round(val["predicted_speedup"], 3),
        "budget": p.config.budget,
        "budget_ms": round(val["budget_ms"], 4),
        "budget_measured_ms": round(val.get("budget_measured_ms", val["budget_ms"]), 4),
        "within_budget": val["within_budget"],
        "device": p.config.device, "pool": p.config.pool,
        "top1_drop": round(100 * (metrics["teacher_top1"] - metrics["final_top1"]), 2),
        **_verification(p),
    }


def _verification(p: "Pipeline") -> dict[str, Any]:
    """What the verify stage measured: candidates that met the budget, re-searches."""
    path = p.path("verify.json")
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    if doc.get("skipped"):
        return {"verified": {"skipped": doc["skipped"]}}
    return {"verified": {"measured": len(doc["measured"]), "passed": doc["passed"],
                         "researched": doc["researched"], "fallback": doc["fallback"]}}


def _layer_rows(p: "Pipeline") -> list[dict[str, Any]]:
    from lana.assemble import read_arch
    from lana.lut import Lut
    from lana.spec import parse_key

    lut = Lut.load(p.path("lut.json"), teacher=p.config.teacher)
    arch = read_arch(p.path("select.json"))
    rows = []
    for i, (layer, key) in enumerate(zip(p.teacher.layers, arch.ops)):
        family = parse_key(key).family
        action = {"teacher": "kept", "identity": "skipped"}.get(family, "replaced")
        teacher_key = p.teacher.teacher_spec(i).key
        rows.append({"index": i, "layer": layer.name, "action": action, "op": key.split("|")[0],
                     "teacher_ms": lut.latency(teacher_key),
                     "op_ms": lut.latency(key) if family != "identity" else 0.0})
    return rows


def write_report(p: "Pipeline") -> dict[str, Any]:
    """summary.json, report.md and its PNGs, and a rich summary table on the terminal."""
    from lana.atomic import write_text

    summary = summarize(p)
    write_text(p.path("summary.json"), json.dumps(summary, indent=1) + "\n")
    rows = _layer_rows(p)
    val = json.loads(p.path("validation.json").read_text())
    _plots(p, summary, rows, val)
    write_text(p.path("report.md"), _markdown(p, summary, rows, val))
    print_summary(summary, rows, p.console)
    return summary


def _plots(p: "Pipeline", summary: dict, rows: list[dict], val: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"kept": "#4c72b0", "replaced": "#dd8452", "skipped": "#c44e52"}
    # 1. teacher vs student: latency and top-1
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    names = ["teacher", "LANA student"]
    lat = [summary["teacher"]["latency_ms"], summary["student"]["latency_ms"]]
    acc = [summary["teacher"]["top1"], summary["student"]["top1"]]
    axes[0].bar(names, lat, color=["#4c72b0", "#55a868"])
    axes[0].axhline(summary.get("budget_measured_ms", summary["budget_ms"]), color="k", ls="--",
                    lw=1, label=f"budget ({summary['budget']})")
    axes[0].set_ylabel(f"measured latency (ms, {summary['device']}, "
                       f"{_STATISTIC_WORDS.get(summary.get('statistic'), 'median')})")
    axes[0].legend()
    axes[0].set_title(f"{summary['speedup']:.2f}x faster")
    axes[1].bar(names, acc, color=["#4c72b0", "#55a868"])
    axes[1].set_ylim(max(0, min(acc) - 5), 100)
    axes[1].set_ylabel("top-1 on the held-out split (%)")
    axes[1].set_title(f"{summary['top1_drop']:+.2f} points lost" if summary["top1_drop"] > 0
                      else f"{-summary['top1_drop']:.2f} points gained")
    fig.tight_layout()
    fig.savefig(p.path("teacher_vs_student.png"), dpi=110)
    plt.close(fig)

    # 2. the search's latency/predicted-loss front, the target's candidates and the chosen one
    search = json.loads(p.path("search.json").read_text())
    chosen = json.loads(p.path("select.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 4))
    targets = sorted(search["targets"],
                     key=lambda t: next(iter(t["budgets"].values()))["given"] != p.config.budget)
    for n, target in enumerate(targets):
        xs = [next(iter(a["predicted_ms"].values())) for a in target["architectures"]]
        ys = [a["objective"] for a in target["architectures"]]
        ax.scatter(xs, ys, s=14 if n else 22, color="#dd8452" if n == 0 else "#bbbbbb",
                   label=f"candidates at {p.config.budget}" if n == 0 else None, zorder=2 if n == 0 else 1)
    front = sorted((f["cost"], f["objective"]) for f in search.get("pareto", []))
    if front:
        ax.plot(*zip(*front), color="#4c72b0", lw=1.2, label="front (best per budget)")
    chosen_ms = next(iter(chosen.get("predicted_ms", {}).values()), None)
    if chosen_ms is not None:
        ax.scatter([chosen_ms], [chosen["objective"]], marker="*", s=220, color="#55a868",
                   edgecolor="k", zorder=4, label="selected")
    ax.axvline(summary["budget_ms"], color="k", ls="--", lw=1, label="budget")
    ax.set_xlabel("LUT-predicted latency (ms)")
    ax.set_ylabel("predicted loss change (ILP objective)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(p.path("pareto.png"), dpi=110)
    plt.close(fig)

    # 3. per layer: what was kept, replaced or skipped, and its LUT latency
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["teacher_ms"] for r in rows], height=0.4, color="#bbbbbb",
            label="teacher op")
    ax.barh([y - 0.2 for y in ys], [r["op_ms"] for r in rows], height=0.4,
            color=[colors[r["action"]] for r in rows], label="chosen op")
    ax.set_yticks(list(ys), [f"{r['layer']}: {r['action']} {'' if r['action'] != 'replaced' else r['op']}"
                             for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("LUT latency (ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles + [plt.Rectangle((0, 0), 1, 1, color="#bbbbbb")],
              [*colors, "teacher op"], fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(p.path("layers.png"), dpi=110)
    plt.close(fig)

    # 4. predicted vs measured (teacher, student, other candidates)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    pts = [(c["predicted_ms"], c["measured_ms"]) for c in val["candidates"]]
    if pts:
        ax.scatter(*zip(*pts), s=18, color="#999999", label="search candidates")
    for who, color in (("teacher", "#4c72b0"), ("student", "#55a868")):
        ax.scatter([val[who]["predicted_ms"]], [val[who]["measured_ms"]], s=50, color=color,
                   label=who, zorder=3)
    lo = min([v for pt in pts for v in pt] + [val["student"]["measured_ms"],
                                             val["student"]["predicted_ms"]]) * 0.9
    hi = max([v for pt in pts for v in pt] + [val["teacher"]["measured_ms"],
                                             val["teacher"]["predicted_ms"]]) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel("LUT prediction (ms)")
    ax.set_ylabel(f"measured end to end (ms, "
                  f"{_STATISTIC_WORDS.get(val.get('statistic'), 'median')})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(p.path("predicted_vs_measured.png"), dpi=110)
    plt.close(fig)


def _markdown(p: "Pipeline", summary: dict, rows: list[dict], val: dict) -> str:
    t, s = summary["teacher"], summary["student"]
    lines = [
        f"# LANA run: {p.config.teacher} on {p.config.device}, budget {p.config.budget}",
        "",
        f"| | latency (ms, {_STATISTIC_WORDS.get(summary.get('statistic'), 'median')}) | "
        "median (ms) | LUT prediction (ms) | raw LUT sum (ms) | "
        "top-1 (%) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher | {t['latency_ms']:.3f} | {t.get('median_ms', t['latency_ms']):.3f} | "
        f"{t['predicted_ms']:.3f} | {t.get('predicted_raw_ms', t['predicted_ms']):.3f} | "
        f"{t['top1']:.2f} |",
        f"| LANA student | {s['latency_ms']:.3f} | {s.get('median_ms', s['latency_ms']):.3f} | "
        f"{s['predicted_ms']:.3f} | {s.get('predicted_raw_ms', s['predicted_ms']):.3f} | "
        f"{s['top1']:.2f} |",
        "",
        *([("Measured latency is each network's fastest timed iteration, teacher and student "
            "measured in alternating rounds in one session: what it costs when nothing else on "
            "the machine gets in its way. Busy moments shorter than a measurement do not move "
            "it (a slowdown lasting through every round still does). The speed-up and the "
            "budget are judged on it; the median iteration is shown beside it."), ""]
          if summary.get("statistic") == "fastest" else []),
        ("The LUT prediction is the raw sum of per-op latencies corrected by the LUT's calibration "
         "(fitted to end-to-end measurements); the budget applies to it."
         if summary.get("calibrated") else
         "The LUT is not calibrated: predictions are raw sums of per-op latencies."),
        "",
        f"Speed-up measured end to end: **{summary['speedup']:.2f}x** (LUT predicted "
        f"{summary['predicted_speedup']:.2f}x). {_budget_text(summary)}: "
        f"{'met' if summary['within_budget'] else '**missed**'} in reality. Top-1 change: "
        f"{-summary['top1_drop']:+.2f} points.",
        "",
        "![teacher vs student](teacher_vs_student.png)",
        "",
        "## Search",
        "",
        "![Pareto front](pareto.png)",
        "",
        *_verification_text(summary),
        "## Layers",
        "",
        "| # | layer | action | op | teacher op (ms) | chosen op (ms) |",
        "|---:|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['index']} | {r['layer']} | {r['action']} | `{r['op']}` | "
                     f"{r['teacher_ms']:.4f} | {r['op_ms']:.4f} |")
    lines += ["", "![layers](layers.png)", "", "## Predicted vs. measured latency", "",
              "![predicted vs measured](predicted_vs_measured.png)", ""]
    return "\n".join(lines)


def _verification_text(summary: dict) -> list[str]:
    v = summary.get("verified")
    if not v:
        return []
    if v.get("skipped"):
        return [f"The candidates were not measured before selection: {v['skipped']}.", ""]
    n = v["researched"]
    again = "once more" if n == 1 else f"{n} more times"
    searches = f" (the search ran {again} under a limit corrected by what was measured)" if n else ""
    if v["fallback"]:
        text = (f"Before selection, {v['measured']} candidates were measured end to end{searches}; "
                f"none met the budget, so the fastest measured were kept.")
    else:
        text = (f"Before selection, {v['measured']} candidates were measured end to end{searches}; "
                f"{v['passed']} met the budget and went on to selection.")
    return [text, ""]


def _budget_text(summary: dict) -> str:
    """How the budget was checked: a fraction of the teacher measured in the same session, or
    milliseconds."""
    measured = summary.get("budget_measured_ms", summary["budget_ms"])
    from lana.validate import is_relative_budget

    if is_relative_budget(summary["budget"]):
        return (f"Budget {summary['budget']} of the teacher measured here = {measured:.3f} ms "
                f"({summary['budget_ms']:.3f} ms of its LUT prediction, the search's limit)")
    return f"Budget {summary['budget_ms']:.3f} ms"


_STATISTIC_WORDS = {"fastest": "fastest iteration", "median": "median"}


def print_summary(summary: dict, rows: list[dict], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"LANA: {summary['device']}, budget {summary['budget']} "
                  f"({summary['budget_ms']:.3f} ms)")
    how = _STATISTIC_WORDS.get(summary.get("statistic"), "median")
    for col in ("", f"latency ms ({how})", "median ms", "LUT ms", "top-1 %"):
        table.add_column(col, justify="right" if col else "left")
    for who, label in (("teacher", "teacher"), ("student", "LANA student")):
        d = summary[who]
        table.add_row(label, f"{d['latency_ms']:.3f}", f"{d.get('median_ms', d['latency_ms']):.3f}",
                      f"{d['predicted_ms']:.3f}", f"{d['top1']:.2f}")
    console.print(table)
    kept = sum(r["action"] == "kept" for r in rows)
    skipped = sum(r["action"] == "skipped" for r in rows)
    console.print(f"speed-up {summary['speedup']:.2f}x measured ({summary['predicted_speedup']:.2f}x "
                  f"predicted); top-1 {-summary['top1_drop']:+.2f} points; layers kept {kept}, "
                  f"replaced {len(rows) - kept - skipped}, skipped {skipped}; budget "
                  f"{'met' if summary['within_budget'] else 'MISSED'}")

"""``lana search`` as a Python function: files in (scores, LUTs), a JSON report and a PNG out.

The report holds, per budget target, the K architectures in the order found, each with its
``lana.arch/1`` architecture file, predicted cost per table, objective, predicted loss, HiGHS's
status, dual bound and gap.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from lana.errors import check_output_file
from lana.search.budget import Budget, check_unit, parse_budgets
from lana.search.errors import SearchError, SearchWarning
from lana.search.files import add_model_tables, arch_dict, load_table
from lana.search.solver import max_shared_layers
from lana.search.sweep import SweepResult, search_many

REPORT_SCHEMA = "lana.search/1"


def build_targets(table_names: Sequence[str], budgets: Sequence[str],
                  max_params: str | None = None, max_flops: str | None = None
                  ) -> list[list[Budget]]:
    """Targets from per-table budget strings (the i-th string limits the i-th table); at most
    one of them may be a list or range, which becomes the sweep axis.  ``max_params`` and
    ``max_flops`` limit the "params" and "flops" tables of every target."""
    if not budgets:
        raise SearchError("give a budget, e.g. --budget 0.5x (half the teacher's latency)")
    if len(budgets) > len(table_names):
        raise SearchError(f"{len(budgets)} --budget values for {len(table_names)} --lut files; "
                          f"give at most one budget per LUT, in the same order")
    unlimited = table_names[len(budgets):]
    if unlimited:
        import warnings

        warnings.warn(f"no --budget for {', '.join(unlimited)}: its latency is predicted for every "
                      f"architecture but not limited; give one --budget per --lut, in the same "
                      f"order, to limit it", SearchWarning, stacklevel=2)
    expanded = [parse_budgets(b) for b in budgets]
    for values in expanded:
        for value in values:
            check_unit(value, latency=True)
    axes = [i for i, values in enumerate(expanded) if len(values) > 1]
    if len(axes) > 1:
        raise SearchError("only one --budget may list several values (the sweep axis); give "
                          "the other LUTs a single budget each")
    axis = axes[0] if axes else 0
    fixed = [Budget(table_names[i], values[0]) for i, values in enumerate(expanded) if i != axis]
    for name, limit, option in (("params", max_params, "--max-params"),
                                 ("flops", max_flops, "--max-flops")):
        if limit is not None:
            try:
                check_unit(limit, latency=False)
                fixed.append(Budget(name, limit))
            except SearchError as exc:
                raise SearchError(f"{option}: {exc}") from None
    return [[Budget(table_names[axis], value), *fixed] for value in expanded[axis]]


def search_files(*, luts: Sequence[str], scores: str, budgets: Sequence[str], out: str,
                 k: int = 10, overlap: float = 0.7, single_shot: bool = False,
                 max_params: str | None = None, max_flops: str | None = None,
                 gap: float = 0.005, time_limit: float = 2.0, time_budget: float | None = None,
                 threads: int = 1, strategy: str = "top-down", plot: bool = True,
                 baselines: bool = False, check_fingerprint: bool = True) -> dict[str, Any]:
    """Run the search on files and write the report (JSON at ``out``, PNG beside it).

    With ``baselines``, every target is also searched by random sampling and by evolution on the
    same objective and budgets, each for as long as the integer program took on that target
    (paper Table 5); their best objectives go into the report.
    """
    start = time.perf_counter()
    out_path = _report_path(out, inputs=[*luts, scores])
    table = load_table(scores, luts, check_fingerprint=check_fingerprint)
    targets = build_targets(table.table_names, budgets, max_params, max_flops)  # checks them early
    if max_params is not None or max_flops is not None:
        table = add_model_tables(table, params=max_params is not None, flops=max_flops is not None,
                                 option="--max-params" if max_params is not None else "--max-flops")
    sweep = search_many(table, targets, k, overlap, strategy=strategy, single_shot=single_shot,
                        gap=gap, time_limit=time_limit, time_budget=time_budget,
                        threads=threads)
    report = build_report(sweep, luts=luts, scores=scores, k=k, overlap=overlap,
                          single_shot=single_shot, gap=gap, time_limit=time_limit)
    if baselines:
        for target, budgets_, res in zip(report["targets"], sweep.targets, sweep.results):
            target["baselines"] = run_baselines(sweep.table, budgets_, res.time_s)
    report["time_s"] = time.perf_counter() - start
    from lana.atomic import write_text

    try:
        write_text(out_path, json.dumps(report, indent=1) + "\n")
    except OSError as exc:
        raise SearchError(f"cannot write {out_path}: {exc.strerror or exc}; choose a writable "
                          f"--out") from None
    if plot:
        from lana.search.plot import plot_front

        report["plot"] = str(plot_front(sweep, out_path.with_suffix(".png"),
                                        title=f"{table.teacher}: LANA search"))
    return report


def _report_path(out: str | Path, *, inputs: Sequence[str | Path] = ()) -> Path:
    """``out`` as the report's path, refused when it is a folder, or when the report or the plot
    beside it would overwrite an input file or each other."""
    text = str(out)
    path = check_output_file(text, "--out", "search.json", SearchError)  # before the solves
    if path.suffix.lower() == ".png":
        raise SearchError(f"--out {text} ends in .png, the name of the plot written beside the "
                          f"report; name the report {path.with_suffix('.json')}")
    plot = path.with_suffix(".png")
    if plot.is_dir():
        raise SearchError(f"--out {text} draws its plot to {plot}, which is a folder; name the "
                          f"report elsewhere")
    written = {path.resolve(), plot.resolve()}
    for given in inputs:
        if Path(given).resolve() in written:
            raise SearchError(f"--out {text} would overwrite the input {given} (with the report or "
                              f"its plot); write the report elsewhere, e.g. search.json")
    return path


def run_baselines(table, budgets: Sequence[Budget], time_s: float, *, seed: int = 0
                  ) -> dict[str, dict[str, Any]]:
    """Best objective of random sampling and of evolution, each given ``time_s`` seconds."""
    from lana.search.baselines import evolutionary_search, random_search

    out = {}
    for name, result in (
            ("evolution", evolutionary_search(table, budgets, time_s=time_s, seed=seed)),
            ("random", random_search(table, budgets, time_s=time_s, seed=seed))):
        out[name] = {"best": result.best if result.objectives.size else None,
                     "ops": table.keys(result.choices[0]) if result.objectives.size else None,
                     "evaluated": result.evaluated, "time_s": result.time_s}
    return out


def build_report(sweep: SweepResult, *, luts: Sequence[str], scores: str, k: int,
                 overlap: float, single_shot: bool, gap: float, time_limit: float
                 ) -> dict[str, Any]:
    table = sweep.table
    latency = [n for n in table.table_names if table.units.get(n) == "ms"]
    out_targets = []
    for budgets, res in zip(sweep.targets, sweep.results):
        primary = budgets[0].table
        budget_ms = res.limits.get(primary) if table.units.get(primary) == "ms" else None
        archs = []
        for sol in res.solutions:
            archs.append({
                "arch": arch_dict(table, sol.choice, objective=sol.objective, budget_ms=budget_ms),
                "ops": list(sol.keys), "objective": sol.objective,
                "predicted_loss": (None if table.teacher_loss is None
                                   else float(table.teacher_loss) + sol.objective),
                "predicted_ms": {n: sol.costs[n] for n in latency},
                "costs": dict(sol.costs), "status": sol.status, "dual_bound": sol.dual_bound,
                "gap": sol.gap, "time_s": sol.time_s, "bound_source": sol.bound_source})
        out_targets.append({
            "budgets": {b.table: {"given": b.label(), "limit": res.limits[b.table]}
                        for b in budgets},
            "found": len(res.solutions), "max_gap": res.max_gap if res.solutions else None,
            "time_s": res.time_s, "warnings": list(res.warnings), "architectures": archs})
    return {
        "schema": REPORT_SCHEMA, "teacher": table.teacher, "pool": table.pool,
        "scores": str(scores), "luts": dict(zip(table.table_names, map(str, luts))),
        "k": k, "overlap": overlap,
        "max_shared_layers": max_shared_layers(table.n_layers, overlap),
        "single_shot": single_shot, "gap": gap, "time_limit_s": time_limit,
        "strategy": sweep.strategy, "teacher_loss": table.teacher_loss,
        "targets": out_targets,
        "pareto": [{"cost": c, "objective": o} for c, o in sweep.front()],
    }

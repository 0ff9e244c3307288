"""Solver benchmark: LANA's integer program on the paper's EfficientNet-B6 size (46 layers x 197 ops).

Synthetic tables (lana.search.synthetic): "paper" (faster ops lose more, identity cheap and costly,
teacher op 0) and "uncorrelated" (uniform scores independent of latency).  For each case it times
one solve (K=1, table to certified solution) and K=100 diverse solutions at overlap 0.7 within a
10 s time budget (the target), and prints the certified gaps and where the time goes.  Optional: a
budget sweep cold vs. warm-started (--sweep, --sweep-case), random / evolutionary search given the
same time (--baselines, --baselines-case), and one uncorrelated solve proved optimal to show how far the LP bound is
from the optimum, beside a Lagrangian bound that keeps the most binding overlap rows exact
(--prove N; with --prove-gap 0.005, how long HiGHS alone needs to certify the target gap there).
On a machine shared with other work, --cpu-clock counts this process's CPU time instead of wall
time (for limits and figures alike).

    python benchmarks/solver.py                 # figures as text
    python benchmarks/solver.py --json          # {"n_layers", "n_ops", "single_solve_s", ...}
    python benchmarks/solver.py --cases '' --prove 60 --time-limit 0.1   # about a minute
    python benchmarks/solver.py --cases '' --prove 30 --prove-gap 0.005 --cpu-clock
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _case(name: str, args) -> dict:
    from lana.search import Budget, search
    from lana.search.synthetic import synthetic_table

    table = synthetic_table(args.layers, args.ops, seed=args.seed,
                            correlated=(name == "paper"))
    budget = [Budget("gpu", args.budget)]
    clock = _clock(args)
    opts = dict(gap=args.gap, time_limit=args.time_limit, threads=args.threads, clock=clock)
    t0 = clock()
    one = search(table, budget, k=1, **opts)
    opts["time_budget"] = args.time_budget
    single = clock() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = clock()
        many = search(table, budget, k=args.k, overlap=args.overlap, **opts)
        total = clock() - t0
    gaps = [s.gap for s in many.solutions]
    times = sorted(s.time_s for s in many.solutions)
    return {
        "case": name, "budget": args.budget, "single_solve_s": single,
        "single_gap": one.solutions[0].gap, "single_objective": one.solutions[0].objective,
        "k": args.k, "found": len(many.solutions), "k_total_s": total,
        "k_max_gap": max(gaps), "k_mean_gap": sum(gaps) / len(gaps),
        "k_gap_p50": sorted(gaps)[len(gaps) // 2], "k_gap_p90": sorted(gaps)[(9 * len(gaps)) // 10],
        "k_mean_objective": sum(s.objective for s in many.solutions) / len(many.solutions),
        "k_over_gap": sum(g > args.gap + 1e-12 for g in gaps),
        "k_solve_median_s": times[len(times) // 2], "k_solve_max_s": times[-1],
        "statuses": {s: sum(x.status == s for x in many.solutions)
                     for s in sorted({x.status for x in many.solutions})},
        "breakdown_s": {k: round(v, 4) for k, v in many.timings.items()},
        "stats": many.stats, "objective_first": many.solutions[0].objective,
        "objective_last": many.solutions[-1].objective,
    }


def _clock(args):
    """Wall time, or with --cpu-clock this process's CPU time (time limits count it too)."""
    return time.process_time if args.cpu_clock else time.perf_counter


def _naive(args) -> dict:
    """The plain loop for scale: one HiGHS MIP per solution on the full model (every op a binary),
    an overlap row added after each, same gap and time limit, no pruning, no incumbents."""
    import highspy
    import numpy as np

    from lana.search import Budget
    from lana.search.synthetic import synthetic_table

    table = synthetic_table(args.layers, args.ops, seed=args.seed)
    n, m = table.n_layers, table.n_ops[0]
    limit = Budget("gpu", args.budget).resolve(table) - table.fixed["gpu"]
    score, cost = np.concatenate(table.scores), np.concatenate(table.costs["gpu"])
    h = highspy.Highs()
    for name, value in (("output_flag", False), ("threads", args.threads),
                        ("mip_rel_gap", args.gap), ("time_limit", args.time_limit)):
        h.setOptionValue(name, value)
    nv, inf = n * m, highspy.kHighsInf
    idx = np.arange(nv, dtype=np.int32)
    h.addVars(nv, np.zeros(nv), np.ones(nv))
    h.changeColsCost(nv, idx, score)
    h.changeColsIntegrality(nv, idx, np.full(nv, highspy.HighsVarType.kInteger))
    for i in range(n):
        h.addRow(1, 1, m, idx[i * m:(i + 1) * m], np.ones(m))
    h.addRow(-inf, limit, nv, idx, cost)
    shared = int(np.floor(args.overlap * n + 1e-9))
    times, gaps, limited = [], [], 0
    for _ in range(args.naive):
        t0 = time.perf_counter()
        h.run()
        times.append(time.perf_counter() - t0)
        info = h.getInfo()
        gaps.append(info.mip_gap)
        limited += h.getModelStatus() == highspy.HighsModelStatus.kTimeLimit
        choice = np.asarray(h.getSolution().col_value).reshape(n, m).argmax(axis=1)
        h.addRow(-inf, shared, n, (np.arange(n) * m + choice).astype(np.int32), np.ones(n))
    return {"solves": args.naive, "total_s": sum(times), "mean_s": sum(times) / len(times),
            "max_s": max(times), "max_gap": max(gaps), "time_limited": limited}


def _sweep(args) -> dict:
    """Many budgets in one call, cold (every target from scratch) against warm-started from the
    neighbouring target's architectures (top-down and bottom-up), in the same run.  Each strategy
    gets its own copy of the table, so that none inherits another's cached dominance relation."""
    from lana.search import Budget
    from lana.search.budget import parse_budgets
    from lana.search.sweep import search_many
    from lana.search.synthetic import synthetic_table

    budgets = parse_budgets(args.sweep)
    targets = [[Budget("gpu", b)] for b in budgets]
    out = {"budgets": args.sweep, "case": args.sweep_case, "k": args.sweep_k}
    for strategy in ("cold", "top-down", "bottom-up"):
        table = synthetic_table(args.layers, args.ops, seed=args.seed,
                                correlated=args.sweep_case == "paper")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = search_many(table, targets, args.sweep_k, args.overlap, strategy=strategy,
                              gap=args.gap, time_limit=args.time_limit, threads=args.threads,
                              clock=_clock(args))
        sols = [s for r in res.results for s in r.solutions]
        out[f"{strategy}_s"] = res.time_s
        out[f"{strategy}_max_gap"] = max(s.gap for s in sols)
        out[f"{strategy}_mean_gap"] = sum(s.gap for s in sols) / len(sols)
        out[f"{strategy}_mean_objective"] = sum(s.objective for s in sols) / len(sols)
        out[f"{strategy}_lp_certified"] = sum(r.stats["lp_only_solves"] for r in res.results)
        out[f"{strategy}_solves"] = len(sols)
        phases: dict[str, float] = {}
        for r in res.results:
            for name, value in r.timings.items():
                phases[name] = phases.get(name, 0.0) + value
        out[f"{strategy}_breakdown_s"] = {k: round(v, 4) for k, v in phases.items()}
    for strategy in ("top-down", "bottom-up"):
        out[f"{strategy}_saving"] = 1 - out[f"{strategy}_s"] / out["cold_s"]
        out[f"{strategy}_objective_change"] = (out[f"{strategy}_mean_objective"]
                                               / out["cold_mean_objective"] - 1)
    return out


def _prove(args) -> dict:
    """How far the LP bound is from the true optimum at solve N of the uncorrelated case: run the
    first N solves as configured, then solve the (N+1)-th problem (those N architectures excluded)
    to proven optimality with HiGHS on the whole kept model, from the search's own incumbent.
    (OPT - LP) / OPT is the smallest gap any incumbent can be certified at by the LP bound."""
    import numpy as np

    from lana.search import Budget, search
    from lana.search.engine import Engine
    from lana.search.solver import max_shared_layers, resolve_limits
    from lana.search.synthetic import synthetic_table

    table = synthetic_table(args.layers, args.ops, seed=args.seed, correlated=False)
    budget = [Budget("gpu", args.budget)]
    clock = _clock(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = search(table, budget, k=args.prove + 1, overlap=args.overlap, gap=args.gap,
                     time_limit=args.time_limit, threads=args.threads, clock=clock)
    found = run.solutions[args.prove]
    engine = Engine(table, resolve_limits(table, budget),
                    max_shared_layers(table.n_layers, args.overlap), gap=0.0,
                    time_limit=args.prove_limit, threads=args.threads, seed=args.seed)
    for choice in run.choices()[:args.prove]:
        engine.chosen.append(np.asarray(choice))
        engine._extend()
    lp = engine.lp.solve()
    kept_rows = {keep: _kept_rows_bound(engine, keep, found.choice) for keep in (1, 2, 3)}
    t0 = clock()
    raw = engine.mip.solve(incumbent=found.choice, time_limit=args.prove_limit, gap=args.prove_gap)
    best = min(found.objective, raw.objective if raw.choice is not None else np.inf)
    proven = raw.status == "optimal" and args.prove_gap == 0
    return {"solve": args.prove, "prove_gap": args.prove_gap, "lp_bound": lp.bound,
            "kept_rows_bound": kept_rows,
            "search_objective": found.objective,
            "search_gap": found.gap, "highs_status": raw.status, "highs_objective": best,
            "highs_bound": raw.bound, "highs_nodes": raw.nodes, "highs_s": clock() - t0,
            "highs_gap": (best - raw.bound) / best if np.isfinite(raw.bound) else None,
            "optimum_lp_gap": (best - lp.bound) / best if proven else None,
            "search_excess": found.objective / best - 1}


def _pct(value) -> str:
    return "none" if value is None else f"{value:.3%}"


def _kept_rows_bound(engine, keep: int, start) -> float:
    """The Lagrangian bound with the ``keep`` most binding overlap rows (largest LP duals) kept
    exact and the budgets and other overlap rows dualised.  Computed by Dantzig-Wolfe column
    generation: columns are whole architectures, priced by a dynamic program over the layers whose
    state counts the layers shared with each kept earlier solution.  Converged, it is never below
    the LP bound; how far above shows whether keeping such rows exact could certify what the LP
    cannot.
    ``engine.lp`` must hold the LP optimum of the solve; ``start`` is a feasible architecture."""
    import highspy
    import numpy as np

    d, cap = engine.dense, engine.max_shared
    n, t = d.n, len(d.limit)
    prev = np.array(engine.chosen, dtype=np.int64)
    mu = np.maximum(-np.asarray(engine.lp.h.getSolution().row_dual)[n + t:], 0.0)
    kept_rows = np.argsort(-mu)[:keep]
    rest = np.setdiff1d(np.arange(len(prev)), kept_rows)
    allowed = engine.dominance.kept & d.valid
    layers = np.arange(n)
    ops_of = [np.flatnonzero(allowed[i]) for i in range(n)]
    # per layer and op: which kept earlier solutions use it (the DP's step in each count)
    steps = [(prev[kept_rows][:, [i]] == ops_of[i][None, :]).astype(np.int64) for i in range(n)]

    def price(lam, nu):
        g = d.score + np.tensordot(lam, d.cost, 1)
        np.add.at(g, (np.tile(layers, rest.size), prev[rest].ravel()), np.repeat(nu, n))
        shape = (cap + 1,) * keep
        value = np.full(shape, np.inf)
        value[(0,) * keep] = 0.0
        back = []
        for i in range(n):
            best = {}
            for col, op in enumerate(ops_of[i]):
                step = tuple(steps[i][:, col])
                if g[i, op] < best.get(step, (np.inf, -1))[0]:
                    best[step] = (g[i, op], op)
            new, arg = np.full(shape, np.inf), np.full(shape, -1)
            for step, (val, op) in best.items():
                src = value[tuple(slice(0, cap + 1 - k) for k in step)] + val
                dst = tuple(slice(k, cap + 1) for k in step)
                better = src < new[dst]
                new[dst] = np.where(better, src, new[dst])
                arg[dst] = np.where(better, op, arg[dst])
            back.append(arg)
            value = new
        state = np.unravel_index(int(np.argmin(value)), shape)
        low, x = float(value[state]), np.zeros(n, dtype=np.int64)
        for i in range(n - 1, -1, -1):
            x[i] = back[i][state]
            state = tuple(s - int(prev[j, i] == x[i]) for s, j in zip(state, kept_rows))
        return low, x

    h, inf = highspy.Highs(), highspy.kHighsInf
    h.setOptionValue("output_flag", False)
    m = 1 + t + rest.size
    h.addRows(m, np.r_[1.0, np.full(m - 1, -inf)], np.r_[1.0, d.limit, np.full(rest.size, cap)],
              0, np.zeros(m, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0))

    def add(x):
        column = np.r_[1.0, d.cost[:, layers, x].sum(axis=1), (prev[rest] == x).sum(axis=1)]
        h.addCol(float(d.score[layers, x].sum()), 0.0, inf, m, np.arange(m, dtype=np.int32), column)

    add(np.asarray(start))
    bound = -np.inf
    for _ in range(2000):
        h.run()
        dual = np.asarray(h.getSolution().row_dual)
        low, x = price(np.maximum(-dual[1:1 + t], 0.0), np.maximum(-dual[1 + t:], 0.0))
        reduced = low - dual[0]
        bound = max(bound, h.getInfo().objective_function_value + reduced)
        if reduced > -1e-12:
            break
        add(x)
    return float(bound)


def _baselines(args) -> dict:
    """Paper Table 5 in miniature: random sampling within the budget and aging evolution, each
    given the time the integer program took for its K diverse architectures."""
    from lana.search import Budget, search
    from lana.search.baselines import evolutionary_search, random_search
    from lana.search.synthetic import synthetic_table

    table = synthetic_table(args.layers, args.ops, seed=args.seed,
                            correlated=args.baselines_case == "paper")
    budget = [Budget("gpu", args.budget)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        ilp = search(table, budget, k=args.k, overlap=args.overlap, gap=args.gap,
                     time_limit=args.time_limit)
        t = time.perf_counter() - t0
    rnd = random_search(table, budget, time_s=t, seed=args.seed)
    evo = evolutionary_search(table, budget, time_s=t, seed=args.seed, top=args.k)
    objs = sorted(s.objective for s in ilp.solutions)
    return {"case": args.baselines_case, "time_s": t, "ilp_best": objs[0], "ilp_kth": objs[-1],
            "ilp_bound": ilp.best.dual_bound,
            "random_best": rnd.best, "random_samples": rnd.evaluated,
            "evolution_best": evo.best, "evolution_evaluated": evo.evaluated}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=46)
    p.add_argument("--ops", type=int, default=197)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--overlap", type=float, default=0.7)
    p.add_argument("--budget", default="0.5x")
    p.add_argument("--gap", type=float, default=0.005)
    p.add_argument("--time-limit", type=float, default=1.0, help="seconds per solve")
    p.add_argument("--time-budget", type=float, default=10.0,
                   help="seconds for all K solves together (shared among the solves left; the "
                        "target is K=100 in 10 s); 0 for none")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", default="paper,uncorrelated")
    p.add_argument("--sweep", default="", help="e.g. 0.3x:0.7x:0.1x (cold vs. warm-started)")
    p.add_argument("--sweep-k", type=int, default=10)
    p.add_argument("--sweep-case", default="paper", choices=("paper", "uncorrelated"))
    p.add_argument("--baselines", action="store_true", help="random and evolutionary search")
    p.add_argument("--baselines-case", default="paper", choices=("paper", "uncorrelated"))
    p.add_argument("--naive", type=int, default=0, metavar="K",
                   help="also time K solves of the plain one-MIP-per-solution loop (slow)")
    p.add_argument("--prove", type=int, default=None, metavar="N",
                   help="solve the uncorrelated case's solve N to proven optimality (slow)")
    p.add_argument("--prove-limit", type=float, default=600.0, help="seconds for --prove")
    p.add_argument("--prove-gap", type=float, default=0.0, metavar="G",
                   help="stop --prove once HiGHS certifies this relative gap (e.g. 0.005: how long "
                        "HiGHS alone needs to certify the target gap at solve N)")
    p.add_argument("--cpu-clock", action="store_true",
                   help="measure and limit time as this process's CPU seconds (shared machines)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    unknown = set(filter(None, args.cases.split(","))) - {"paper", "uncorrelated"}
    if unknown:
        p.error(f"unknown case {sorted(unknown)[0]!r}: --cases takes paper, uncorrelated or both "
                "(comma-separated), or '' for none")
    if args.time_budget is not None and args.time_budget <= 0:
        args.time_budget = None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    cases = {name: _case(name, args) for name in args.cases.split(",") if name}
    first = next(iter(cases.values()), {})  # --cases '' runs only --sweep, --prove, ...
    out = {"n_layers": args.layers, "n_ops": args.ops, "single_solve_s": first.get("single_solve_s"),
           "k100_total_s": first.get("k_total_s"), "k100_max_gap": first.get("k_max_gap"),
           "k": args.k, "overlap": args.overlap, "gap": args.gap, "time_limit_s": args.time_limit,
           "time_budget_s": args.time_budget, "clock": "cpu" if args.cpu_clock else "wall",
           "load_average": load, "cases": cases}
    if args.sweep:
        out["sweep"] = _sweep(args)
    if args.baselines:
        out["baselines"] = _baselines(args)
    if args.prove is not None:
        out["prove"] = _prove(args)
    if args.naive:
        out["naive"] = _naive(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"N={args.layers} layers x M={args.ops} ops, K={args.k}, overlap {args.overlap}, "
          f"gap {args.gap:.2%}, {args.time_limit:g} s/solve limit, time budget "
          f"{args.time_budget} s, {'CPU' if args.cpu_clock else 'wall'} clock, load average {load}")
    for c in cases.values():
        print(f"\n[{c['case']}] budget {c['budget']}")
        print(f"  one solve:        {c['single_solve_s']:.3f} s (gap {c['single_gap']:.3%})")
        print(f"  K={c['k']} solves:    {c['k_total_s']:.2f} s total, median {c['k_solve_median_s']:.3f}"
              f" s, max {c['k_solve_max_s']:.3f} s; found {c['found']}")
        print(f"  certified gaps:   max {c['k_max_gap']:.3%}, mean {c['k_mean_gap']:.3%}, median "
              f"{c['k_gap_p50']:.3%}, 90th pct {c['k_gap_p90']:.3%}, {c['k_over_gap']} over "
              f"{args.gap:.1%}; statuses {c['statuses']}")
        print(f"  objectives:       first {c['objective_first']:.6f}, last "
              f"{c['objective_last']:.6f}, mean {c['k_mean_objective']:.6f}")
        print(f"  time breakdown:   {c['breakdown_s']}")
        print(f"  model:            {c['stats']}")
    if "sweep" in out:
        s = out["sweep"]
        print(f"\n[sweep {s['budgets']}, {s['case']} case, K={s['k']}]")
        for strategy in ("cold", "top-down", "bottom-up"):
            saved = "" if strategy == "cold" else (
                f" ({s[f'{strategy}_saving']:+.1%} time saved, mean objective "
                f"{s[f'{strategy}_objective_change']:+.3%})")
            print(f"  {strategy:9s} {s[f'{strategy}_s']:.3f} s{saved}; mean objective "
                  f"{s[f'{strategy}_mean_objective']:.6f}, gap max {s[f'{strategy}_max_gap']:.3%} "
                  f"mean {s[f'{strategy}_mean_gap']:.3%}, LP-certified "
                  f"{s[f'{strategy}_lp_certified']}/{s[f'{strategy}_solves']}; "
                  f"{s[f'{strategy}_breakdown_s']}")
    if "baselines" in out:
        b = out["baselines"]
        print(f"\n[baselines, {b['case']} case, {b['time_s']:.2f} s each] ILP: best {b['ilp_best']:.5f} "
              f"(bound {b['ilp_bound']:.5f}), {args.k}th {b['ilp_kth']:.5f}; random: best "
              f"{b['random_best']:.5f} of {b['random_samples']} samples; evolution: best "
              f"{b['evolution_best']:.5f} after {b['evolution_evaluated']} children")
    if "prove" in out:
        v = out["prove"]
        lp_gap = ("not proven" if v["optimum_lp_gap"] is None
                  else f"{v['optimum_lp_gap']:.3%} (the least gap the LP bound can certify)")
        what = "proved" if v["prove_gap"] == 0 else f"certified to {v['prove_gap']:.2%} by HiGHS"
        print(f"\n[uncorrelated, solve {v['solve']} {what}] LP bound {v['lp_bound']:.7f}; search "
              f"{v['search_objective']:.7f} (gap {v['search_gap']:.3%}); HiGHS to gap "
              f"{v['prove_gap']:.2%}: {v['highs_status']} {v['highs_objective']:.7f}, bound "
              f"{v['highs_bound']:.7f} (gap {_pct(v['highs_gap'])}), {v['highs_nodes']} nodes, "
              f"{v['highs_s']:.1f} s; optimum vs LP {lp_gap}; search objective "
              f"{v['search_excess']:+.3%} over the best known")
        best = v["highs_objective"]
        kept = "; ".join(f"{k} kept {(b - v['lp_bound']) / best:+.4%}"
                         for k, b in v["kept_rows_bound"].items())
        print(f"  overlap rows kept exact (Dantzig-Wolfe bound over the LP, as a share of the best "
              f"known objective): {kept}")
    if "naive" in out:
        v = out["naive"]
        print(f"\n[plain loop, paper case, first {v['solves']} solves] {v['total_s']:.2f} s "
              f"({v['mean_s']:.3f} s/solve, max {v['max_s']:.2f} s), max gap {v['max_gap']:.3%}, "
              f"{v['time_limited']} stopped by the time limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())

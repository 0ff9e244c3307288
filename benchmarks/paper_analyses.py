"""The LANA paper's analyses, reproduced on the demo teacher with the small pool.

1. Linear proxy (paper Fig. 4a): ILP-optimal architectures at ``--n-arch`` budgets; Kendall tau
   between the ILP objective (sum of op scores, Eq. 3) and the measured training loss of the whole
   architecture (pretrained ops, batch norm on batch statistics).  Paper: 0.966.  A PNG of
   objective against loss is written to ``--plot``.
2. ILP vs. random search (paper Table 5): at ``--budget`` (0.5x), the best of K=10 ILP solutions
   against the best of ``--random`` random feasible architectures, by loss before fine-tuning and
   by held-out top-1 after a short fine-tune.
3. Single-shot LANA (paper Table 7): the pool {teacher, identity} (no pretraining at all) against
   the small pool at a budget single-shot can reach, both fine-tuned the same way.
4. Layer-wise pretraining ablation: the ILP architecture of (2) fine-tuned from its distilled ops
   against the same architecture fine-tuned from randomly initialised ops.

Latency comes from ``--lut FILE``, else the repository's ``luts/cpu-ort/demo.json`` when present,
else (or with ``--flops``) from FLOP counts.  Stage outputs go to ``--run`` and are reused on a
second run.

    python benchmarks/paper_analyses.py                    # tables
    python benchmarks/paper_analyses.py --json             # one JSON object on stdout
    python benchmarks/paper_analyses.py --run runs/paper --lut luts/cpu-ort/demo.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a script from a checkout: make `lana` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_common import (cost_table, random_architecture, score_matrix, solve_ilp,  # noqa: E402
                             timed, write_search)

PAPER_TAU = 0.966


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two equally long sequences."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


class Context:
    """Teacher, pools, data and run directory shared by the analyses."""

    def __init__(self, args: argparse.Namespace, log) -> None:
        import torch

        from lana.distributed import resolve_device
        from lana.pool import build_pool
        from lana.pretrain import load_splits, open_teacher

        self.args, self.log = args, log
        self.run = Path(args.run or tempfile.mkdtemp(prefix="lana-paper-"))
        self.run.mkdir(parents=True, exist_ok=True)
        self.teacher = open_teacher("demo")
        self.device = resolve_device(None)
        self.splits = load_splits(None, self.teacher)
        self.eval_split = self.splits.train.plain().subset(args.images, 0)
        self.pools = {p: build_pool(self.teacher, p) for p in ("small", "single-shot")}
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.torch = torch

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with timed(self.times, name, self.cpu):
            yield
        self.log(f"  {name}: {self.times[name]:.1f} s ({self.cpu[name]:.1f} s CPU)")

    def measure(self, ops: list[str], pool: str) -> tuple[float, float]:
        from lana.assemble import Architecture
        from lana.select import build_candidate, measure_loss

        arch = Architecture("demo", pool, tuple(ops))
        model = build_candidate(arch, self.teacher, self.run / "pretrain" if pool == "small"
                                else None, pool)
        return measure_loss(model, self.eval_split, batch_size=128, device=self.device)

    def finetune(self, name: str, ops: list[str], pool: str, pretrained: bool = True) -> float:
        from lana.finetune import finetune

        arch = self.run / f"{name}.arch.json"
        arch.write_text(json.dumps({"schema": "lana.arch/1", "teacher": "demo", "pool": pool,
                                    "ops": ops}))
        out = self.run / f"ft-{name}"
        m = finetune(arch, self.teacher, self.run / "pretrain" if pretrained and pool == "small"
                     else None, None, out, epochs=self.args.ft_epochs,
                     resume=(out / "checkpoint.pt").exists(), progress=False)
        return m["final_top1"]


def run(args: argparse.Namespace, log) -> dict[str, Any]:
    from lana.pretrain import pretrain

    c = Context(args, log)
    c.torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"run": str(c.run), "threads": args.threads}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log("preparing: pretrain and score the small pool, score the single-shot pool")
        with c.stage("pretrain"):
            pretrain(c.teacher, "small", None, c.run / "pretrain", progress=False,
                     resume=(c.run / "pretrain" / "pretrain.json").exists())
        with c.stage("score"):
            scores = {"small": _scores(c, "small", c.run / "pretrain"),
                      "single-shot": _scores(c, "single-shot", None)}
        costs = {p: cost_table(c.teacher, c.pools[p], args.lut) for p in c.pools}
        teacher_cost = costs["small"].teacher_total()
        out["cost_source"], out["cost_unit"] = costs["small"].source, costs["small"].unit
        out["teacher_cost"] = teacher_cost

        # 1. Linear proxy: objective vs measured loss of ILP-optimal architectures.
        log("1. ILP objective vs measured loss")
        with c.stage("kendall"):
            a = score_matrix(scores["small"])
            cheapest = costs["small"].fixed + sum(min(l.values()) for l in costs["small"].layers)
            lo = cheapest / teacher_cost + 0.01
            seen: dict[tuple, float] = {}
            for k in range(args.n_arch):
                ratio = lo + (1.0 - lo) * k / max(1, args.n_arch - 1)
                for ops, obj in solve_ilp(a, costs["small"], ratio * teacher_cost, k=1):
                    seen.setdefault(tuple(ops), obj)
            points = []
            for ops, obj in seen.items():
                loss, top1 = c.measure(list(ops), "small")
                points.append({"objective": obj, "loss": loss, "top1": top1,
                               "cost_ratio": costs["small"].total(ops) / teacher_cost})
        tau = kendall_tau([p["objective"] for p in points], [p["loss"] for p in points])
        out["kendall"] = {"tau": tau, "paper_tau": PAPER_TAU, "architectures": len(points),
                          "budgets": args.n_arch, "points": points}
        plot = c.run / "objective_vs_loss.png" if args.plot is None else args.plot
        if plot:
            _plot(points, tau, Path(plot))
            out["kendall"]["plot"] = str(plot)

        # 2. ILP vs random at the budget.
        log(f"2. ILP vs best of {args.random} random architectures at {args.budget}x")
        budget = args.budget * teacher_cost
        with c.stage("ilp_vs_random"):
            sols = solve_ilp(a, costs["small"], budget, k=10)
            search = write_search(c.run / "search.json", "demo", "small",
                                  [l.name for l in c.teacher.layers], sols, costs["small"],
                                  budget, f"{args.budget:g}x")
            ilp_rows = [(list(ops), *c.measure(list(ops), "small")) for ops, _ in sols]
            ilp_ops, ilp_loss, ilp_fit = min(ilp_rows, key=lambda r: r[1])
            rng = random.Random(0)
            rand_rows = []
            for _ in range(args.random):
                ops = random_architecture(costs["small"], budget, rng)
                if ops is not None:
                    rand_rows.append((ops, *c.measure(ops, "small")))
            rnd_ops, rnd_loss, rnd_fit = min(rand_rows, key=lambda r: r[1])
        with c.stage("ilp_vs_random_finetune"):
            ilp_top1 = c.finetune("ilp", ilp_ops, "small")
            rnd_top1 = c.finetune("random", rnd_ops, "small")
        out["ilp_vs_random"] = {
            "budget_ratio": args.budget, "search_file": str(search),
            "ilp": {"solutions": len(sols), "loss_before": ilp_loss, "train_top1_before":
                    ilp_fit, "val_top1_after": ilp_top1,
                    "cost_ratio": costs["small"].total(ilp_ops) / teacher_cost},
            "random": {"sampled": len(rand_rows), "loss_before": rnd_loss,
                       "train_top1_before": rnd_fit, "val_top1_after": rnd_top1,
                       "median_loss_before": sorted(r[1] for r in rand_rows)[len(rand_rows) // 2],
                       "cost_ratio": costs["small"].total(rnd_ops) / teacher_cost},
            "finetune_epochs": args.ft_epochs}

        # 3. Single-shot vs small pool.
        ss_costs = costs["single-shot"]
        ss_min = (ss_costs.fixed + sum(min(l.values()) for l in ss_costs.layers)) / teacher_cost
        ratio = max(args.single_shot_budget, round(ss_min + 0.02, 3))
        log(f"3. single-shot vs small pool at {ratio:g}x")
        with c.stage("single_shot"):
            rows = {}
            for pool in ("single-shot", "small"):
                sol = solve_ilp(score_matrix(scores[pool]), costs[pool], ratio * teacher_cost,
                                k=5)
                best = min(((list(o), *c.measure(list(o), pool)) for o, _ in sol),
                           key=lambda r: r[1])
                top1 = c.finetune(f"{pool}-{ratio:g}", best[0], pool)
                rows[pool] = {"loss_before": best[1], "val_top1_after": top1,
                              "cost_ratio": costs[pool].total(best[0]) / teacher_cost,
                              "replaced_layers": sum(1 for k in best[0]
                                                     if not k.startswith("teacher:"))}
        out["single_shot"] = {"budget_ratio": ratio, "single_shot_min_ratio": ss_min, **rows,
                              "finetune_epochs": args.ft_epochs}

        # 4. Layer-wise pretraining vs none, same architecture and schedule.
        log("4. fine-tuning from distilled ops vs from random ops")
        with c.stage("no_pretraining"):
            none_top1 = c.finetune("ilp-no-pretraining", ilp_ops, "small", pretrained=False)
            none_loss = _loss_random_init(c, ilp_ops)
        out["pretraining_ablation"] = {
            "layerwise": {"loss_before": ilp_loss, "val_top1_after": ilp_top1},
            "none": {"loss_before": none_loss, "val_top1_after": none_top1},
            "finetune_epochs": args.ft_epochs}
    out["teacher_top1"] = _teacher_top1(c)
    out["seconds"], out["cpu_seconds"] = c.times, c.cpu
    return out


def _scores(c: Context, pool: str, pretrain: Path | None) -> dict:
    """The scores of ``pool``: reused from the run directory when there (``scores.json`` is what
    benchmarks/training_pipeline.py writes), else computed."""
    from lana.score import ScoreError, read_scores, score

    for name in (f"scores-{pool}.json", "scores.json"):
        try:
            return read_scores(c.run / name, teacher=c.teacher, pool=pool)
        except ScoreError:
            continue
    return score(pretrain, c.teacher, pool, None, c.run / f"scores-{pool}.json", progress=False)


def _loss_random_init(c: Context, ops: list[str]) -> float:
    from lana.assemble import Architecture
    from lana.select import build_candidate, measure_loss

    model = build_candidate(Architecture("demo", "small", tuple(ops)), c.teacher, None, "small")
    return measure_loss(model, c.eval_split, batch_size=128, device=c.device)[0]


def _teacher_top1(c: Context) -> float:
    from lana.finetune import top1

    return top1(c.teacher.model, c.splits.val, c.device)


def _plot(points: list[dict], tau: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    sc = ax.scatter([p["objective"] for p in points], [p["loss"] for p in points],
                    c=[p["cost_ratio"] for p in points], cmap="viridis", s=22)
    fig.colorbar(sc, ax=ax, label="predicted cost / teacher")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("ILP objective (sum of op scores, symlog)")
    ax.set_ylabel("measured training loss (pretrained ops)")
    ax.set_title(f"demo teacher, small pool\nKendall tau = {tau:.3f} (paper {PAPER_TAU})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="run directory, reused when run again (default: a new temp one)")
    p.add_argument("--lut", help="LUT of the demo teacher's small pool (default: "
                   "luts/cpu-ort/demo.json when present, else FLOP counts)")
    p.add_argument("--flops", action="store_true", help="FLOP counts instead of a LUT")
    p.add_argument("--n-arch", type=int, default=50, help="budgets for the Kendall tau (50)")
    p.add_argument("--random", type=int, default=100, help="random architectures (100)")
    p.add_argument("--budget", type=float, default=0.5, help="budget ratio of 2. and 4. (0.5)")
    p.add_argument("--single-shot-budget", type=float, default=0.7,
                   help="budget ratio of 3. (0.7, raised to what single-shot can reach)")
    p.add_argument("--ft-epochs", type=int, default=3, help="short fine-tunes' epochs (3)")
    p.add_argument("--images", type=int, default=300, help="training images per loss (300)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    p.add_argument("--plot", help="PNG of objective vs loss (default: RUN/objective_vs_loss.png;"
                   " '' for none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    shipped = Path(__file__).resolve().parent.parent / "luts" / "cpu-ort" / "demo.json"
    if args.flops:
        args.lut = None
    elif args.lut is None and shipped.is_file():
        args.lut = str(shipped)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    start = time.perf_counter()
    result = run(args, log)
    result["total_s"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    k = result["kendall"]
    print(f"\n1. Kendall tau (ILP objective vs measured loss, {k['architectures']} architectures):"
          f" {k['tau']:.3f}  (paper {PAPER_TAU})" + (f"  plot: {k['plot']}" if "plot" in k else ""))
    r = result["ilp_vs_random"]
    print(f"2. at {r['budget_ratio']:g}x, {r['finetune_epochs']}-epoch fine-tune:")
    for name in ("ilp", "random"):
        row = r[name]
        print(f"   {name:<7} loss before {row['loss_before']:.4f}  train top-1 before "
              f"{100 * row['train_top1_before']:.2f}%  val top-1 after "
              f"{100 * row['val_top1_after']:.2f}%  (cost {row['cost_ratio']:.2f}x)")
    s = result["single_shot"]
    print(f"3. single-shot vs small pool at {s['budget_ratio']:g}x:")
    for name in ("single-shot", "small"):
        row = s[name]
        print(f"   {name:<11} loss before {row['loss_before']:.4f}  val top-1 after "
              f"{100 * row['val_top1_after']:.2f}%  ({row['replaced_layers']} layers replaced, "
              f"cost {row['cost_ratio']:.2f}x)")
    a = result["pretraining_ablation"]
    print(f"4. same architecture, {a['finetune_epochs']}-epoch fine-tune: layer-wise pretraining "
          f"{100 * a['layerwise']['val_top1_after']:.2f}% vs none "
          f"{100 * a['none']['val_top1_after']:.2f}% (loss before "
          f"{a['layerwise']['loss_before']:.3f} vs {a['none']['loss_before']:.3f})")
    print(f"teacher val top-1 {100 * result['teacher_top1']:.2f}%; costs from "
          f"{result['cost_source']}; run {result['run']}; {result['total_s']:.0f} s in all "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

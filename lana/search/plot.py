"""The Pareto front of a budget sweep as a PNG (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from lana.search.sweep import SweepResult


def plot_front(sweep: SweepResult, path: str | Path, *, table: str | None = None,
               title: str | None = None) -> Path:
    """Every architecture (dots) and each target's best (line) as cost on ``table`` vs. objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = table or sweep.targets[0][0].table
    unit = sweep.table.units.get(name) or ""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    xs = [s.costs[name] for r in sweep.results for s in r.solutions]
    ys = [s.objective for r in sweep.results for s in r.solutions]
    front = sweep.front(name)
    if front:  # hollow markers under the dots, so the architectures they mark stay visible
        ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:red", mfc="none",
                ms=9, zorder=1, label="best per budget")
    ax.scatter(xs, ys, s=8, alpha=0.5, color="tab:blue", zorder=2, label="all architectures")
    for r in sweep.results:
        if name in r.limits:
            ax.axvline(r.limits[name], color="grey", lw=0.6, ls=":")
    try:
        teacher = sweep.table.total(name, sweep.table.teacher_choice())
        ax.scatter([teacher], [0.0], marker="*", s=120, color="black", label="teacher", zorder=3)
    except Exception:  # noqa: BLE001 - a table without teacher ops just has no teacher marker
        pass
    ax.set_xlabel(f"predicted {name}" + (f" ({unit})" if unit else ""))
    ax.set_ylabel("predicted loss change (sum of scores)")
    ax.set_title(title or f"LANA search: {len(sweep.results)} budget(s), strategy {sweep.strategy}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from lana.atomic import save_figure

    path = Path(path)
    save_figure(fig, path)
    plt.close(fig)
    return path

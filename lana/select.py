"""Evaluate the K architectures a search found, with their pretrained ops, and keep the best.

The linear proxy of the search scores each op alone; this step measures each whole candidate (paper
§2.2, "candidate architecture evaluation"): every architecture is assembled from its distilled ops
and run on a few thousand training images, with batch norm in batch-statistics mode (the new ops
shift the feature distributions, so the running statistics the teacher kept no longer fit), and
the one with the lowest cross-entropy wins.  The ranking is printed as a table and the winner is
written as an architecture file (``lana.arch/1``) with a ``selection`` record::

    {"schema": "lana.arch/1", "teacher": ..., "pool": ..., "ops": [...], "layer_names": [...],
     "predicted_ms": {...}, "objective": ..., "budget_ms": ...,
     "selection": {"images": N, "batch_size": B, "loss": chosen loss, "top1": chosen top-1,
                   "teacher_loss": ..., "source": search file,
                   "ranking": [{"index": i in the search file, "loss", "top1", "objective",
                                "predicted_ms", "changed_layers"}, ...best first]}}

The search result is read by :func:`read_architectures`, which accepts a single architecture file
or a search result holding solutions per budget, however they are nested.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lana.defaults import (
    SELECT_IMAGES as DEFAULT_IMAGES,
    SELECT_BATCH_SIZE as DEFAULT_BATCH_SIZE,
)
from lana.distributed import Split, iter_batches, place, place_module, resolve_device
from lana.errors import LanaError, read_json_file, refuse_other_kind

if TYPE_CHECKING:
    from lana.assemble import Architecture
    from lana.teachers import Teacher


class SelectError(LanaError):
    """A search result or selection request that cannot be used."""


class SelectWarning(UserWarning):
    """A search result read with a default the user may not have meant (e.g. its first budget)."""


# ---------------------------------------------------------------------------------------------
# Reading search results


@dataclass(frozen=True)
class Candidate:
    """One architecture of a search result, with the budget it was found for."""

    arch: "Architecture"
    budget: str | None  # the budget's label in the file ("0.5x", "12.0", ...), if any
    index: int  # position among all solutions in the file


def _budget_label(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return f"{float(value):g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _budget_context(node: Mapping, ctx: dict) -> dict:
    """The budget a mapping describes, if any, over the one around it.

    Understood: scalar ``budget``/``budget_label``/``label`` and ``budget_ms``/``target_ms``
    fields, and a ``budgets`` mapping of tables to ``{"given": label, "limit": value}`` (the
    first table is the primary, latency budget).
    """
    here = dict(ctx)
    for key in ("label", "budget_label", "budget"):
        if key in node and not isinstance(node[key], (list, Mapping)) and node[key] is not None:
            here["budget"] = _budget_label(node[key])
    for key in ("target_ms", "budget_ms"):
        if _is_number(node.get(key)):
            here["budget_ms"] = float(node[key])
    budgets = node.get("budgets")
    if isinstance(budgets, Mapping) and budgets:
        first = next(iter(budgets.values()))
        if isinstance(first, Mapping):
            if first.get("given") is not None:
                here["budget"] = _budget_label(first["given"])
            if _is_number(first.get("limit")):
                here["budget_ms"] = float(first["limit"])
    return here


_CONTAINERS = ("solutions", "architectures", "archs", "results", "budgets", "candidates",
               "targets")


def _walk(node: Any, ctx: dict) -> Iterator[tuple[Mapping, dict]]:
    """Every mapping with an ``ops`` list of op keys, with the budget context around it."""
    if isinstance(node, Mapping):
        ops = node.get("ops")
        if isinstance(ops, list) and ops and all(isinstance(k, str) for k in ops):
            yield node, ctx
            return
        here = _budget_context(node, ctx)
        for key, value in node.items():
            if isinstance(value, (list, Mapping)):
                sub = here
                # {"0.5x": [...], "0.7x": [...]}: a mapping keyed by budget labels.
                if isinstance(value, list) and key not in _CONTAINERS and key != "pareto":
                    sub = {**here, "budget": str(key)}
                yield from _walk(value, sub)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, ctx)


def read_search_result(path: str | Path) -> Any:
    """The parsed JSON of a search result (or architecture file); one-line errors when missing or
    not JSON."""
    return read_json_file(path, SelectError, "search result",
                          missing=f"write it with lana search --out {path}",
                          invalid="re-run lana search")


def read_architectures(path: str | Path, budget: str | float | None = None) -> list[Candidate]:
    """The architectures in a search result or architecture file, for one budget.

    A search result may hold solutions for several budgets: ``budget`` picks one, matched against
    the file's budget labels (``"0.5x"``) or budgets in ms (``12.5``); without it the first budget
    in the file is used and a warning names the others.  Fields missing from a solution (teacher,
    pool, layer names) are taken from the enclosing document; a solution that carries its full
    architecture under ``"arch"`` is read from there.
    """
    return architectures_in(read_search_result(path), path, budget)


def architectures_in(doc: Any, path: str | Path, budget: str | float | None = None
                     ) -> list[Candidate]:
    """:func:`read_architectures` of an already parsed document ``doc`` (read from ``path``)."""
    import warnings

    from lana.assemble import Architecture

    path = Path(path)
    refuse_other_kind(doc, path, ("lana.search", "lana.arch", "lana.verify"),
                      "a search result or an architecture file",
                      "pass the --out of lana search, verify or select", SelectError)
    top = doc if isinstance(doc, Mapping) else {}
    found = list(_walk(doc, {}))
    if not found:
        raise SelectError(f"{path} holds no architecture (no object with an 'ops' list of op keys);"
                          f" pass the file written by lana search")
    known = {"schema", "teacher", "pool", "ops", "layer_names", "predicted_ms", "objective",
             "budget_ms", "arch"}
    cands: list[Candidate] = []
    for index, (entry, ctx) in enumerate(found):
        inner = entry.get("arch")
        sol = {**inner, **{k: v for k, v in entry.items() if k != "arch"}} if isinstance(
            inner, Mapping) else dict(entry)
        teacher = sol.get("teacher", top.get("teacher"))
        if not teacher:
            raise SelectError(f"solution {index} in {path} names no teacher; pass a file written "
                              f"by lana search")
        predicted = sol.get("predicted_ms", {})
        if _is_number(predicted):
            predicted = {str(top.get("device", "lut")): float(predicted)}
        budget_ms = sol.get("budget_ms") if _is_number(sol.get("budget_ms")) else ctx.get(
            "budget_ms")
        label = ctx.get("budget")
        if label is None and budget_ms is not None:
            label = _budget_label(budget_ms)
        arch = Architecture(
            teacher=str(teacher), pool=str(sol.get("pool", top.get("pool", "")) or ""),
            ops=tuple(sol["ops"]),
            layer_names=tuple(sol.get("layer_names") or top.get("layer_names") or ()),
            predicted_ms=dict(predicted) if isinstance(predicted, Mapping) else {},
            objective=float(sol["objective"]) if _is_number(sol.get("objective")) else None,
            budget_ms=float(budget_ms) if budget_ms is not None else None,
            extra={k: v for k, v in sol.items()
                   if k not in known and not isinstance(v, (list, dict))})
        cands.append(Candidate(arch, label, index))
    labels = list(dict.fromkeys(c.budget for c in cands if c.budget is not None))
    if budget is not None:
        want = _budget_label(budget)
        picked = [c for c in cands if c.budget == want]
        if not picked:
            try:
                ms = float(str(budget).removesuffix("ms").strip())
            except ValueError:
                ms = None
            if ms is not None:
                picked = [c for c in cands if c.arch.budget_ms is not None
                          and math.isclose(c.arch.budget_ms, ms, rel_tol=1e-6, abs_tol=1e-9)]
        if not picked:
            raise SelectError(f"{path} has no solutions for budget {budget!r}; its budgets: "
                              f"{', '.join(labels) or 'none recorded'}")
        return picked
    if len(labels) > 1:
        warnings.warn(f"{path} holds solutions for {len(labels)} budgets ({', '.join(labels)}); "
                      f"using the first, {labels[0]} (pass --budget to pick another)",
                      SelectWarning, stacklevel=2)
        return [c for c in cands if c.budget == labels[0]]
    return cands


# ---------------------------------------------------------------------------------------------
# Evaluating architectures


def build_candidate(arch: "Architecture", teacher: "Teacher", pretrain: str | Path | None,
                    pool: str) -> nn.Module:
    """The student of ``arch`` with its distilled ops (teacher layers copied from the teacher)."""
    from lana.assemble import check_arch
    from lana.pretrain import load_op
    from lana.spec import parse_key

    check_arch(arch, teacher)
    modules = {}
    for i, key in enumerate(arch.ops):
        spec = parse_key(key)
        if spec.family != "teacher":
            modules[i] = load_op(pretrain, teacher, i, spec, pool)
    return teacher.replaced(modules)


def batch_stats_mode(model: nn.Module) -> nn.Module:
    """Eval mode except batch norm, which normalises with the current batch's statistics."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return model


@torch.no_grad()
def measure_loss(model: nn.Module, split: Split, *, batch_size: int, device: torch.device,
                 bn_batch_stats: bool = True) -> tuple[float, float]:
    """Mean cross-entropy and top-1 of ``model`` on ``split`` (a fixed, shuffled batch order)."""
    place_module(model, device)
    if bn_batch_stats:
        batch_stats_mode(model)
    else:
        model.eval()
    total, correct, n = 0.0, 0, 0
    # Batch statistics need full batches: a short tail batch would normalise with noisy moments.
    for x, y in iter_batches(split, batch_size, shuffle=True, seed=0, drop_last=bn_batch_stats):
        x, y = place(x, device), y.to(device)
        logits = model(x).float()
        total += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += int(y.numel())
    model.eval()
    return total / max(1, n), correct / max(1, n)


def _changed(arch: "Architecture") -> int:
    return sum(1 for k in arch.ops if not k.startswith("teacher:"))


def select(search: str | Path, pretrain: str | Path | None, teacher: "str | Teacher | None" = None,
           data: Any = None, out: str | Path | None = "run/select.json", *,
           budget: str | float | None = None, images: int = DEFAULT_IMAGES,
           batch_size: int = DEFAULT_BATCH_SIZE, device: str | None = None, seed: int = 0,
           teacher_weights: str | Path | None = None, selector: str | None = None,
           input_shape: Any = None, progress: bool = True) -> dict:
    """Rank the search result's architectures by measured loss; write and return the winner.

    A user module's ``selector`` and ``input_shape`` default to those ``pretrain`` recorded.
    """
    from lana.pretrain import load_splits, open_teacher, read_manifest

    cands = read_architectures(search, budget)
    name = cands[0].arch.teacher
    if teacher is not None:
        given = teacher if isinstance(teacher, str) else teacher.name
        if given != name:
            raise SelectError(f"{search} was searched for teacher {name!r}, not {given!r}; pass "
                              f"--teacher {name} or the search result of {given}")
    t = open_teacher(teacher if teacher is not None and not isinstance(teacher, str) else name,
                     teacher_weights, selector=selector, input_shape=input_shape,
                     pretrain=pretrain)
    pool = cands[0].arch.pool or None
    if pretrain is None:
        from lana.pretrain import needs_training
        from lana.spec import parse_key

        if any(needs_training(parse_key(k)) for c in cands for k in set(c.arch.ops)):
            raise SelectError(f"the architectures in {search} use distilled ops; pass --pretrain "
                              f"DIR written by lana pretrain")
    manifest = read_manifest(pretrain, t, pool) if pretrain is not None else {}
    pool = pool or manifest.get("pool") or ""
    dev = resolve_device(device)
    place_module(t.model, dev).eval()
    splits = load_splits(data, t, seed)
    # "Training images" without augmentation: the plain train split, capped at ``images``.
    split = splits.train.plain().subset(images, seed)
    teacher_loss, teacher_top1 = measure_loss(t.model, split, batch_size=batch_size, device=dev,
                                              bn_batch_stats=False)
    rows = []
    start = time.perf_counter()
    for c in _track(cands, progress):
        arch = c.arch if c.arch.pool else c.arch.replace(pool=pool)
        model = build_candidate(arch, t, pretrain, pool)
        loss, top1 = measure_loss(model, split, batch_size=batch_size, device=dev)
        rows.append({"index": c.index, "loss": loss, "top1": top1, "objective": arch.objective,
                     "predicted_ms": dict(arch.predicted_ms), "changed_layers": _changed(arch),
                     "_arch": arch})
        del model
    rows.sort(key=lambda r: (r["loss"], r["index"]))
    best = rows[0]["_arch"]
    if not best.layer_names:
        best = best.replace(layer_names=tuple(l.name for l in t.layers))
    ranking = [{k: v for k, v in r.items() if k != "_arch"} for r in rows]
    result = best.to_dict()
    result["selection"] = {"images": len(split), "batch_size": batch_size,
                           "loss": rows[0]["loss"], "top1": rows[0]["top1"],
                           "teacher_loss": teacher_loss, "teacher_top1": teacher_top1,
                           "bn": "batch statistics", "source": str(search),
                           "budget": cands[0].budget,
                           "seconds": round(time.perf_counter() - start, 2), "ranking": ranking}
    if progress:
        print_ranking(result)
    if out is not None:
        from lana.atomic import write_text

        write_text(Path(out), json.dumps(result, indent=1) + "\n")
    return result


def print_ranking(result: Mapping[str, Any]) -> None:
    """The ranking of a selection as a rich table, best first."""
    from rich.console import Console
    from rich.table import Table

    sel = result["selection"]
    table = Table(title=f"{len(sel['ranking'])} architectures on {sel['images']} training images "
                  f"(teacher loss {sel['teacher_loss']:.4f}, top-1 "
                  f"{100 * sel['teacher_top1']:.2f}%)", title_justify="left")
    for col in ("rank", "solution", "loss", "top-1 %", "objective", "predicted ms", "ops changed"):
        table.add_column(col, justify="right")
    for rank, r in enumerate(sel["ranking"], 1):
        ms = ", ".join(f"{v:.3f}" for v in r["predicted_ms"].values()) or "-"
        obj = f"{r['objective']:.4f}" if r["objective"] is not None else "-"
        table.add_row(str(rank), str(r["index"]), f"{r['loss']:.4f}", f"{100 * r['top1']:.2f}",
                      obj, ms, str(r["changed_layers"]), style="bold" if rank == 1 else None)
    Console().print(table)


def _track(items: list, enabled: bool):
    if not enabled or len(items) < 2:
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("evaluating architectures", total=len(items))
        for item in items:
            yield item
            bar.advance(task)


__all__ = ["Candidate", "DEFAULT_IMAGES", "SelectError", "SelectWarning", "batch_stats_mode",
           "build_candidate",
           "measure_loss", "print_ranking", "read_architectures", "select"]

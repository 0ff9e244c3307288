"""``lana search`` end to end on small scores and LUT files written in the documented formats."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from lana.errors import LanaError

from .conftest import tiny


def _parser():
    from lana.commands.search import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser


def _write_files(tmp_path, table, *, presets=("cpu-ort",), calibration=None, drop=None,
                 rename_layer=None, nan_score=False, fail=()):
    from lana.ops import ops_fingerprint

    layers = []
    for i, (name, keys) in enumerate(zip(table.layer_names, table.ops)):
        scores = {k: float(v) for k, v in zip(keys, table.scores[i])}
        if nan_score and i == 1:
            scores[keys[1]] = float("nan")
        layers.append({"index": i, "name": name, "scores": scores})
    scores_path = tmp_path / "scores.json"
    scores_path.write_text(json.dumps({
        "schema": "lana.scores/1", "teacher": table.teacher, "pool": table.pool,
        "teacher_loss": 0.25, "n_samples": 64, "layers": layers}))
    paths = []
    for t, preset in zip(table.table_names, presets):
        entries = {k: {"median": float(c), "p10": float(c), "p90": float(c), "iqr": 0.0, "n": 9,
                       "noisy": False}
                   for keys, costs in zip(table.ops, table.costs[t]) for k, c in zip(keys, costs)}
        if drop:
            for key in drop:
                entries.pop(key)
        for key in fail:
            entries[key] = {"failed": "export failed: unsupported operator"}
        names = list(table.layer_names)
        if rename_layer is not None:
            names[rename_layer] = "blocks.renamed"
        lut = {"schema": "lana.lut/1", "teacher": table.teacher, "pool": table.pool,
               "input_shape": [3, 32, 32],
               "device": {"preset": preset, "backend": "ort", "precision": "fp32",
                          "batch_size": 1, "threads": 1, "seen": {}},
               "protocol": {"warmup_s": 0.1, "warmup_iters": 5, "min_iters": 10,
                            "min_time_s": 0.1, "statistic": "median", "units": "ms"},
               "ops_fingerprint": ops_fingerprint(), "created": "2025-01-01T00:00:00+00:00",
               "entries": entries, "fixed": {"median": table.fixed[t], "n": 9},
               "layers": [{"name": n, "ops": list(k)} for n, k in zip(names, table.ops)],
               "calibration": calibration}
        path = tmp_path / f"{preset}.json"
        path.write_text(json.dumps(lut))
        paths.append(str(path))
    return str(scores_path), paths


def _run(argv):
    from lana.commands.search import run

    return run(_parser().parse_args(["search", *argv]))


def test_cli_single_budget_writes_report_and_png(tmp_path, capsys):
    t = tiny(8, 6, seed=1)
    scores, (lut,) = _write_files(tmp_path, t)
    out = tmp_path / "out" / "search.json"
    assert _run(["--lut", lut, "--scores", scores, "--budget", "0.5x", "--k", "4",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    assert report["schema"] == "lana.search/1" and report["k"] == 4
    (target,) = report["targets"]
    assert target["budgets"]["cpu-ort"]["given"] == "0.5x"
    limit = target["budgets"]["cpu-ort"]["limit"]
    assert target["found"] == 4
    for a in target["architectures"]:
        arch = a["arch"]
        assert arch["schema"] == "lana.arch/1" and len(arch["ops"]) == 8
        assert arch["layer_names"] == list(t.layer_names)
        assert arch["predicted_ms"]["cpu-ort"] <= limit * (1 + 1e-9)
        assert arch["budget_ms"] == pytest.approx(limit)
        assert a["predicted_loss"] == pytest.approx(0.25 + a["objective"])
        assert a["status"] in ("optimal", "within_gap") and a["gap"] <= 0.005
        assert a["dual_bound"] <= a["objective"]
    assert "wrote" in capsys.readouterr().out


def test_cli_sweep_two_luts_and_calibration(tmp_path):
    t = tiny(8, 6, seed=2, tables=("gpu", "cpu"))
    cal = {"kind": "affine", "offset_ms": 0.2, "slope": 1.1, "family_ms": {"identity": 0.01}}
    scores, luts = _write_files(tmp_path, t, presets=("cuda-trt", "cpu-ort"), calibration=cal)
    out = tmp_path / "sweep.json"
    assert _run(["--lut", luts[0], "--lut", luts[1], "--scores", scores,
                 "--budget", "0.4x:0.6x:0.1x", "--budget", "0.9x", "--k", "2",
                 "--out", str(out), "--strategy", "bottom-up"]) == 0
    report = json.loads(out.read_text())
    assert [tg["budgets"]["cuda-trt"]["given"] for tg in report["targets"]] == ["0.4x", "0.5x", "0.6x"]
    assert len(report["pareto"]) == 3
    from lana.lut import Lut

    gpu = Lut.load(luts[0])
    for tg in report["targets"]:
        cpu_limit = tg["budgets"]["cpu-ort"]["limit"]
        for a in tg["architectures"]:
            assert a["predicted_ms"]["cuda-trt"] == pytest.approx(gpu.predict(a["ops"]))
            assert a["predicted_ms"]["cpu-ort"] <= cpu_limit * (1 + 1e-9)
    assert (tmp_path / "sweep.png").exists()


def test_cli_single_shot(tmp_path):
    t = tiny(8, 6, seed=3)
    scores, (lut,) = _write_files(tmp_path, t)
    out = tmp_path / "ss.json"
    _run(["--lut", lut, "--scores", scores, "--budget", "0.7x", "--k", "2", "--single-shot",
          "--out", str(out), "--no-plot"])
    archs = json.loads(out.read_text())["targets"][0]["architectures"]
    assert all(k.split(":")[0] in ("teacher", "identity") for a in archs for k in a["ops"])


@pytest.mark.parametrize("case, match", [
    ("layers", "list different layers"),
    ("missing", r"lacks 2 of \d+ needed entries.*lana-profile"),
    ("nan", "not a finite number"),
    ("infeasible", "below the smallest"),
    ("k", "k must be"),
    ("overlap", "overlap must be in"),
    ("budgets", "at most one budget per LUT"),
    ("threads", r"threads 999 is more than this machine's \d+ CPUs; pass at most"),
    ("out-png", "ends in .png"),
    ("out-dir", "is a folder"),
    ("out-input", "would overwrite the input"),
    ("out-file-parent", r"--out .*scores.json/o.json cannot be written: .*scores.json is a file"),
    ("max-params", "--max-params: budget 'many'"),
    ("params-ms", "--max-params: limit '5ms' is a time, but parameters and FLOPs are counted"),
    ("count", "budget '5M' is a count, but latency budgets are milliseconds"),
    ("twice", r"budget 0.4x comes twice in '0.3x:0.5x:0.1x,0.4x'; give each budget once"),
    ("key", r"scores.json: layer 'blocks.0' scores an invalid op key \(not an op key: 'efn:e=9'"),
    ("teacher-loss", r"scores.json: teacher_loss is 'x', not a finite number; re-run lana score"),
    ("teacher-failed", r"teacher op of layer 'blocks.3' failed to profile .*unsupported operator"
                       r".*lana-profile .*--force"),
])
def test_cli_bad_input_is_one_line(tmp_path, case, match):
    t = tiny(6, 5, seed=4)
    kw = {"rename_layer": 2} if case == "layers" else {}
    if case == "missing":
        kw["drop"] = [t.ops[0][2], t.ops[3][1]]
    if case == "nan":
        kw["nan_score"] = True
    if case == "teacher-failed":
        kw["fail"] = [t.ops[3][0]]
    scores, (lut,) = _write_files(tmp_path, t, **kw)
    if case == "key":  # a scores file naming an op no LUT could hold: the scores are at fault
        data = json.loads(Path(scores).read_text())
        data["layers"][0]["scores"]["efn:e=9"] = 0.1
        Path(scores).write_text(json.dumps(data))
    if case == "teacher-loss":
        data = json.loads(Path(scores).read_text())
        data["teacher_loss"] = "x"
        Path(scores).write_text(json.dumps(data))
    budget = {"infeasible": "0.001x", "count": "5M", "twice": "0.3x:0.5x:0.1x,0.4x"}.get(case,
                                                                                       "0.5x")
    out = {"out-png": tmp_path / "o.png", "out-dir": tmp_path, "out-input": scores,
           "out-file-parent": Path(scores) / "o.json"}.get(case, tmp_path / "o.json")
    argv = ["--lut", lut, "--scores", scores, "--budget", budget, "--out", str(out)]
    argv += {"k": ["--k", "0"], "overlap": ["--overlap", "1.5"], "threads": ["--threads", "999"],
             "budgets": ["--budget", "0.6x"], "max-params": ["--max-params", "many"],
             "params-ms": ["--max-params", "5ms"]}.get(case, [])
    with pytest.raises(LanaError, match=match) as err:
        _run(argv)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.png").exists()
    assert json.loads(Path(scores).read_text())["schema"] == "lana.scores/1"  # inputs untouched


def test_api_from_files_matches_cli_table(tmp_path):
    from lana.search import Budget, SearchTable, search

    t = tiny(6, 5, seed=5)
    scores, (lut,) = _write_files(tmp_path, t)
    loaded = SearchTable.from_files(scores, [lut])
    assert loaded.table_names == ["cpu-ort"] and loaded.teacher_loss == 0.25
    a = search(loaded, Budget("cpu-ort", "0.5x"), gap=0.0).best
    b = search(t, Budget("gpu", "0.5x"), gap=0.0).best
    assert math.isclose(a.objective, b.objective, rel_tol=1e-9)


def test_cli_max_params_and_flops_on_the_demo_teacher(tmp_path):
    """--max-params and --max-flops count the real ops of the demo teacher's small pool."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lana.ops import create_op
    from lana.pool import build_pool
    from lana.search import SearchTable
    from lana.search.files import add_model_tables
    from lana.spec import parse_key
    from lana.teachers import create_teacher

    teacher = create_teacher("demo", pretrained=False)
    pool = build_pool(teacher, "small")
    rng = np.random.default_rng(0)
    ops = [lp.keys for lp in pool]
    scores = [np.where(np.arange(len(k)) == 0, 0.0, rng.uniform(0.01, 0.3, len(k))) for k in ops]
    costs = [np.where(np.arange(len(k)) == 0, 1.0, rng.uniform(0.1, 1.2, len(k))) for k in ops]
    table = SearchTable(layer_names=[lp.layer.name for lp in pool], ops=ops, scores=scores,
                        costs={"cpu": costs}, fixed={"cpu": 0.5}, teacher="demo", pool="small")
    with_params = add_model_tables(table, flops=True)
    params = with_params.costs["params"]
    teacher_params = sum(p.numel() for p in teacher.model.parameters())
    assert with_params.total("params", table.teacher_choice()) == teacher_params
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        teacher.model(teacher.example_input())
    teacher_flops = counter.get_total_flops()
    assert with_params.total("flops", table.teacher_choice()) == pytest.approx(teacher_flops, rel=1e-6)
    # a few ops counted with real weights, as built for training
    for i in (0, len(ops) // 2, len(ops) - 1):
        module = create_op(parse_key(ops[i][1]), teacher.layer_module(i))
        assert params[i][1] == sum(p.numel() for p in module.parameters())
    scores_path, (lut,) = _write_files(tmp_path, table)
    out = tmp_path / "p.json"
    assert _run(["--lut", lut, "--scores", scores_path, "--budget", "0.8x", "--k", "3",
                 "--max-params", "0.6x", "--max-flops", "0.7x", "--out", str(out),
                 "--no-plot"]) == 0
    report = json.loads(out.read_text())
    budgets = report["targets"][0]["budgets"]
    assert budgets["params"]["limit"] == pytest.approx(0.6 * teacher_params)
    assert budgets["flops"]["limit"] == pytest.approx(0.7 * teacher_flops, rel=1e-6)
    for a in report["targets"][0]["architectures"]:
        choice = with_params.choice_of(a["ops"])
        for name in ("params", "flops"):
            assert a["costs"][name] <= budgets[name]["limit"] * (1 + 1e-9)
            assert a["costs"][name] == pytest.approx(with_params.fixed[name] + sum(
                with_params.costs[name][i][c] for i, c in enumerate(choice)))


def test_cli_baselines_never_beat_the_certified_bound(tmp_path, capsys):
    """--baselines: random and evolutionary search on the same budgets and objective, reported per
    target; neither may find an architecture below the integer program's certified bound."""
    from lana.search.files import load_table

    t = tiny(8, 6, seed=6)
    scores, (lut,) = _write_files(tmp_path, t)
    out = tmp_path / "b.json"
    assert _run(["--lut", lut, "--scores", scores, "--budget", "0.5x,0.7x", "--k", "2",
                 "--baselines", "--no-plot", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    loaded = load_table(scores, [lut])  # ops of equal key share one LUT entry
    for target in report["targets"]:
        first = target["architectures"][0]
        limit = target["budgets"]["cpu-ort"]["limit"]
        for name in ("evolution", "random"):
            b = target["baselines"][name]
            assert b["evaluated"] > 0 and b["best"] is not None
            assert b["best"] >= first["dual_bound"] - 1e-9
            choice = loaded.choice_of(b["ops"])
            assert loaded.objective(choice) == pytest.approx(b["best"])
            assert loaded.total("cpu-ort", choice) <= limit * (1 + 1e-9)
    assert "baselines given the integer program's time" in capsys.readouterr().out


def test_warning_lines_name_the_budget_and_fold_time_limits():
    from lana.commands.search import warning_lines

    def arch(status, gap):
        return {"status": status, "gap": gap}

    report = {"gap": 0.005, "targets": [
        {"budgets": {"gpu": {"given": "0.5x", "limit": 1.0}}, "found": 3,
         "warnings": ["solve 1 stopped at its 0.1 s time limit with gap 2.00% (asked 0.50%); "
                      "allow more time for a tighter certificate",
                      "solve 2 stopped at its 0.1 s time limit with gap 3.00% (asked 0.50%); "
                      "allow more time for a tighter certificate"],
         "architectures": [arch("optimal", 0.0), arch("time_limit", 0.02), arch("time_limit", 0.03)]},
        {"budgets": {"gpu": {"given": "0.3x", "limit": 0.6}}, "found": 1,
         "warnings": ["found 1 of 3 architectures: no further architecture"],
         "architectures": [arch("optimal", 0.0)]}]}
    lines = warning_lines(report, ["found 1 of 3 architectures: no further architecture",
                                   "2 scored op(s) failed to profile"])
    assert lines == [
        "2 scored op(s) failed to profile",
        "gpu 0.5x: 2 of 3 solves stopped at their time limit before proving the 0.50% gap "
        "(largest gap 3.00%); a larger --time-limit or --time-budget tightens the certificates",
        "gpu 0.3x: found 1 of 3 architectures: no further architecture"]

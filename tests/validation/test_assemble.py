"""Assembly: architecture files checked against the teacher, students built, saved and rebuilt."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch

from lana.assemble import (ArchError, Architecture, AssemblyWarning, assemble, build_student,
                           check_arch, load_student, read_arch, read_student, write_arch)
from lana.checkpoints import CheckpointError, op_checkpoint_path, save_checkpoint
from lana.cli import main
from lana.export import run_onnx
from lana.ops import create_op
from lana.spec import OpSpec, parse_key


def random_arch(pool, seed: int, *, teacher_rate: float = 0.3) -> Architecture:
    rng = random.Random(seed)
    ops = tuple(lp.keys[0] if rng.random() < teacher_rate else rng.choice(lp.keys[1:])
                for lp in pool)
    return Architecture("demo", "small", ops, tuple(lp.layer.name for lp in pool), budget_ms=1.0)


def first_with_params(pool, arch: Architecture, count: int) -> list[int]:
    """Layers whose op is neither the teacher's nor parameter-free."""
    out = []
    for i, key in enumerate(arch.ops):
        spec = parse_key(key)
        if spec.family not in ("teacher", "identity"):
            out.append(i)
    return out[:count]


def test_round_trip_is_bit_for_bit(demo_pool, tmp_path):
    arch = random_arch(demo_pool, 3)
    write_arch(arch, tmp_path / "arch.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = assemble(tmp_path / "arch.json", tmp_path / "out")
    assert any("random weights" in str(w.message) for w in caught)
    assert result.student_path.is_file() and result.onnx_path.is_file()
    assert read_arch(result.arch_path).ops == arch.ops

    payload = read_student(result.student_path)
    rebuilt = load_student(result.student_path)
    state = rebuilt.state_dict()
    assert set(state) == set(payload["state_dict"])
    for name, tensor in payload["state_dict"].items():
        assert torch.equal(state[name], tensor), name
    # Not trivially equal: the rebuilt ops are fresh modules whose init differs from the file.
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = rebuilt(x)
        b = load_student(result.student_path)(x)
    assert torch.equal(a, b)
    # The exported file computes the same function (deployed form, dynamic batch).
    assert np.allclose(run_onnx(result.onnx_path, x), a.numpy(), atol=1e-4, rtol=1e-4)
    summary = json.loads((tmp_path / "out" / "assembly.json").read_text())
    assert summary["random_layers"] == result.random_layers
    assert len(summary["layers"]) == len(demo_pool)


def test_pretrained_weights_go_into_their_layers(demo_pool, demo_teacher, tmp_path):
    arch = random_arch(demo_pool, 5, teacher_rate=0.0)
    chosen = first_with_params(demo_pool, arch, 2)
    assert len(chosen) == 2
    expected = {}
    for value, i in zip((0.25, -0.5), chosen):
        key = arch.ops[i]
        module = create_op(parse_key(key))
        state = {k: torch.full_like(v, value) if v.is_floating_point() else v
                 for k, v in module.state_dict().items()}
        save_checkpoint(op_checkpoint_path(tmp_path / "pre", i, key), state, key=key,
                        teacher="demo", pool="small")
        expected[i] = state
    # A checkpoint of the same op at another layer must not be picked up by layer 0.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student, report = build_student(arch, demo_teacher, pretrain_dir=tmp_path / "pre")
    random_msg = [str(w.message) for w in caught if issubclass(w.category, AssemblyWarning)]
    assert random_msg and "random weights" in random_msg[0]
    for w in report:
        if w.index in expected:
            assert w.source == str(op_checkpoint_path(tmp_path / "pre", w.index, w.op))
            layer = student.get_submodule(demo_teacher.layers[w.index].name)
            for name, tensor in layer.state_dict().items():
                assert torch.equal(tensor, expected[w.index][name]), (w.index, name)
        elif parse_key(w.op).family not in ("identity", "teacher"):
            assert w.source == "random"
            layer = student.get_submodule(demo_teacher.layers[w.index].name)
            assert not any(torch.all(t == 0.25) or torch.all(t == -0.5)
                           for t in layer.state_dict().values() if t.numel() > 1)


def test_checkpoint_of_another_op_is_refused(demo_pool, demo_teacher, tmp_path):
    arch = random_arch(demo_pool, 5, teacher_rate=0.0)
    i = first_with_params(demo_pool, arch, 1)[0]
    key = arch.ops[i]
    module = create_op(parse_key(key))
    save_checkpoint(op_checkpoint_path(tmp_path, i, key), module.state_dict(), key="other:|x",
                    teacher="demo")
    with pytest.raises(CheckpointError, match="is for key="):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_student(arch, demo_teacher, pretrain_dir=tmp_path)


def test_teacher_layers_keep_teacher_weights(demo_pool, demo_teacher):
    teacher_ops = tuple(lp.keys[0] for lp in demo_pool)
    arch = Architecture("demo", "small", teacher_ops)
    student, report = build_student(arch, demo_teacher)
    assert all(w.source == "teacher" for w in report)
    for (name, a), b in zip(student.state_dict().items(), demo_teacher.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("case", ["short", "not_in_pool", "wrong_shape", "bad_key", "teacher"])
def test_bad_architectures_are_refused_in_one_line(case, demo_pool, demo_teacher):
    arch = random_arch(demo_pool, 1)
    ops = list(arch.ops)
    layer = demo_pool[2].layer
    if case == "short":
        bad = arch.replace(ops=tuple(ops[:-1]), layer_names=())
        match = f"has {len(ops) - 1} op keys but teacher demo has {len(ops)} layers"
    elif case == "not_in_pool":  # a real op, just not one of the small pool's
        ops[2] = OpSpec.make("efn", layer.in_shape, layer.out_shape, layer.stride, e=6, k=5,
                             se=0.04).key
        bad, match = arch.replace(ops=tuple(ops)), "not in the 'small' pool"
    elif case == "wrong_shape":
        ops[2] = demo_pool[0].keys[1]
        bad, match = arch.replace(ops=tuple(ops)), "maps"
    elif case == "bad_key":
        ops[2] = "efn:e=3|in=1x2"
        bad, match = arch.replace(ops=tuple(ops)), "not an op key"
    else:
        bad, match = arch.replace(teacher="efficientnet_b0"), "not 'demo'"
    with pytest.raises(ArchError, match=match) as info:
        check_arch(bad, demo_teacher)
    assert "\n" not in str(info.value)


def test_cli_reports_bad_input_and_missing_weights(demo_pool, tmp_path, capsys):
    arch = random_arch(demo_pool, 2)
    write_arch(arch.replace(ops=arch.ops[:-1], layer_names=()), tmp_path / "short.json")
    assert main(["assemble", "--arch", str(tmp_path / "short.json"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{len(demo_pool)} layers" in err
    assert err.count("\n") == 1

    (tmp_path / "foreign.json").write_text(json.dumps({"schema": "lana.lut/1"}))
    assert main(["assemble", "--arch", str(tmp_path / "foreign.json"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "lana search" in capsys.readouterr().err

    write_arch(arch, tmp_path / "arch.json")
    (tmp_path / "pre").mkdir()  # a folder lana pretrain did not write
    assert main(["assemble", "--arch", str(tmp_path / "arch.json"), "--pretrain",
                 str(tmp_path / "pre"), "--out", str(tmp_path / "o"), "--no-onnx"]) == 2
    assert "is not a pretraining directory" in capsys.readouterr().err
    from lana.pretrain import MANIFEST, SCHEMA

    (tmp_path / "pre" / MANIFEST).write_text(json.dumps(  # a pretraining without these ops
        {"schema": SCHEMA, "teacher": arch.teacher, "pool": arch.pool, "layers": []}))
    assert main(["assemble", "--arch", str(tmp_path / "arch.json"), "--pretrain",
                 str(tmp_path / "pre"), "--out", str(tmp_path / "o"), "--no-onnx", "--json"]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err and "lana pretrain" in captured.err
    assert json.loads(captured.out)["onnx"] is None


def test_a_file_with_several_architectures(demo_pool, tmp_path):
    archs = [random_arch(demo_pool, s).to_dict() for s in (1, 2)]
    (tmp_path / "many.json").write_text(json.dumps({"budgets": [{"budget_ms": 1.0,
                                                                  "architectures": archs}]}))
    assert read_arch(tmp_path / "many.json", 1).ops == tuple(archs[1]["ops"])
    with pytest.warns(AssemblyWarning, match="--index"):
        assert read_arch(tmp_path / "many.json").ops == tuple(archs[0]["ops"])
    with pytest.raises(ArchError, match="0..1"):
        read_arch(tmp_path / "many.json", 5)


def test_a_search_result_without_per_solution_schema(demo_pool, tmp_path):
    ops = [list(random_arch(demo_pool, s).ops) for s in (3, 4)]
    doc = {"teacher": "demo", "pool": "small",
           "budgets": [{"budget_ms": 0.7, "solutions": [{"ops": ops[0]}, {"ops": ops[1]}]}]}
    (tmp_path / "search.json").write_text(json.dumps(doc))
    arch = read_arch(tmp_path / "search.json", 1)
    assert arch.ops == tuple(ops[1]) and arch.teacher == "demo" and arch.budget_ms == 0.7

"""Fine-tuning: top-1 recovers, metrics and student files are written, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

import lana.finetune as ft
from lana.finetune import FinetuneError, finetune, kd_loss


def _arch(teacher, tmp_path, replace: dict[int, str], name: str = "arch"):
    from lana.pool import build_pool

    ops = []
    for i, lp in enumerate(build_pool(teacher, "small")):
        ops.append(next(s for s in lp.specs if s.family == replace.get(i, "teacher")).key)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"schema": "lana.arch/1", "teacher": "demo", "pool": "small",
                                "ops": ops, "layer_names": [l.name for l in teacher.layers],
                                "predicted_ms": {}, "objective": None, "budget_ms": None}))
    return path


def _replace(teacher, same_shape) -> dict[int, str]:
    """Identity in every other same-shape layer, a dense or inverted-residual op elsewhere."""
    plan = {i: "identity" for i in same_shape[::2]}
    others = [l.index for l in teacher.layers if l.index not in plan]
    for i, fam in zip(others[1::3], ("cb_stack", "efn", "conv_cs")):
        plan[i] = fam
    return plan


def test_kd_loss_is_cross_entropy_without_distillation():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    assert kd_loss(s, t, y, temperature=4, kd_weight=0) == pytest.approx(
        float(torch.nn.functional.cross_entropy(s, y)))
    assert float(kd_loss(t, t, y, temperature=4, kd_weight=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_finetune_improves_or_holds_top1(teacher, same_shape, tiny, pretrained, tmp_path):
    from lana.distributed import as_split
    from lana.select import build_candidate, read_architectures

    path = _arch(teacher, tmp_path, _replace(teacher, same_shape))
    (cand,) = read_architectures(path)
    before = ft.top1(build_candidate(cand.arch, teacher, pretrained, "small"),
                     as_split(tiny.val), torch.device("cpu"))
    m = finetune(path, "demo", pretrained, tiny, tmp_path / "ft", epochs=2, batch_size=32,
                 lr=2e-3, progress=False)
    assert len(m["val_top1"]) == 2 and m["final_top1"] == m["val_top1"][-1]
    assert m["final_top1"] >= before
    assert m["teacher_top1"] > 0.9
    saved = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert saved["val_top1"] == m["val_top1"] and saved["teacher_top1"] == m["teacher_top1"]
    from lana.assemble import load_student

    student = load_student(tmp_path / "ft" / "student.pt")
    assert ft.top1(student, as_split(tiny.val), torch.device("cpu")) == m["final_top1"]


def test_interrupted_finetune_resumes_exactly(teacher, same_shape, tiny, pretrained, tmp_path,
                                              monkeypatch):
    path = _arch(teacher, tmp_path, {same_shape[0]: "identity", 9: "efn"})
    common = dict(epochs=2, batch_size=32, images=96, progress=False)
    full = finetune(path, "demo", pretrained, tiny, tmp_path / "a", **common)

    real_save = ft._save_atomic

    def save_then_stop(payload, where):
        real_save(payload, where)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_atomic", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        finetune(path, "demo", pretrained, tiny, tmp_path / "b", **common)
    monkeypatch.setattr(ft, "_save_atomic", real_save)
    assert not (tmp_path / "b" / "student.pt").exists()
    with pytest.raises(FinetuneError, match="--resume"):
        finetune(path, "demo", pretrained, tiny, tmp_path / "b", **common)
    # settings the schedule and the weights depend on must be those the checkpoint was made with
    with pytest.raises(FinetuneError, match=r"was made with --lr 0.001 --images 96; resume with "):
        finetune(path, "demo", pretrained, tiny, tmp_path / "b", resume=True,
                 **{**common, "images": 64, "lr": 0.1})
    resumed = finetune(path, "demo", pretrained, tiny, tmp_path / "b", resume=True, **common)
    assert resumed["val_top1"] == full["val_top1"] and resumed["config"] == full["config"]
    assert resumed["seconds"] > 0  # the interrupted run's time is counted
    a = torch.load(tmp_path / "a" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "student.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_resume_refuses_another_architecture(teacher, same_shape, tiny, pretrained, tmp_path):
    p1 = _arch(teacher, tmp_path, {same_shape[0]: "identity"})
    finetune(p1, "demo", pretrained, tiny, tmp_path / "ft", epochs=1, batch_size=32, images=64,
             progress=False)
    p2 = _arch(teacher, tmp_path, {same_shape[1]: "identity"}, "other")
    with pytest.raises(FinetuneError, match="another architecture"):
        finetune(p2, "demo", pretrained, tiny, tmp_path / "ft", epochs=1, batch_size=32,
                 images=64, resume=True, progress=False)
    # A truncated checkpoint is never reused.
    ck = tmp_path / "ft" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(FinetuneError, match="unreadable"):
        finetune(p1, "demo", pretrained, tiny, tmp_path / "ft", epochs=1, batch_size=32,
                 images=64, resume=True, progress=False)
    # ... nor one whose contents are not what a checkpoint holds
    finetune(p1, "demo", pretrained, tiny, tmp_path / "ft2", epochs=1, batch_size=32, images=64,
             progress=False)
    ck = tmp_path / "ft2" / "checkpoint.pt"
    torch.save({**torch.load(ck, weights_only=True), "history": None}, ck)
    with pytest.raises(FinetuneError, match="does not fit this run"):
        finetune(p1, "demo", pretrained, tiny, tmp_path / "ft2", epochs=1, batch_size=32,
                 images=64, resume=True, progress=False)

"""Scores (Eq. 3): the file format, teacher op 0, identity hurts, and prefix reuse is exact."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from lana.score import ReuseNetwork, ScoreError, read_scores, score


@pytest.fixture(scope="module")
def scores(teacher, tiny, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "scores.json"
    result = score(pretrained, teacher, "small", tiny, out, samples=32, progress=False)
    return out, result


def test_scores_file_schema(teacher, scores):
    path, result = scores
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(result))
    assert data["schema"] == "lana.scores/1"
    assert data["teacher"] == "demo" and data["pool"] == "small"
    assert data["n_samples"] == 32
    assert math.isfinite(data["teacher_loss"]) and data["teacher_loss"] >= 0
    assert [l["name"] for l in data["layers"]] == [l.name for l in teacher.layers]
    from lana.pool import build_pool

    for layer, lp in zip(data["layers"], build_pool(teacher, "small")):
        assert list(layer["scores"]) == lp.keys
        assert all(isinstance(v, float) and math.isfinite(v) for v in layer["scores"].values())
    assert read_scores(path, teacher=teacher, pool="small")["teacher"] == "demo"


def test_teacher_op_scores_zero_and_identity_hurts(teacher, scores):
    _, result = scores
    identity = []
    for layer in result["layers"]:
        for key, value in layer["scores"].items():
            if key.startswith("teacher:"):
                assert value == 0.0
            if key.startswith("identity:"):
                identity.append(value)
    same_shape = [l for l in teacher.layers if l.in_shape == l.out_shape and l.stride == 1]
    assert len(identity) == len(same_shape) > 0
    assert statistics.mean(identity) > 0


def test_prefix_reuse_equals_full_forward(teacher, tiny, pretrained):
    # The first, a middle and the last layer: the prefix replayed is empty, partial and whole.
    layers = [0, len(teacher.layers) // 2, len(teacher.layers) - 1]
    reuse = score(pretrained, teacher, "small", tiny, None, samples=20, batch_size=10,
                  layers=layers, progress=False)
    naive = score(pretrained, teacher, "small", tiny, None, samples=20, batch_size=10,
                  layers=layers, method="naive", progress=False)
    assert [l["index"] for l in reuse["layers"]] == layers
    assert reuse["teacher_loss"] == pytest.approx(naive["teacher_loss"], abs=1e-6)
    for a, b in zip(reuse["layers"], naive["layers"]):
        for key in a["scores"]:
            assert a["scores"][key] == pytest.approx(b["scores"][key], abs=1e-5), key
            assert a["top1"][key] == b["top1"][key]


def test_reuse_network_logits_match_swapped_teacher(teacher, tiny):
    from lana.ops import create_op

    x = tiny.calib.tensors()[0][:8]
    net = ReuseNetwork(teacher)
    torch.testing.assert_close(net.capture(x), teacher.model(x))
    spec = next(s for s in __import__("lana.pool", fromlist=["x"]).build_pool(
        teacher, "small")[4].specs if s.family == "cb_stack")
    op = create_op(spec).eval()
    with torch.no_grad():
        want = teacher.replaced({4: op})(x)
    torch.testing.assert_close(net.with_op(x, 4, op), want, rtol=1e-5, atol=1e-5)


def test_scores_for_another_teacher_are_refused(scores, tmp_path):
    path, _ = scores
    data = json.loads(path.read_text())
    data["teacher"] = "efficientnet_b0"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ScoreError, match="lana score --teacher demo"):
        read_scores(other, teacher="demo")
    with pytest.raises(ScoreError, match="--pool"):
        read_scores(path, pool="full")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ScoreError, match="not valid JSON"):
        read_scores(tmp_path / "bad.json")


def test_single_shot_pool_needs_no_pretraining(teacher, tiny):
    result = score(None, teacher, "single-shot", tiny, None, samples=32, progress=False)
    families = {k.split(":")[0] for l in result["layers"] for k in l["scores"]}
    assert families == {"teacher", "identity"}
    with pytest.raises(ScoreError, match="--pretrain"):
        score(None, teacher, "small", tiny, None, samples=32, progress=False)
    with pytest.raises(ScoreError, match="cannot be written"):
        score(None, teacher, "single-shot", tiny, "x.json", layers=[2], progress=False)

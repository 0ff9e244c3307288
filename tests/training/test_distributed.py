"""Two processes on the CPU (gloo), launched by torchrun: pretraining shards the ops, fine-tuning
runs data-parallel with DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys


from lana.distributed import iter_batches, num_batches, shard_balanced, as_split


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "lana", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_shard_balanced_splits_all_items_once():
    items = list(range(11))
    costs = [5, 1, 1, 1, 8, 2, 2, 3, 1, 1, 4]
    parts = [shard_balanced(items, costs, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items
    loads = [sum(costs[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(costs)


def test_data_shards_are_disjoint_and_equal_in_count():
    import torch

    split = as_split((torch.arange(50).float().view(50, 1, 1, 1), torch.arange(50)))
    seen = []
    counts = []
    for rank in range(2):
        batches = list(iter_batches(split, 8, shuffle=True, seed=1, epoch=3, rank=rank, world=2))
        counts.append(len(batches))
        seen += [int(v) for _, y in batches for v in y]
    assert counts[0] == counts[1] == num_batches(50, 8, 2)
    assert len(seen) == len(set(seen))


def test_two_process_gloo_pretrain_and_finetune(teacher, tmp_path):
    r = _torchrun(["pretrain", "--teacher", "demo", "--out", str(tmp_path / "p"), "--images",
                   "32", "--epochs", "1", "--layer", "8", "--layer", "9", "--no-progress"],
                  tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pending" in r.stdout  # the layers it was not asked to train
    manifest = json.loads((tmp_path / "p" / "pretrain.json").read_text())
    assert manifest["world_size"] == 2
    ops = [op for layer in manifest["layers"][8:10] for op in layer["ops"].values()
           if op["status"] == "trained"]
    assert len(ops) >= 28
    assert {op["rank"] for op in ops} == {0, 1}
    assert all((tmp_path / "p" / op["file"]).is_file() for op in ops)

    from lana.pool import build_pool

    pools = build_pool(teacher, "small")
    keys = [next(s for s in lp.specs if s.family == ("efn" if i == 8 else "teacher")).key
            for i, lp in enumerate(pools)]
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"schema": "lana.arch/1", "teacher": "demo", "pool": "small",
                                "ops": keys}))
    r = _torchrun(["finetune", "--arch", str(arch), "--pretrain", str(tmp_path / "p"), "--out",
                   str(tmp_path / "ft"), "--epochs", "1", "--images", "64", "--batch-size",
                   "16", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["val_top1"]) == 1
    assert (tmp_path / "ft" / "student.pt").is_file()

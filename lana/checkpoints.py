"""Per-(layer, op) weight files written by pretraining and read by scoring, selection and assembly.

A file holds the op key, the teacher and pool it belongs to, and a SHA-256 of its tensors, so a file
from another pool or teacher is refused and a corrupt file is never silently reused.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from lana.atomic import write_bytes
from lana.errors import LanaError


class CheckpointError(LanaError):
    """A checkpoint that is corrupt or belongs to another teacher, pool or op."""


def op_checkpoint_path(root: str | Path, layer_index: int, key: str) -> Path:
    """Where the pretrained weights of op ``key`` at layer ``layer_index`` live under ``root``."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(root) / f"layer{layer_index:03d}" / f"{digest}.pt"


def _tensor_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], **meta: Any) -> None:
    """Write atomically (temp file + rename): an interrupted write never leaves a partial file."""
    payload = {"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "digest": _tensor_digest(state_dict), "meta": meta}
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, **expect: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint, verifying its digest and that its metadata matches ``expect``."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state, digest, meta = payload["state_dict"], payload["digest"], payload["meta"]
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it "
                              f"and re-run the stage that writes it") from exc
    if _tensor_digest(state) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt (digest mismatch); delete it and re-run "
                              f"the stage that writes it")
    for name, value in expect.items():
        if meta.get(name) != value:
            raise CheckpointError(f"checkpoint {path} is for {name}={meta.get(name)!r}, not "
                                  f"{value!r}; use a fresh output directory or pass --force")
    return state, meta

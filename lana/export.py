"""ONNX export of ops and networks, cached by content hash so nothing is exported twice.

The cache key covers what determines the file: the module's structure (``repr``), its parameters and
buffers, the input shape, the opset and the torch version.  Profilers seed the weights of each op from
its key, so the same op always hashes the same and is exported once per machine.
"""

from __future__ import annotations

import errno
import hashlib
import io
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lana.atomic import write_bytes
from lana.errors import LanaError

OPSET = 17


class ExportError(LanaError):
    """A module could not be exported to ONNX."""


class StorageError(LanaError):
    """An export could not be stored (a full disk, a cache path that is not a folder): a problem of
    the machine, not of the op."""


def default_cache_dir() -> Path:
    """Where exports are cached: ``onnx/`` under :func:`lana.cache.cache_root` (`lana cache`)."""
    from lana.cache import cache_root

    return cache_root() / "onnx"


def content_hash(module: nn.Module, input_shape: Sequence[int], opset: int = OPSET) -> str:
    """Hash of everything that determines the exported file: structure, plain attributes, tensors."""
    h = hashlib.sha256()
    h.update(f"{torch.__version__}|{opset}|{tuple(input_shape)}|".encode())
    h.update(repr(module).encode())
    # repr() leaves out plain attributes (a head count, a residual flag), which change the graph.
    for name, sub in module.named_modules():
        plain = sorted((k, repr(v)) for k, v in vars(sub).items()
                       if not k.startswith("_") and isinstance(v, (int, float, str, bool, tuple,
                                                                   type(None))))
        h.update(f"{name}:{plain}".encode())
    for name, tensor in list(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def export_onnx(module: nn.Module, input_shape: Sequence[int], path: str | Path | None = None,
                cache_dir: str | Path | None = None, *, opset: int = OPSET,
                dynamic_batch: bool = False) -> Path:
    """Export ``module`` (in eval mode) for an input of ``input_shape`` (batch included).

    With ``path`` the file is written there; otherwise into the content-hash cache, and a cached file
    is returned without exporting again.  Raises :class:`ExportError` naming the module on failure.
    """
    if path is None:
        return cached_export(module, input_shape, cache_dir, opset=opset,
                             dynamic_batch=dynamic_batch)[0]
    return _export(module.eval(), input_shape, Path(path), opset, dynamic_batch)


def cached_export(module: nn.Module, input_shape: Sequence[int],
                  cache_dir: str | Path | None = None, *, opset: int = OPSET,
                  dynamic_batch: bool = False) -> tuple[Path, bool]:
    """:func:`export_onnx` into the content-hash cache: ``(path, True if exported by this call)``.

    A cache hit refreshes the file's time: `lana cache prune` removes the least recently used first.
    """
    module = module.eval()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot use {cache} as the ONNX export cache ({exc.strerror or exc}); "
                           f"point LANA_CACHE_DIR (or --cache-dir) at a folder you can write") from None
    suffix = "-dyn" if dynamic_batch else ""
    target = cache / f"{content_hash(module, input_shape, opset)}{suffix}.onnx"
    if target.exists() and target.stat().st_size > 0:
        from lana.cache import touch

        touch(target)
        return target, False
    return _export(module, input_shape, target, opset, dynamic_batch), True


def _export(module: nn.Module, input_shape: Sequence[int], target: Path, opset: int,
            dynamic_batch: bool) -> Path:
    example = torch.randn(*input_shape)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"], do_constant_folding=True,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch
                else None)
    except Exception as exc:  # exporter errors come in many types; name the module and the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export of {type(module).__name__} for input {tuple(input_shape)} "
                          f"failed: {first[:300]}") from exc
    # Atomic write: a concurrent reader or an interrupted export never sees a partial file.
    data = buffer.getvalue()
    try:
        write_bytes(target, data, durable=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StorageError(f"no room for the {len(data) / 1e6:.0f} MB ONNX file of "
                           f"{type(module).__name__} in {target.parent} (disk full); free space "
                           f"there (`lana cache prune`), or point TMPDIR or LANA_CACHE_DIR at a "
                           f"disk with more") from None
    return target


def run_onnx(path: str | Path, x: "torch.Tensor | object", threads: int = 1):
    """Run an exported file once in ONNX Runtime on the CPU (for parity checks)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return session.run(None, {session.get_inputs()[0].name: arr.astype(np.float32)})[0]

"""What lana keeps between runs under ``$LANA_CACHE_DIR`` (default ``~/.cache/lana``), and trimming it.

``onnx/``
    Exported ONNX files, one per (op, input shape, opset, torch version).  Profiling reuses them, so a
    re-profile or a resumed profile exports nothing twice; but every new pool, batch size and torch
    version adds files, and a full pool of a large teacher is gigabytes.  A cache hit refreshes the
    file's time, so :func:`prune` removes the least recently used first.
``native/``
    The compiled timing extension, one build per torch version (rebuilt on demand).
``benchmarks/``
    LUTs the benchmarks profile and reuse while the op code is unchanged.
``trt/``
    TensorRT's timing cache (tactic timings shared between engine builds; the ``timing_cache``
    option of the TensorRT presets).

Everything here can be deleted at any time; the cost is re-exporting, rebuilding or re-profiling.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lana.errors import LanaError
from profilers.system import cache_root  # noqa: F401 - one definition, shared with the native build

PARTS = ("onnx", "native", "benchmarks", "trt")


class CacheError(LanaError):
    """A cache request that cannot be carried out as given."""


@dataclass(frozen=True)
class PartUsage:
    """Files and bytes under one part of the cache."""

    name: str
    path: str
    files: int
    bytes: int
    oldest: float | None  # modification times (seconds since the epoch), None when empty
    newest: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _base(root: str | Path | None) -> Path:
    base = Path(root) if root is not None else cache_root()
    if base.exists() and not base.is_dir():
        raise CacheError(f"the cache {base} is a file, not a folder; point LANA_CACHE_DIR at a "
                         f"folder")
    return base


def _files(path: Path) -> list[tuple[Path, os.stat_result]]:
    out = []
    for dirpath, _, names in os.walk(path):
        for name in names:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:  # removed while we looked
                continue
            out.append((p, st))
    return out


def usage(root: str | Path | None = None, parts: tuple[str, ...] = PARTS) -> list[PartUsage]:
    """One :class:`PartUsage` per part of the cache named in ``parts`` (empty ones included)."""
    base = _base(root)
    found = []
    for name in parts:
        files = _files(base / name)
        times = [st.st_mtime for _, st in files]
        found.append(PartUsage(name, str(base / name), len(files), sum(st.st_size for _, st in files),
                               min(times) if times else None, max(times) if times else None))
    return found


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_AGE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_AGE_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """Bytes from ``"500M"``, ``"5G"``, ``"2.5GB"``, ``"1GiB"`` or a plain byte count (powers of 1024)."""
    m = _SIZE.match(str(text))
    if not m:
        raise CacheError(f"size {text!r} is not a size; write it like 500M, 5G or 2.5GB")
    if not m.group(2) and not m.group(1).isdigit():  # "0.5" would keep nothing: 0 bytes
        raise CacheError(f"size {text!r} has no unit and is not a whole number of bytes; write "
                         f"it like 500M, 5G or 2.5GB")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def parse_age(text: str) -> float:
    """Seconds from ``"90s"``, ``"30m"``, ``"12h"``, ``"30d"`` or ``"2w"``."""
    m = _AGE.match(str(text))
    if not m:
        raise CacheError(f"age {text!r} is not an age; write it like 12h, 30d or 2w")
    return float(m.group(1)) * _AGE_S[m.group(2).lower()]


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Removed:
    """What a prune or clear deleted (or, with ``dry_run``, would delete)."""

    files: int
    bytes: int
    kept_files: int
    kept_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def prune(max_size: int | None = None, older_than: float | None = None, *,
          root: str | Path | None = None, dry_run: bool = False, now: float | None = None
          ) -> Removed:
    """Trim the ONNX export cache: drop files unused for ``older_than`` seconds, then the least
    recently used until at most ``max_size`` bytes remain.  At least one limit must be given."""
    if max_size is None and older_than is None:
        raise CacheError("say how much to keep: --max-size (like 5G) and/or --older-than (like 30d)")
    if max_size is not None and max_size < 0 or older_than is not None and older_than < 0:
        raise CacheError("--max-size and --older-than must not be negative")
    base = _base(root)
    files = sorted(((p, st) for p, st in _files(base / "onnx")  # not an export being written:
                    if p.suffix == ".onnx" and not p.name.startswith(".")),
                   key=lambda f: f[1].st_mtime, reverse=True)  # newest first
    now = time.time() if now is None else now
    drop, kept, full = [], 0, False
    for p, st in files:
        too_old = older_than is not None and now - st.st_mtime > older_than
        full = full or max_size is not None and kept + st.st_size > max_size  # and all older go
        if too_old or full:
            drop.append((p, st))
        else:
            kept += st.st_size
    if not dry_run:
        for p, _ in drop:
            p.unlink(missing_ok=True)
    return Removed(len(drop), sum(st.st_size for _, st in drop), len(files) - len(drop), kept)


def clear(parts: tuple[str, ...] = PARTS, *, root: str | Path | None = None,
          dry_run: bool = False) -> Removed:
    """Delete the named parts of the cache entirely."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise CacheError(f"no cache part {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    base = _base(root)
    found = [f for name in parts for f in _files(base / name)]
    if not dry_run:
        for name in parts:
            shutil.rmtree(base / name, ignore_errors=True)
    return Removed(len(found), sum(st.st_size for _, st in found), 0, 0)


def touch(path: Path) -> None:
    """Mark a cached file as just used (the order :func:`prune` removes in)."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache still serves hits
        pass

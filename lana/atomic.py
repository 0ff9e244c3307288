"""Writing result files so that a reader or an interruption never sees half of one.

Every file lana writes for a user (LUTs, scores, architectures, checkpoints, students, exports, plots)
goes through :func:`write_bytes`: a temporary file beside the target, flushed to disk, then renamed
over it.  Two things a plain rename would get wrong are handled here: a symlink stays a link (the file
it points to is replaced), and a target that is not a regular file (``/dev/stdout``, a FIFO) is
written in place instead of being replaced by a file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically; the path written (a symlink's target).

    ``durable`` waits for the data to reach the disk before the rename (fsync), so a crash of the
    machine leaves the old file or the new one; files that can be made again skip the wait."""
    given = Path(path)
    try:
        mode = given.stat().st_mode  # follows symlinks
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{given} is a folder")
        with open(given, "wb") as f:  # a device or a pipe: there is nothing to replace
            f.write(data)
        return given
    target = Path(os.path.realpath(given))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: str | os.PathLike[str], **kwargs) -> Path:
    """A matplotlib figure as a PNG at ``path``, written like every other result file."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return write_bytes(path, buf.getvalue())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

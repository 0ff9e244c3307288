"""Result files are replaced whole, through symlinks, and never over a device or a pipe."""

from __future__ import annotations

import os
import stat
import threading

import pytest

import lana.atomic
from lana.atomic import write_bytes, write_text


def test_replaces_whole_and_keeps_the_mode(tmp_path):
    path = tmp_path / "a.json"
    assert write_text(path, "one") == path and path.read_text() == "one"
    path.chmod(0o640)
    write_text(path, "two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left
    write_bytes(tmp_path / "new" / "deeper" / "b.bin", b"\x00\x01", durable=False)
    assert (tmp_path / "new" / "deeper" / "b.bin").read_bytes() == b"\x00\x01"


def test_a_symlink_stays_a_link_to_the_new_content(tmp_path):
    real = tmp_path / "luts" / "v1.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "current.json"
    link.symlink_to(real)
    assert write_text(link, "new") == real
    assert link.is_symlink() and link.read_text() == "new" and real.read_text() == "new"


def test_a_device_or_pipe_is_written_in_place_not_replaced(tmp_path):
    before = os.stat("/dev/null")
    write_text("/dev/null", "discarded")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_bytes(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_folder_is_refused_and_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    with pytest.raises(IsADirectoryError):
        write_text(tmp_path, "x")
    path = tmp_path / "a.json"
    path.write_text("old")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lana.atomic.os, "replace", broken)
    with pytest.raises(OSError, match="No space left"):
        write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]

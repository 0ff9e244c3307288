"""The cache between runs: where it is, least-recently-used pruning, clearing, and `lana cache`."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from torch import nn

from lana.cache import CacheError, cache_root, clear, parse_age, parse_size, prune, usage
from lana.cli import main as cli_main
from lana.export import default_cache_dir, export_onnx


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("LANA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _file(path, size: int, age_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LANA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lana"
    monkeypatch.setenv("LANA_CACHE_DIR", "~/somewhere")
    assert str(cache_root()) == os.path.expanduser("~/somewhere") and "~" not in str(cache_root())
    assert default_cache_dir() == cache_root() / "onnx"
    # a relative folder is made absolute, so a change of directory keeps the same cache
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LANA_CACHE_DIR", "rel")
    assert cache_root() == tmp_path / "rel" and cache_root().is_absolute()


def test_a_cache_hit_marks_the_export_as_recently_used(root):
    module = nn.Conv2d(3, 4, 3, padding=1)
    path = export_onnx(module, (1, 3, 8, 8))
    assert path.parent == root / "onnx"
    old = time.time() - 86400
    os.utime(path, (old, old))
    again = export_onnx(module, (1, 3, 8, 8))
    assert again == path and time.time() - path.stat().st_mtime < 60


def test_prune_keeps_the_most_recently_used_within_the_size(root):
    onnx = root / "onnx"
    for i, age in enumerate((10, 20, 30, 40)):  # a.onnx newest
        _file(onnx / f"{'abcd'[i]}.onnx", 100, age)
    _file(onnx / ".export-1234.onnx", 100, 99)  # an export being written: left alone
    dry = prune(max_size=250, dry_run=True)
    assert (dry.files, dry.bytes, dry.kept_files, dry.kept_bytes) == (2, 200, 2, 200)
    assert len(list(onnx.glob("[a-d].onnx"))) == 4  # a dry run deletes nothing
    done = prune(max_size=250)
    assert done == dry
    assert sorted(p.name for p in onnx.glob("[a-d].onnx")) == ["a.onnx", "b.onnx"]
    assert (onnx / ".export-1234.onnx").exists()


def test_prune_never_keeps_an_older_file_after_a_newer_one_was_dropped(root):
    onnx = root / "onnx"
    _file(onnx / "new.onnx", 100, 1)
    _file(onnx / "big.onnx", 500, 2)
    _file(onnx / "old.onnx", 10, 3)  # would fit, but is older than a file that did not
    prune(max_size=150)
    assert sorted(p.name for p in onnx.glob("*.onnx")) == ["new.onnx"]


def test_prune_by_age(root):
    onnx = root / "onnx"
    _file(onnx / "recent.onnx", 10, 3600)
    _file(onnx / "stale.onnx", 10, 40 * 86400)
    removed = prune(older_than=parse_age("30d"))
    assert removed.files == 1 and sorted(p.name for p in onnx.iterdir()) == ["recent.onnx"]


def test_clear_deletes_named_parts_only(root):
    _file(root / "onnx" / "a.onnx", 10, 0)
    _file(root / "benchmarks" / "lut.json", 20, 0)
    removed = clear(("benchmarks",))
    assert (removed.files, removed.bytes) == (1, 20)
    assert not (root / "benchmarks").exists() and (root / "onnx" / "a.onnx").exists()
    with pytest.raises(CacheError, match="the parts are onnx, native, benchmarks, trt"):
        clear(("models",))


@pytest.mark.parametrize("text, value", [("500", 500), ("2k", 2048), ("5G", 5 * 1024 ** 3),
                                         ("2.5GB", int(2.5 * 1024 ** 3)), ("1 MiB", 1024 ** 2)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "5X", "-1G", "G", "5 ms", "0.5", "2.", "1.5B"])
def test_parse_size_refuses_what_is_not_a_size(bad):
    with pytest.raises(CacheError, match="write it like 500M"):
        parse_size(bad)


def test_parse_age():
    assert parse_age("90s") == 90 and parse_age("12h") == 43200 and parse_age("2w") == 14 * 86400
    with pytest.raises(CacheError, match="write it like 12h"):
        parse_age("30")


def test_cache_command_shows_prunes_and_refuses_with_one_line(root, capsys):
    _file(root / "onnx" / "a.onnx", 300, 5)
    _file(root / "onnx" / "b.onnx", 300, 50)
    _file(root / "native" / "2.0" / "timer.so", 7, 0)
    assert cli_main(["cache", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["root"] == str(root)
    parts = {p["name"]: p for p in shown["parts"]}
    assert (parts["onnx"]["files"], parts["onnx"]["bytes"]) == (2, 600)
    assert (parts["native"]["files"], parts["benchmarks"]["files"]) == (1, 0)
    assert usage()[0].to_dict() == parts["onnx"]

    assert cli_main(["cache", "prune", "--max-size", "400"]) == 0
    assert "pruned 1 files (300 B); 1 files (300 B) kept" in capsys.readouterr().out
    assert [p.name for p in (root / "onnx").iterdir()] == ["a.onnx"]

    assert cli_main(["cache", "prune"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: say how much to keep: --max-size (like 5G) and/or --older-than (like 30d)")
    assert cli_main(["cache", "prune", "--older-than", "soon"]) == 2
    assert "write it like 12h" in capsys.readouterr().err

    assert cli_main(["cache", "clear", "--dry-run"]) == 0
    assert "would delete 2 files (307 B)" in capsys.readouterr().out
    assert cli_main(["cache", "clear"]) == 0
    assert not any(p.exists() for p in (root / "onnx", root / "native"))


def test_sigterm_unwinds_a_command_like_ctrl_c(monkeypatch, capsys):
    """`kill`, `timeout` and batch schedulers send SIGTERM: the command's finally blocks run (partial
    results flushed, temporary files removed) and lana exits with 143."""
    cleaned = []

    def slow(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
            return 0
        finally:
            cleaned.append(True)

    import lana.commands.cache as cache_command

    monkeypatch.setattr(cache_command, "run_show", slow)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main(["cache"]) == 143
    assert cleaned == [True]
    assert capsys.readouterr().err == "terminated\n"  # lana cache keeps nothing to continue
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored for the caller


def test_profile_says_when_the_exports_have_grown_large(root, monkeypatch, capsys):
    import lana.commands.profile as profile_command

    _file(root / "onnx" / "a.onnx", 300, 0)
    profile_command._cache_hint()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(profile_command, "CACHE_HINT_BYTES", 200)
    profile_command._cache_hint()
    assert "holds 300 B; `lana cache prune --max-size 5G`" in capsys.readouterr().err


def test_a_cache_path_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    import lana.export

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("x")
    monkeypatch.setenv("LANA_CACHE_DIR", str(not_a_folder))
    assert cli_main(["cache"]) == 2
    assert capsys.readouterr().err == (f"error: the cache {not_a_folder} is a file, not a folder; "
                                       "point LANA_CACHE_DIR at a folder\n")
    with pytest.raises(lana.export.StorageError, match="cannot use .* as the ONNX export cache"):
        export_onnx(nn.ReLU(), (1, 3, 4, 4))

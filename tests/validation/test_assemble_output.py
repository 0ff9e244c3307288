"""What lana assemble leaves in --out: a whole set of files (old or new), never a mix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import warnings
from pathlib import Path

import pytest
import torch

import lana.assemble as assemble_module
from lana.assemble import Architecture, assemble, read_arch, read_student, write_arch
from lana.cli import main
from lana.errors import LanaError

OWNED = {"arch.json", "student.pt", "student.onnx", "assembly.json"}
DEAD_PID = 2**22 + 1  # above the largest pid_max Linux allows: no such process


def arch_of(pool, pick: int) -> Architecture:
    """The same non-teacher op index ``pick`` in every layer that has one."""
    ops = tuple(lp.keys[min(pick, len(lp.keys) - 1)] for lp in pool)
    return Architecture("demo", "small", ops, tuple(lp.layer.name for lp in pool))


def quiet_assemble(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return assemble(*args, **kwargs)


def files(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder`` (hidden ones too) with its bytes (None for a folder)."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in sorted(folder.iterdir())}


def holds_set_of(folder: Path, arch: Architecture, *, onnx: bool) -> bool:
    """Whether ``folder``'s assemble files are one complete set, all of ``arch``."""
    names = {p.name for p in folder.iterdir() if p.name in OWNED or p.name.startswith(".")}
    if names != OWNED - (set() if onnx else {"student.onnx"}):
        return False
    summary = json.loads((folder / "assembly.json").read_text())
    return (read_arch(folder / "arch.json").ops == arch.ops
            and tuple(read_student(folder / "student.pt")["arch"]["ops"]) == arch.ops
            and tuple(w["op"] for w in summary["layers"]) == arch.ops
            and (summary["onnx"] is not None) == onnx)


@pytest.fixture
def two_archs(demo_pool, tmp_path):
    """Files of two different architectures and an --out holding the first one's set, plus a
    file assemble does not own."""
    old, new = arch_of(demo_pool, 1), arch_of(demo_pool, 2)
    assert old.ops != new.ops
    write_arch(old, tmp_path / "old.json")
    write_arch(new, tmp_path / "new.json")
    out = tmp_path / "out"
    quiet_assemble(tmp_path / "old.json", out)
    (out / "notes.txt").write_text("mine")
    assert holds_set_of(out, old, onnx=True)
    return old, new, out


def test_an_interrupted_assembly_keeps_the_old_set(two_archs, tmp_path, monkeypatch):
    old, new, out = two_archs
    before = files(out)
    import lana.export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lana.export, "export_onnx", interrupted)  # after arch.json and student.pt
    with pytest.raises(KeyboardInterrupt):
        quiet_assemble(tmp_path / "new.json", out)
    assert files(out) == before  # no new arch.json or student.pt, no staging folder left
    assert not [p for p in tmp_path.iterdir() if ".assemble-" in p.name]


@pytest.mark.parametrize("onnx", [True, False])
def test_ctrl_c_at_any_file_leaves_a_whole_set(onnx, two_archs, tmp_path, monkeypatch):
    """Ctrl-C right after each rename assemble makes: the old set or the new one, never a mix."""
    old, new, out = two_archs
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    before = files(out)
    real = {"replace": os.replace, "rename": os.rename}
    outcomes = []
    n = 1
    while True:
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        calls = 0

        def counting(name):
            def call(*args, **kwargs):
                nonlocal calls
                result = real[name](*args, **kwargs)
                calls += 1
                if calls == n:
                    signal.raise_signal(signal.SIGINT)
                return result
            return call

        monkeypatch.setattr(os, "replace", counting("replace"))
        monkeypatch.setattr(os, "rename", counting("rename"))
        try:
            quiet_assemble(tmp_path / "new.json", out, onnx=onnx)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            monkeypatch.setattr(os, "replace", real["replace"])
            monkeypatch.setattr(os, "rename", real["rename"])
        assert (out / "notes.txt").read_text() == "mine", n
        if files(out) == before:
            outcomes.append("old")
        else:
            assert holds_set_of(out, new, onnx=onnx), f"a mixed set after rename {n}"
            outcomes.append("new")
        assert not [p for p in tmp_path.iterdir() if ".assemble-" in p.name], n
        if not interrupted:
            break
        n += 1
    assert outcomes[0] == "old" and outcomes[-1] == "new" and n > 4


def test_without_onnx_an_older_onnx_goes(two_archs, tmp_path):
    old, new, out = two_archs
    assert main(["assemble", "--arch", str(tmp_path / "new.json"), "--out", str(out),
                 "--no-onnx", "--json"]) == 0
    assert not (out / "student.onnx").exists()
    assert holds_set_of(out, new, onnx=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_new_folder_appears_whole_or_not_at_all(demo_pool, tmp_path, monkeypatch):
    arch = arch_of(demo_pool, 1)
    write_arch(arch, tmp_path / "arch.json")
    out = tmp_path / "a" / "b" / "out"
    import lana.export

    real = lana.export.export_onnx

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lana.export, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quiet_assemble(tmp_path / "arch.json", out)
    assert not out.exists() and not list(out.parent.iterdir())
    monkeypatch.setattr(lana.export, "export_onnx", real)
    result = quiet_assemble(tmp_path / "arch.json", out)
    assert holds_set_of(out, arch, onnx=True)
    assert result.student_path == out / "student.pt" and result.onnx_path == out / "student.onnx"
    assert json.loads((out / "assembly.json").read_text())["student"] == str(out / "student.pt")
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_a_killed_assembly_is_finished_or_discarded_by_the_next(two_archs, tmp_path):
    old, new, out = two_archs
    quiet_assemble(tmp_path / "new.json", tmp_path / "newset", onnx=False)
    # Killed after two of the three renames of a complete set: finished by the next run.
    ready = out / f".assemble-{DEAD_PID}.ready"
    shutil.copytree(tmp_path / "newset", ready)
    for name in ("arch.json", "student.pt"):
        os.replace(ready / name, out / name)
    # Killed while writing: discarded, as is a half-written sibling of a folder not made yet.
    (out / f".assemble-{DEAD_PID}").mkdir()
    (out / f".assemble-{DEAD_PID}" / "arch.json").write_text("{")
    (tmp_path / f".other.assemble-{DEAD_PID}").mkdir()
    assemble_module._prepare_out(out)
    assemble_module._prepare_out(tmp_path / "other")
    assert holds_set_of(out, new, onnx=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (tmp_path / f".other.assemble-{DEAD_PID}").exists()
    # A staging folder of a running process is left alone.
    (out / f".assemble-{os.getppid()}").mkdir()
    assemble_module._prepare_out(out)
    assert (out / f".assemble-{os.getppid()}").is_dir()


def test_a_folder_where_a_file_goes_is_refused(two_archs, tmp_path, capsys):
    old, new, out = two_archs
    (out / "student.onnx").unlink()
    (out / "student.onnx").mkdir()
    assert main(["assemble", "--arch", str(tmp_path / "new.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "student.onnx is a folder" in err and err.count("\n") == 1
    assert read_arch(out / "arch.json").ops == old.ops
    (tmp_path / "file").write_text("x")
    with pytest.raises(LanaError, match="is a file, not a folder"):
        quiet_assemble(tmp_path / "new.json", tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_assembly_from_another_thread(two_archs, tmp_path):
    """Signals reach only the main thread: another one replaces the set without holding them."""
    old, new, out = two_archs
    worker = threading.Thread(target=quiet_assemble, args=(tmp_path / "new.json", out))
    worker.start()
    worker.join()
    assert holds_set_of(out, new, onnx=True)


def test_teacher_weights_the_ops_were_not_distilled_from_are_refused(demo_pool, tmp_path,
                                                                     capsys):
    from lana.pretrain import MANIFEST, SCHEMA, teacher_digest
    from lana.teachers import create_teacher

    shipped = create_teacher("demo")
    assert shipped.pretrained
    arch = arch_of(demo_pool, 1)
    write_arch(arch, tmp_path / "arch.json")
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / MANIFEST).write_text(json.dumps(
        {"schema": SCHEMA, "teacher": "demo", "pool": "small", "layers": [],
         "teacher_digest": teacher_digest(shipped)}))
    other = create_teacher("demo", pretrained=False)
    torch.save(other.model.state_dict(), tmp_path / "tw.pt")
    args = ["assemble", "--no-onnx", "--arch", str(tmp_path / "arch.json"), "--pretrain",
            str(tmp_path / "pre"), "--out", str(tmp_path / "a3")]
    assert main([*args, "--teacher-weights", str(tmp_path / "tw.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "was distilled from other weights of teacher demo" in err
    assert not (tmp_path / "a3").exists()
    # The weights the ops were distilled from, shipped or named, are accepted.
    torch.save(shipped.model.state_dict(), tmp_path / "same.pt")
    assert main([*args, "--teacher-weights", str(tmp_path / "same.pt"), "--json"]) == 0
    assert main([*args, "--json"]) == 0
    capsys.readouterr()

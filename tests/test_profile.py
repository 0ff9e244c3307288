"""lana-profile on the demo teacher with a tiny protocol: complete LUTs, resume, bad input, kills."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import lana.export
from lana.cli import main as cli_main
from lana.errors import UnknownNameError
from lana.lut import Lut, LutWriter, journal_path
from lana.ops import create_op, deploy
from lana.profile import ProfileError, in_shard, profile
from lana.spec import parse_key
from profilers.system import cpu_model

ROOT = Path(__file__).resolve().parents[1]
TINY = """extends = "cpu-ort"
threads = 1
[protocol]
warmup_s = 0.0
warmup_iters = 1
min_iters = 3
min_time_s = {min_time}
retries = 0
"""
SHARD = "1/6"


def preset(tmp_path, name="tiny", min_time=0.0) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(min_time=min_time))
    return str(path)


@pytest.fixture(scope="module")
def demo_pool():
    from lana.pool import build_pool
    from lana.teachers import create_teacher

    teacher = create_teacher("demo", pretrained=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return teacher, build_pool(teacher, "small")


def shard_keys(layer_pools, shard=SHARD) -> list[str]:
    i, n = (int(v) for v in shard.split("/"))
    keys = dict.fromkeys(k for lp in layer_pools for k in lp.keys)
    return [k for k in keys if in_shard(k, (i, n))]


def test_profile_writes_a_complete_versioned_lut(tmp_path, demo_pool):
    teacher, layer_pools = demo_pool
    out = tmp_path / "demo.json"
    report = profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD)
    expected = shard_keys(layer_pools)
    assert report.total == len(expected) and report.failed == 0 and report.reused == 0
    assert report.measured == len(expected)  # each distinct key once
    assert report.skeleton in ("measured", "noisy")  # and the skeleton, counted apart
    lut = Lut.load(out, teacher="demo", batch_size=1)
    assert set(lut.entries) == set(expected)
    lut.require(expected)
    assert lut.fixed_ms > 0 and lut.fixed["n"] >= 3
    assert [layer["name"] for layer in lut.layers] == [l.name for l in teacher.layers]
    assert [layer["ops"] for layer in lut.layers] == [lp.keys for lp in layer_pools]
    assert all(parse_key(layer["ops"][0]).family == "teacher" for layer in lut.layers)
    for key in expected:
        e = lut.entries[key]
        assert e["n"] >= 3 and e["p10"] <= e["median"] <= e["p90"] and e["median"] > 0
    assert lut.device["preset"] == "tiny" and lut.device["threads"] == 1
    assert lut.device["seen"]["cpu"] == cpu_model() and lut.device["seen"]["onnxruntime"]
    assert lut.device["backend_info"]["graph_optimization_level"] == "all"
    assert lut.protocol["min_iters"] == 3 and lut.data["shard"] == SHARD
    assert not journal_path(out).exists()
    load = lut.device["seen"]["load"]  # the machine's load while timing, recorded with the LUT
    assert load == report.load and load["threads"] == 1 and load["cpus"] >= 1
    assert load["checks"] >= 1 and isinstance(load["busy"], bool) and "others_peak" in load


def _json_report(capsys, args: list[str]) -> dict:
    assert cli_main(["profile", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The counts are of op keys, the skeleton is reported apart: measured never exceeds total.
    assert report["measured"] <= report["total"]
    assert report["measured"] + report["reused"] + report["failed"] == report["total"]
    assert report["noisy"] <= report["measured"]
    return report


def test_json_report_counts_are_consistent(tmp_path, capsys, demo_pool):
    out = tmp_path / "demo.json"
    args = ["--device", preset(tmp_path), "--teacher", "demo", "--pool", "small", "--out",
            str(out), "--shard", SHARD]
    first = _json_report(capsys, args)
    assert first["total"] == len(shard_keys(demo_pool[1])) > 0
    assert first["measured"] == first["total"] and first["failed"] == first["reused"] == 0
    assert first["skeleton"] in ("measured", "noisy") and Lut.load(out).fixed_ms > 0
    again = _json_report(capsys, args + ["--resume"])  # a complete file: nothing to measure
    assert again["measured"] == 0 and again["reused"] == again["total"] == first["total"]
    assert again["skeleton"] == "reused"
    other = _json_report(capsys, [*args[:-3], str(tmp_path / "two.json"), "--shard", "2/6"])
    assert other["measured"] == other["total"] == len(shard_keys(demo_pool[1], "2/6"))
    assert other["skeleton"] is None  # shard 1 measures it
    assert Lut.load(tmp_path / "two.json").fixed is None
    profile(preset(tmp_path), "demo", pool="small", out=tmp_path / "three.json", shard=SHARD)
    assert cli_main(["profile", *args[:-3], str(tmp_path / "three.json"), "--shard", SHARD,
                     "--resume"]) == 0
    assert f"0 measured, {first['total']} already there, 0 failed, 0 noisy of {first['total']} " \
           f"ops; the skeleton already there" in capsys.readouterr().out


def test_existing_file_is_refused_without_resume_or_force(tmp_path):
    out = tmp_path / "demo.json"
    out.write_text("{}")
    with pytest.raises(ProfileError, match="already exists; add --resume .* or --force") as info:
        profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD)
    assert "\n" not in str(info.value) and out.read_text() == "{}"


def test_interrupted_profile_resumes_without_remeasuring(tmp_path, demo_pool):
    out = tmp_path / "demo.json"
    tiny = preset(tmp_path)

    def stop_after_four(done, total, key):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile(tiny, "demo", pool="small", out=out, shard=SHARD, on_progress=stop_after_four)
    first = Lut.load(out).entries
    assert len(first) == 4 and not journal_path(out).exists()
    report = profile(tiny, "demo", pool="small", out=out, shard=SHARD, resume=True)
    assert report.reused == 4 and report.measured == report.total - 4
    assert report.skeleton in ("measured", "noisy")  # measured last: not before the interrupt
    final = Lut.load(out)
    assert set(final.entries) == set(shard_keys(demo_pool[1]))
    assert all(final.entries[k] == v for k, v in first.items())  # nothing measured twice
    # Other settings cannot be resumed into the same file.
    other = tmp_path / "other.toml"
    other.write_text(TINY.format(min_time=0.0).replace("min_iters = 3", "min_iters = 4"))
    with pytest.raises(ProfileError, match="differs in protocol"):
        profile(str(other), "demo", pool="small", out=out, shard=SHARD, resume=True)


def test_failed_export_and_engine_build_are_recorded(tmp_path, demo_pool, monkeypatch):
    keys = [k for k in shard_keys(demo_pool[1]) if parse_key(k).family not in ("teacher", "identity")]
    export_fails, build_fails = keys[0], keys[-1]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00 not a model")
    real_export = lana.export.cached_export

    def signature(key):
        spec = parse_key(key)
        return repr(deploy(create_op(spec))), (1, *spec.in_shape)

    sig_export, sig_build = signature(export_fails), signature(build_fails)
    assert sig_export != sig_build

    def flaky_export(module, input_shape, cache_dir=None, **kw):
        sig = (repr(module), tuple(input_shape))
        if sig == sig_export:
            raise lana.export.ExportError("ONNX export of Residual failed: unsupported operator")
        if sig == sig_build:
            return garbage, True
        return real_export(module, input_shape, cache_dir, **kw)

    monkeypatch.setattr(lana.export, "cached_export", flaky_export)
    out = tmp_path / "demo.json"
    report = profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD)
    lut = Lut.load(out)
    assert lut.failed(export_fails).startswith("export failed: ONNX export of Residual failed")
    assert lut.failed(build_fails).startswith("engine build failed: ONNX Runtime cannot load")
    assert not lut.has(export_fails) and report.failed >= 2
    assert report.measured == report.total - report.failed
    lut.require(shard_keys(demo_pool[1]))  # failed entries are present, skipped by the search
    # --resume tries failed ops again: here the export works now
    monkeypatch.undo()
    again = profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD, resume=True)
    assert again.retried == report.failed and again.failed == 0 and again.skeleton == "reused"
    assert Lut.load(out).has(export_fails) and Lut.load(out).has(build_fails)


def test_an_export_cache_cleared_during_the_profile_is_exported_again(tmp_path, demo_pool):
    import shutil

    cache = tmp_path / "cache"

    def clear_after_two(done, total, key):
        if done == 2:
            shutil.rmtree(cache)

    out = tmp_path / "demo.json"
    report = profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD,
                     cache_dir=cache, on_progress=clear_after_two)
    assert report.failed == 0 and report.measured == report.total
    assert report.exported >= report.total + (report.total - 2)  # all, then the rest again


def test_force_keeps_the_lut_it_replaces_until_the_new_profile_completes(tmp_path, capsys):
    out = tmp_path / "demo.json"
    tiny = preset(tmp_path)
    profile(tiny, "demo", pool="small", out=out, shard=SHARD)
    before = out.read_text()

    def stop_after_two(done, total, key):
        if done == 2:
            raise KeyboardInterrupt

    for _ in range(2):  # a second interrupted --force keeps the first backup
        with pytest.raises(KeyboardInterrupt):
            profile(tiny, "demo", pool="small", out=out, shard=SHARD, force=True,
                    on_progress=stop_after_two)
        assert (tmp_path / "demo.json.bak").read_text() == before
        assert len(Lut.load(out).entries) == 2
    assert "kept as" in capsys.readouterr().err
    profile(tiny, "demo", pool="small", out=out, shard=SHARD, force=True)
    assert not (tmp_path / "demo.json.bak").exists() and len(Lut.load(out).entries) > 2


def test_a_journal_without_its_lut_is_not_thrown_away(tmp_path):
    out = tmp_path / "demo.json"
    journal = journal_path(out)
    journal.write_text('{"key": null, "entry": {"median": 1.0}}\n')
    for resume in (False, True):
        with pytest.raises(ProfileError, match="whose LUT .* is gone; restore demo.json"):
            profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD, resume=resume)
    assert journal.exists() and not out.exists()


def test_a_second_profile_of_the_same_file_is_refused(tmp_path):
    from lana.profile import _exclusive

    out = tmp_path / "demo.json"
    with _exclusive(out):
        with pytest.raises(ProfileError, match=r"another lana-profile \(process \d+\) is writing"):
            profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD)
    assert not out.exists() and not list(tmp_path.glob(".*.lock"))


def test_an_out_that_cannot_be_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("")
    for bad, why in ((tmp_path / "afile" / "lut.json", "is a file, not a folder"),
                     (tmp_path, "is a folder")):
        with pytest.raises(ProfileError, match=why):
            profile(preset(tmp_path), "demo", pool="small", out=bad, shard=SHARD)


def test_a_full_disk_stops_the_profile_instead_of_failing_every_op(tmp_path, monkeypatch):
    import errno

    def full(path, data, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lana.export, "write_bytes", full)
    out = tmp_path / "demo.json"
    with pytest.raises(lana.export.StorageError, match="disk full"):
        profile(preset(tmp_path), "demo", pool="small", out=out, shard=SHARD,
                cache_dir=tmp_path / "empty-cache")
    # Nothing was timed: the file this call started is gone, so the same command runs again as is.
    assert not out.exists() and not journal_path(out).exists()


def test_unknown_device_and_missing_backend_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UnknownNameError, match="unknown device 'v200-trt'; valid: .*cpu-ort"):
        profile("v200-trt", "demo", out=tmp_path / "x.json")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ProfileError, match=r"install lana\[trt\]"):
            profile("trt", "demo", out=tmp_path / "x.json")
    code = cli_main(["profile", "--device", "nope", "--teacher", "demo", "--out",
                     str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown device 'nope'") and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_lut_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "lana.lut/1", "entries": {')
    assert cli_main(["lut", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: LUT file") and "truncated" in err and err.count("\n") == 1


# ------------------------------------------------------------------- a real process, killed
def _entries_now(out: Path) -> dict:
    if not out.exists():
        return {}
    try:
        lut = Lut.load(out, check_fingerprint=False)
    except Exception:  # the header may not be written yet
        return {}
    LutWriter.recover(lut, out)
    return dict(lut.entries)


def _default_sigint() -> None:
    # A shell that starts the test run in the background (`... &`) ignores SIGINT, and a child
    # inherits that; Python then never raises KeyboardInterrupt.  Give the child the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "lana", "profile", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(out: Path, proc: subprocess.Popen, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_entries_now(out)) < count:
        if proc.poll() is not None:
            raise AssertionError(f"profile ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("profile made no progress")
        time.sleep(0.02)


def test_killed_profile_process_loses_nothing_and_resumes(tmp_path, demo_pool):
    out = tmp_path / "demo.json"
    args = ["--device", preset(tmp_path, "slow", min_time=0.04), "--teacher", "demo", "--pool",
            "small", "--out", str(out), "--shard", "1/3", "--quiet"]
    expected = shard_keys(demo_pool[1], "1/3")

    proc = _start(args)
    _wait_for(out, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after_kill = _entries_now(out)
    assert 3 <= len(after_kill) < len(expected)

    proc = _start(args + ["--resume"])
    _wait_for(out, proc, len(after_kill) + 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    after_int = Lut.load(out).entries  # Ctrl-C flushed everything into the file itself
    assert not journal_path(out).exists()
    assert len(after_int) >= len(after_kill) + 3
    assert all(after_int[k] == v for k, v in after_kill.items())

    proc = _start(args + ["--resume", "--json"])
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(stdout)
    assert report["reused"] == len(after_int)
    assert report["measured"] == len(expected) - len(after_int)  # the rest
    assert report["skeleton"] in ("measured", "noisy")  # and the skeleton, measured last
    final = Lut.load(out)
    assert set(final.entries) == set(expected) and final.fixed_ms > 0
    assert all(final.entries[k] == v for k, v in after_int.items())  # nothing re-measured


def test_devices_command_lists_presets_and_why_not(capsys):
    assert cli_main(["devices", "--json"]) == 0
    devices = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert {"cpu-ort", "cpu-torch", "xeon-ort", "v100-trt", "v100-torch", "cuda-torch", "trt"} <= set(devices)
    assert devices["cpu-ort"]["usable"] and devices["cpu-ort"]["reason"] is None
    assert devices["cpu-ort"]["threads"] >= 1 and devices["cpu-ort"]["protocol"]["units"] == "ms"
    if not devices["trt"]["usable"]:
        assert devices["trt"]["reason"]
    assert cli_main(["devices"]) == 0
    assert "cpu-ort" in capsys.readouterr().out


# ------------------------------------------------------------------ busy machine, export phase
def _busy_counters(cpus=None):
    """A machine whose every CPU is kept busy by other processes, load average 5.3."""
    from profilers.load import Counters

    now = time.monotonic()
    return Counters(time_s=now, busy_s=len(cpus or (0, 1)) * now, niced_s=0.0, own_s=0.0,
                    loadavg=5.3, own_niced=False)


def test_busy_machine_is_warned_about_once_and_recorded(tmp_path, monkeypatch, capsys):
    import profilers.load

    out = tmp_path / "demo.json"
    tiny = preset(tmp_path)

    def stop_after_three(done, total, key):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an idle first run, interrupted
        profile(tiny, "demo", pool="small", out=out, shard=SHARD, on_progress=stop_after_three)
    monkeypatch.setattr(profilers.load, "read_counters", _busy_counters)
    capsys.readouterr()
    report = profile(tiny, "demo", pool="small", out=out, shard=SHARD, resume=True, load_check_s=0.0)
    busy = [w for w in report.warnings if "while profiling" in w]
    assert len(busy) == 1 and busy[0].startswith("load 5.3 on ")
    assert "latencies will be inflated; profile on an idle machine" in busy[0]
    assert capsys.readouterr().err.count("while profiling") == 1  # printed once, on one line
    load = Lut.load(out).device["seen"]["load"]
    assert load["busy"] and load["busy_checks"] > 1 and load["warning"] == busy[0]
    assert load["start"] == 5.3 and load["others_peak"] > 0 and len(load["earlier"]) == 1
    assert cli_main(["lut", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "BUSY: latencies inflated" in shown and "2 runs" in shown
    # A LUT made before loads were recorded still loads and says so.
    data = json.loads(out.read_text())
    del data["device"]["seen"]["load"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert cli_main(["lut", "show", str(old)]) == 0
    assert "load     not recorded" in capsys.readouterr().out


def test_export_phase_in_worker_processes_makes_the_files_timing_uses(tmp_path, demo_pool):
    cache = tmp_path / "onnx"
    tiny = preset(tmp_path)
    a = profile(tiny, "demo", pool="small", out=tmp_path / "a.json", shard=SHARD, cache_dir=cache,
                jobs=2)
    assert a.jobs == 2 and a.exported == a.total + 1 and a.failed == 0
    assert a.measured == a.total and a.skeleton in ("measured", "noisy")
    assert a.build_s > 0 and a.export_s > 0 and a.prepare_s > 0
    lut = Lut.load(tmp_path / "a.json")
    assert set(lut.entries) == set(shard_keys(demo_pool[1])) and lut.fixed_ms > 0
    # The workers built the very modules this process builds (teacher weights included): a run in
    # one process finds every file in the cache and exports nothing.
    files = set(cache.iterdir())
    b = profile(tiny, "demo", pool="small", out=tmp_path / "b.json", shard=SHARD, cache_dir=cache,
                jobs=1)
    assert b.jobs == 1 and b.exported <= 1 and set(cache.iterdir()) == files  # the skeleton may differ
    with pytest.raises(ProfileError, match="--jobs must be >= 1"):
        profile(tiny, "demo", pool="small", out=tmp_path / "c.json", jobs=0)

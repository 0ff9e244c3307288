"""LUT files: round trip, atomic writes, the journal, every load error, coverage, merge/show/diff."""

import json
import os

import pytest

from lana.errors import LanaError
from lana.lut import (Lut, LutCoverageError, LutError, LutWriter, StaleLutError, diff, journal_path,
                      merge, summarize)
from lana.ops import ops_fingerprint
from lana.spec import OpSpec, op_key

IN, OUT = (16, 8, 8), (16, 8, 8)
TEACHER = op_key(OpSpec.make("teacher", IN, OUT, 1, sig="abc123abc123"))
IDENTITY = op_key(OpSpec.make("identity", IN, OUT, 1))
EFN = op_key(OpSpec.make("efn", IN, OUT, 1, e=3, k=3, se=None))
CB = op_key(OpSpec.make("cb_stack", IN, OUT, 1, k=3, w=0.5))


def entry(ms: float, **extra) -> dict:
    return {"median": ms, "p10": ms * 0.9, "p90": ms * 1.1, "iqr": ms * 0.05, "n": 20,
            "noisy": False, **extra}


def make_lut(**header) -> Lut:
    args = dict(teacher="demo", pool="small", input_shape=(1, 32, 32),
                device={"preset": "cpu-ort", "backend": "ort", "precision": "fp32",
                        "batch_size": 1, "threads": 2, "seen": {"cpu": "test cpu"}},
                protocol={"warmup_s": 0.0, "min_iters": 5, "statistic": "median", "units": "ms"},
                ops_fingerprint=ops_fingerprint(),
                layers=[{"name": "blocks.0", "ops": [TEACHER, IDENTITY, EFN]},
                        {"name": "blocks.1", "ops": [TEACHER, IDENTITY, CB]}])
    args.update(header)
    lut = Lut.new(**args)
    lut.set_entry(TEACHER, entry(2.0))
    lut.set_entry(IDENTITY, entry(0.01))
    lut.set_entry(EFN, entry(1.0, noisy=True))
    lut.set_failed(CB, "export failed: something\nwith two lines")
    lut.set_fixed(entry(0.5))
    return lut


def shards(lut: Lut, n: int) -> list[Lut]:
    """``lut`` split like ``lana-profile --shard i/n`` splits a profile: disjoint entries, the
    fixed part in shard 1 only."""
    parts = []
    for i in range(n):
        part = Lut(json.loads(json.dumps(lut.data)))
        part.data["entries"] = {k: e for j, (k, e) in enumerate(sorted(lut.entries.items()))
                                if j % n == i}
        part.data["fixed"] = lut.fixed if i == 0 else None
        part.data["shard"] = f"{i + 1}/{n}"
        parts.append(part)
    return parts


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_round_trip_and_queries(tmp_path):
    lut = make_lut()
    path = lut.save(tmp_path / "luts" / "demo.json")
    loaded = Lut.load(path, teacher="demo", device="cpu-ort", batch_size=1)
    assert loaded.to_dict() == json.loads(path.read_text()) == lut.to_dict()
    assert loaded.latency(TEACHER) == 2.0 and loaded.fixed_ms == 0.5
    assert loaded.has(EFN) and not loaded.has(CB) and loaded.failed(CB).startswith("export failed")
    assert "\n" not in loaded.failed(CB)
    assert loaded.predict_raw([TEACHER, EFN]) == pytest.approx(0.5 + 2.0 + 1.0)
    assert loaded.predict([TEACHER, EFN]) == loaded.predict_raw([TEACHER, EFN])
    assert loaded.required_keys() == [TEACHER, IDENTITY, EFN, CB]
    # One entry per line: a LUT diff shows the ops that changed.
    lines = path.read_text().splitlines()
    assert sum(1 for line in lines if line.lstrip().startswith(f'"{TEACHER}"')) == 1


def test_calibration_is_applied_by_predict_only(tmp_path):
    lut = make_lut()
    lut.data["calibration"] = {"kind": "affine", "offset_ms": 0.25, "slope": 2.0, "r2": 0.99}
    loaded = Lut.load(lut.save(tmp_path / "c.json"))
    raw = loaded.predict_raw([TEACHER])
    assert loaded.predict([TEACHER]) == pytest.approx(0.25 + 2.0 * raw)
    lut.data["calibration"] = {"kind": "affine", "offset_ms": 0.25, "slope": 2.0,
                               "family_ms": {"efn": 0.125}}
    loaded = Lut.load(lut.save(tmp_path / "c.json"))
    assert loaded.predict([TEACHER, EFN, EFN]) == pytest.approx(
        0.25 + 2.0 * loaded.predict_raw([TEACHER, EFN, EFN]) + 2 * 0.125)
    lut.data["calibration"] = {"kind": "quadratic"}
    with pytest.raises(LutError, match="calibration must be"):
        Lut.load(lut.save(tmp_path / "c.json"))


def test_missing_and_failed_entries(tmp_path):
    lut = Lut.load(make_lut().save(tmp_path / "demo.json"))
    with pytest.raises(LutCoverageError, match="failed to profile"):
        lut.latency(CB)
    missing = op_key(OpSpec.make("efn", IN, OUT, 1, e=6, k=5, se=None))
    with pytest.raises(LutCoverageError, match="not in LUT") as info:
        lut.predict([TEACHER, missing])
    assert "lana-profile --device cpu-ort --teacher demo --pool small" in str(info.value)
    lut.require([TEACHER, IDENTITY, CB])  # failed entries are known, not missing
    other = op_key(OpSpec.make("cb_stack", IN, OUT, 1, k=5, w=1))
    with pytest.raises(LutCoverageError) as info:
        lut.require([TEACHER, missing, other, missing])
    message = str(info.value)
    assert "lacks 2 of 3 needed entries" in message
    assert message.endswith(f"add them: lana-profile --device cpu-ort --teacher demo --pool small "
                            f"--batch-size 1 --out {tmp_path / 'demo.json'} --resume")
    assert "\n" not in message


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = make_lut().save(tmp_path / "demo.json")
    before = path.read_text()
    changed = make_lut()
    changed.set_entry(EFN, entry(9.0))

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        changed.save(path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json"]  # no temp file left
    changed.save(path)
    assert Lut.load(path).latency(EFN) == 9.0
    assert oct(path.stat().st_mode & 0o777) != "0o600"  # not the temp file's private mode


def test_writer_journal_survives_a_kill_and_is_recovered(tmp_path):
    path = tmp_path / "demo.json"
    lut = make_lut()
    lut.data["entries"] = {}
    writer = LutWriter(lut, path, every=3, every_s=1e9)
    writer.flush()
    writer.add(TEACHER, entry(2.0))
    writer.add(IDENTITY, entry(0.01))
    # "killed" here: two entries only in the journal, the file has none
    assert Lut.load(path).entries == {}
    assert len(journal_path(path).read_text().splitlines()) == 2
    with open(journal_path(path), "a") as f:
        f.write('{"key": "efn:e=3')  # a line cut short by the kill
    resumed = Lut.load(path)
    assert LutWriter.recover(resumed, path) == 2
    assert resumed.entries == {TEACHER: entry(2.0), IDENTITY: entry(0.01)}
    # every=3: the third entry rewrites the file and empties the journal
    writer2 = LutWriter(resumed, path, every=3, every_s=1e9)
    writer2.add(EFN, entry(1.0))
    writer2.add(None, entry(0.5))
    writer2.add(CB, {"failed": "x"})
    assert not journal_path(path).exists()
    final = Lut.load(path)
    assert len(final.entries) == 4 and final.fixed_ms == 0.5


def test_corrupt_and_truncated_json_are_one_line_errors(tmp_path):
    path = make_lut().save(tmp_path / "demo.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(LutError, match="is truncated") as info:
        Lut.load(path)
    # --resume reads the same file, so the advice must not send the user there
    assert "--resume" not in str(info.value) and "\n" not in str(info.value)
    assert "restore it from a copy" in str(info.value) and "--force" in str(info.value)
    path.write_text("{" + text[1:].replace('"median"', "median", 1))
    with pytest.raises(LutError, match="is corrupt"):
        Lut.load(path)
    with pytest.raises(LutError, match="does not exist"):
        Lut.load(tmp_path / "nope.json")
    path.write_text("[1, 2]")
    with pytest.raises(LutError, match="not a LANA LUT"):
        Lut.load(path)


def test_schema_major_and_units(tmp_path):
    data = make_lut().to_dict()
    newer = write_json(tmp_path / "newer.json", {**data, "schema": "lana.lut/2"})
    with pytest.raises(LutError, match="schema lana.lut/2 but this lana reads lana.lut/1; upgrade"):
        Lut.load(newer)
    older = write_json(tmp_path / "older.json", {**data, "schema": "lana.lut/0"})
    with pytest.raises(LutError, match="re-profile"):
        Lut.load(older)
    other = write_json(tmp_path / "other.json", {**data, "schema": "nn-meter/1"})
    with pytest.raises(LutError, match="not a LANA LUT"):
        Lut.load(other)
    micro = write_json(tmp_path / "us.json", {**data, "protocol": {**data["protocol"], "units": "us"}})
    with pytest.raises(LutError, match="stores latencies in 'us'"):
        Lut.load(micro)
    broken = write_json(tmp_path / "broken.json", {k: v for k, v in data.items() if k != "entries"})
    with pytest.raises(LutError, match=r"lacks field\(s\) \['entries'\]"):
        Lut.load(broken)
    bad_entry = write_json(tmp_path / "bad.json", {**data, "entries": {TEACHER: {"median": -1}}})
    with pytest.raises(LutError, match="non-negative 'median'"):
        Lut.load(bad_entry)
    bad_key = write_json(tmp_path / "badkey.json", {**data, "entries": {"efn e=3": entry(1.0)}})
    with pytest.raises(LutError, match="bad entry key"):
        Lut.load(bad_key)
    no_preset = write_json(tmp_path / "nopreset.json", {**data, "device": {}})
    with pytest.raises(LutError, match="device.preset is None, not the name of the device preset"):
        Lut.load(no_preset)
    batch = write_json(tmp_path / "batch.json", {**data, "device": {**data["device"],
                                                                    "batch_size": 0}})
    with pytest.raises(LutError, match="device.batch_size is 0, not a whole number >= 1"):
        Lut.load(batch)


def test_stale_fingerprint_says_how_to_reprofile(tmp_path):
    path = make_lut(ops_fingerprint="0" * 16).save(tmp_path / "demo.json")
    with pytest.raises(StaleLutError, match="profiled with other op code") as info:
        Lut.load(path)
    assert "lana-profile --device cpu-ort --teacher demo --pool small" in str(info.value)
    assert "--force" in str(info.value)
    assert Lut.load(path, check_fingerprint=False).latency(TEACHER) == 2.0
    assert isinstance(info.value, LanaError)


def test_teacher_device_and_batch_mismatch(tmp_path):
    path = make_lut().save(tmp_path / "demo.json")
    with pytest.raises(LutError, match="is for teacher 'demo', not 'efficientnet_b0'") as info:
        Lut.load(path, teacher="efficientnet_b0")
    assert "lana-profile --device cpu-ort --teacher efficientnet_b0" in str(info.value)
    with pytest.raises(LutError, match="batch size 1, not 8") as info:
        Lut.load(path, batch_size=8)
    assert "--batch-size 8" in str(info.value)
    with pytest.raises(LutError, match="device preset 'cpu-ort', not 'v100-trt'"):
        Lut.load(path, device="v100-trt")


def test_merge_shards_and_refuse_mismatched(tmp_path):
    a, b = shards(make_lut(), 2)
    pa, pb = a.save(tmp_path / "a.json"), b.save(tmp_path / "b.json")
    merged = merge([pa, pb], tmp_path / "m.json")
    assert set(merged.entries) == {TEACHER, IDENTITY, EFN, CB} and merged.fixed_ms == 0.5
    assert "shard" not in merged.data and Lut.load(tmp_path / "m.json").has(EFN)
    _, c = shards(make_lut(protocol={"min_iters": 50, "statistic": "median", "units": "ms"}), 2)
    pc = c.save(tmp_path / "c.json")
    with pytest.raises(LutError, match="differ in protocol"):
        merge([pa, pc])
    with pytest.raises(LutError, match=r"a.json is given twice; pass each shard or profile once"):
        merge([pa, pb, pa], tmp_path / "twice.json")
    with pytest.raises(LutError, match=r"given twice \(as .*a.json and .*\./a.json\)"):
        merge([pa, f"{tmp_path}/./a.json"], tmp_path / "twice.json")
    assert not (tmp_path / "twice.json").exists()


def test_merge_combines_whole_profiles_by_min_or_median(tmp_path):
    profiles = []
    for i, (teacher_ms, efn_ms, fixed_ms) in enumerate([(2.0, 1.0, 0.5), (3.0, 0.8, 0.7),
                                                         (2.4, 1.2, 0.4)]):
        lut = make_lut()
        lut.set_entry(TEACHER, entry(teacher_ms, noisy=i == 1))
        lut.set_entry(EFN, entry(efn_ms))
        lut.set_fixed(entry(fixed_ms))
        lut.data["calibration"] = {"kind": "affine", "offset_ms": 0.1, "slope": 1.0}
        profiles.append(lut.save(tmp_path / f"p{i}.json"))
    fastest = merge(profiles, tmp_path / "min.json", combine="min")
    assert fastest.latency(TEACHER) == 2.0 and fastest.latency(EFN) == 0.8
    assert fastest.fixed_ms == 0.4 and fastest.entries[EFN]["profiles"] == [1.0, 0.8, 1.2]
    assert fastest.entries[EFN]["p90"] == pytest.approx(0.88)  # the fastest profile's entry
    assert fastest.calibration is None and fastest.data["combined"] == "min"
    assert fastest.latency(IDENTITY) == 0.01 and not fastest.has(CB)  # failed everywhere
    middle = merge(profiles, combine="median")
    assert middle.latency(TEACHER) == 2.4 and middle.latency(EFN) == 1.0 and middle.fixed_ms == 0.5
    assert not middle.entries[TEACHER]["noisy"]  # noisy in one profile of three
    again = Lut.load(tmp_path / "min.json")  # what was written passes the reader's checks
    assert again.latency(EFN) == 0.8
    with pytest.raises(LutError, match="--combine must be one of min, median"):
        merge(profiles, combine="mean")
    other = make_lut(pool="full").save(tmp_path / "other.json")
    with pytest.raises(LutError, match="merge only profiles of one pool with one preset"):
        merge([profiles[0], other], combine="min")


def test_summarize_and_diff(tmp_path):
    a = make_lut()
    s = summarize(a)
    assert s["measured"] == 3 and s["failed"] == 1 and s["noisy"] == 1
    assert s["required"] == 4 and s["missing"] == 0 and s["ops_fingerprint"] == "current"
    assert s["slowest"][0] == (TEACHER, 2.0) and s["fastest"][0] == (IDENTITY, 0.01)
    assert s["teacher_total_ms"] == pytest.approx(0.5 + 2.0 + 2.0)
    assert s["families"]["efn"] == {"n": 1, "median_ms": 1.0}
    b = make_lut(device={"preset": "xeon-ort", "backend": "ort", "precision": "fp32",
                         "batch_size": 1, "threads": 10, "seen": {"cpu": "xeon"}})
    b.set_entry(TEACHER, entry(1.0))  # b is 2x faster on the teacher op
    b.set_entry(EFN, entry(3.0))  # and 3x slower on efn
    d = diff(a, b)
    assert d["common"] == 3 and not d["same_device"]
    assert d["a_faster"] == 1 and d["b_faster"] == 1
    assert d["families"]["teacher"]["median_ratio"] == 0.5
    assert d["families"]["efn"]["median_ratio"] == 3.0
    assert d["largest_changes"][0][0] == EFN
    assert d["ratio_b_over_a"]["median"] == 1.0


def test_lut_commands_show_diff_merge(tmp_path, capsys):
    from lana.cli import main

    a = make_lut()
    b = make_lut()
    b.set_entry(EFN, entry(2.0))
    pa, pb = a.save(tmp_path / "a.json"), b.save(tmp_path / "b.json")
    s1, s2 = (s.save(tmp_path / f"s{i}.json") for i, s in enumerate(shards(a, 2), 1))
    assert main(["lut", "show", str(pa), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["measured"] == 3 and shown["noisy"] == 1 and shown["device"]["preset"] == "cpu-ort"
    assert main(["lut", "show", str(pa)]) == 0
    text = capsys.readouterr().out
    assert "coverage 3 measured, 1 failed, 0 missing of 4 needed; 1 noisy" in text
    assert main(["lut", "diff", str(pa), str(pb)]) == 0
    text = capsys.readouterr().out
    assert "faster   A on 1 ops, B on 0 ops" in text and "repeat" in text
    assert main(["lut", "merge", str(s1), str(s2), "--out", str(tmp_path / "m.json")]) == 0
    assert "3 measured" in capsys.readouterr().out and Lut.load(tmp_path / "m.json").has(EFN)
    assert main(["lut", "merge", str(pa), str(pb), "--combine", "min",
                 "--out", str(tmp_path / "f.json")]) == 0
    assert Lut.load(tmp_path / "f.json").latency(EFN) == 1.0


# ---------------------------------------------------------------------------- malformed input
def _main(argv, capsys) -> tuple[int, str, str]:
    from lana.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("layers, problem", [
    ("oops", r"'layers' must be a list of .*got str 'oops'"),
    (["blocks.0"], r"layer 0 must be an object, got 'blocks.0'"),
    ([{"name": "blocks.0", "ops": [TEACHER]}, {"name": "blocks.1"}],
     r"layer 1 \(blocks.1\) needs 'ops', a non-empty list of op keys, got None"),
    ([{"name": "blocks.0", "ops": [TEACHER, "efn e=3"]}],
     r"layer 0 \(blocks.0\) lists a bad op key: not an op key: 'efn e=3'"),
    ([{"name": "blocks.0", "ops": [TEACHER, 7]}],
     r"layer 0 \(blocks.0\) lists 7, not an op key string"),
    ([{"ops": [TEACHER]}], r"layer 0 needs a 'name' string, got None"),
])
def test_malformed_layers_are_one_line_errors_naming_the_fix(tmp_path, capsys, layers, problem):
    from lana.search.files import load_table

    path = write_json(tmp_path / "demo.json", {**make_lut().to_dict(), "layers": layers})
    lut = Lut.load(path)  # loads: lana-profile --resume must open it to rewrite the layers
    with pytest.raises(LutError, match=problem) as info:
        lut.layers
    message = str(info.value)
    assert message.startswith(f"LUT {path}: ") and "\n" not in message
    assert message.endswith(f"lana-profile --device cpu-ort --teacher demo --pool small "
                            f"--batch-size 1 --out {path} --resume")
    with pytest.raises(LutError, match=problem):
        summarize(lut)
    code, out, err = _main(["lut", "show", str(path)], capsys)
    assert code == 2 and out == "" and err == f"error: {message}\n"
    scores = write_json(tmp_path / "scores.json", {
        "schema": "lana.scores/1", "teacher": "demo", "pool": "small",
        "layers": [{"name": "blocks.0", "scores": {TEACHER: 0.0, EFN: 0.1}}]})
    with pytest.raises(LutError, match=problem):  # the search no longer skips a bad key
        load_table(scores, [path])
    # what lana-profile --resume does: load, replace the layers, save; the file is whole again
    lut.data["layers"] = make_lut().layers
    lut.save(path)
    assert Lut.load(path).required_keys() == [TEACHER, IDENTITY, EFN, CB]


def test_unreadable_lut_advice_does_not_send_back_to_resume(tmp_path):
    lut = make_lut(command="lana-profile --device cpu-ort --teacher demo --pool small "
                           "--out elsewhere/demo.json")
    path = lut.save(tmp_path / "my luts" / "demo.json")
    text = path.read_text()
    remake = (f"lana-profile --device cpu-ort --teacher demo --pool small --out "
              f"'{path}' --force")
    path.write_text(text[:text.index('"layers"')])  # a copy cut short: the command survives
    with pytest.raises(LutError) as info:
        Lut.load(path)
    message = str(info.value)
    assert message.startswith(f"LUT file {path} is truncated (invalid JSON at line ")
    assert message.endswith(f"restore it from a copy, or re-make it (ONNX exports are cached, so "
                            f"only the timing is redone): {remake}")
    journal_path(path).write_text(json.dumps({"key": TEACHER, "entry": entry(2.0)}) + "\n")
    with pytest.raises(LutError) as info:
        Lut.load(path)
    assert str(info.value).endswith(f"{remake}; {journal_path(path)} holds the entries measured "
                                    f"since its last save, which lana-profile ... --resume adds "
                                    f"back to a restored copy")
    journal_path(path).unlink()
    path.write_text("")
    with pytest.raises(LutError, match=r"is empty; restore it from a copy, or re-run the "
                                       r"lana-profile command that made it with --force"):
        Lut.load(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LutError, match=r"is not text .*restore it from a copy") as info:
        Lut.load(path)
    assert "--resume" not in str(info.value)


def test_fix_commands_name_the_preset_file_a_lut_was_profiled_with(tmp_path):
    toml = tmp_path / "my presets" / "my.toml"
    custom = make_lut(device={"preset": "my-ort", "backend": "ort", "precision": "fp32",
                              "batch_size": 1, "threads": 2},
                      command=f"lana-profile --device '{toml}' --teacher demo --pool small "
                              f"--out luts/my-ort/demo.json")
    path = custom.save(tmp_path / "my.json")
    lut = Lut.load(path)
    assert lut.device_arg == str(toml)
    expected = (f"lana-profile --device '{toml}' --teacher demo --pool small --batch-size 1 "
                f"--out {path} --resume")
    assert lut.command(resume=True) == expected
    with pytest.raises(LutCoverageError) as info:
        lut.require([op_key(OpSpec.make("efn", IN, OUT, 1, e=6, k=5, se=None))])
    assert str(info.value).endswith(f"add them: {expected}")
    with pytest.raises(LutError) as info:
        Lut.load(path, teacher="efficientnet_b0")
    assert f"profile one: lana-profile --device '{toml}' --teacher efficientnet_b0" in str(info.value)
    with pytest.raises(LutError) as info:  # no advice to profile a teacher that does not exist
        Lut.load(path, teacher="efficientnet_b9")
    assert "unknown teacher 'efficientnet_b9'" in str(info.value)
    assert "lana-profile" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LutError) as info:
        Lut.load(path, batch_size=8)
    assert f"--device '{toml}' --teacher demo --pool small --batch-size 8" in str(info.value)
    # built-in presets keep their name, whatever path the profile was given
    builtin = make_lut(command="lana-profile --device=./profilers/presets/cpu-ort.toml "
                               "--teacher demo --pool small")
    assert builtin.device_arg == "cpu-ort" and "--device cpu-ort " in builtin.command()
    # an unknown preset with no recorded command: its name is still the best guess
    del custom.data["command"]
    assert custom.device_arg == "my-ort"


def test_merge_refuses_what_is_not_shards_of_one_profile(tmp_path, capsys):
    whole = [make_lut().save(tmp_path / f"w{i}.json") for i in range(2)]
    with pytest.raises(LutError, match=r"w0.json is a whole profile, not a shard .*pass "
                                       r"--combine min\|median"):
        merge(whole, tmp_path / "m.json")
    a, b, c = shards(make_lut(), 3)
    pa, pb = a.save(tmp_path / "a.json"), b.save(tmp_path / "b.json")
    c.data["entries"][TEACHER] = entry(2.5)  # overlaps shard 1
    pc = c.save(tmp_path / "c.json")
    with pytest.raises(LutError, match=rf"a.json and .*c.json both hold entries for 1 op\(s\) \(e.g. "
                                       rf"{TEACHER.split('|')[0]}.*--combine min\|median"):
        merge([pa, pb, pc])
    b.data["shard"] = "1/3"
    with pytest.raises(LutError, match=r"a.json and .*b2.json are both shard 1/3"):
        merge([pa, b.save(tmp_path / "b2.json")])
    b.data["shard"] = "2/4"
    with pytest.raises(LutError, match=r"b4.json is shard 2/4 but .*a.json is shard 1/3"):
        merge([pa, b.save(tmp_path / "b4.json")])
    with pytest.raises(LutError, match=r"merge needs two or more LUT files \(got only .*a.json\)"):
        merge([pa], tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()
    code, out, err = _main(["lut", "merge", str(pa), "--out", str(tmp_path / "m.json")], capsys)
    assert code == 2 and err.startswith("error: merge needs two or more LUT files")
    (tmp_path / "folder").mkdir()
    code, out, err = _main(["lut", "merge", str(pa), str(pb), "--out", str(tmp_path / "folder")],
                           capsys)
    assert code == 2 and err == (f"error: --out {tmp_path / 'folder'} is a folder; name the file, "
                                 f"e.g. {tmp_path / 'folder' / 'merged.json'}\n")
    assert list((tmp_path / "folder").iterdir()) == []


def test_diff_says_first_when_the_luts_time_different_things(tmp_path, capsys):
    a = make_lut().save(tmp_path / "a.json")
    other = make_lut(teacher="efficientnet_b0", input_shape=(3, 224, 224),
                     device={"preset": "xeon-ort", "backend": "ort", "precision": "fp32",
                             "batch_size": 8, "threads": 10}).save(tmp_path / "b.json")
    d = diff(Lut.load(a), Lut.load(other))
    assert d["differs"] == {"teacher": ["demo", "efficientnet_b0"], "batch size": [1, 8],
                            "input shape": ["1x32x32", "3x224x224"],
                            "preset": ["cpu-ort", "xeon-ort"]}
    code, out, _ = _main(["lut", "diff", str(a), str(other)], capsys)
    assert code == 0 and out.splitlines()[0] == (
        "WARNING  A and B differ in teacher (demo vs efficientnet_b0), batch size (1 vs 8), "
        "input shape (1x32x32 vs 3x224x224), preset (cpu-ort vs xeon-ort): they time different "
        "ops and networks, so the figures below compare different things, not two devices")
    device_only = make_lut(device={"preset": "xeon-ort", "backend": "ort", "precision": "fp32",
                                   "batch_size": 1, "threads": 10}).save(tmp_path / "x.json")
    code, out, _ = _main(["lut", "diff", str(a), str(device_only)], capsys)
    assert out.splitlines()[0] == ("note     A and B differ in preset (cpu-ort vs xeon-ort): the "
                                   "figures below compare the devices")
    code, out, _ = _main(["lut", "diff", str(a), str(a)], capsys)
    assert out.startswith("A ") and diff(Lut.load(a), Lut.load(a))["differs"] == {}


@pytest.mark.parametrize("action", ["show", "diff"])
def test_negative_top_is_refused_at_parse_time(tmp_path, capsys, action):
    from lana.cli import main

    path = str(make_lut().save(tmp_path / "a.json"))
    files = [path] if action == "show" else [path, path]
    with pytest.raises(SystemExit) as info:
        main(["lut", action, *files, "--top", "-2"])
    assert info.value.code == 2 and "argument --top: must be >= 0, got -2" in capsys.readouterr().err
    assert main(["lut", action, *files, "--top", "0", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown.get("slowest", shown.get("largest_changes")) == []


def _load(**flags) -> dict:
    return {"cpus": 2, "threads": 2, "start": 0.5, "end": 0.7, "others_start": 0.0,
            "others_end": 0.0, "others_peak": 0.1, "source": "proc-stat", "busy": False,
            "contended": False, "parallel_speedup_min": 1.6, "parallel_speedup_median": 1.9,
            **flags}


@pytest.mark.parametrize("seen, marks", [
    ({"seen": {"load": _load(contended=True, parallel_speedup_min=1.0)}}, ["CONTENDED"]),
    ({"seen": {"load": _load(busy=True, contended=True, others_peak=1.2)}}, ["BUSY", "CONTENDED"]),
    # merged shards: one caught busy, another contended
    ({"seen": {"load": _load(busy=True, others_peak=1.2)},
      "seen_shards": [{"load": _load(busy=True, others_peak=1.2)},
                      {"load": _load(contended=True)}]}, ["BUSY", "CONTENDED"]),
    ({"seen": {"load": _load(busy=True, others_peak=1.2)}}, ["BUSY"]),
    ({"seen": {"load": _load()}}, []),
])
def test_show_marks_a_contended_lut(tmp_path, capsys, seen, marks):
    lut = make_lut(device={"preset": "cpu-ort", "backend": "ort", "precision": "fp32",
                           "batch_size": 1, "threads": 2, **seen})
    path = str(lut.save(tmp_path / "a.json"))
    code, out, _ = _main(["lut", "show", path], capsys)
    line = next(line for line in out.splitlines() if line.startswith("load "))
    assert code == 0 and [m for m in ("BUSY", "CONTENDED") if m in line] == marks
    _, out, _ = _main(["lut", "show", path, "--json"], capsys)
    assert json.loads(out)["load"]["contended"] == ("CONTENDED" in marks)


def test_fix_commands_keep_the_shard_and_input_shape_a_lut_was_profiled_with():
    from lana.lut import profile_command

    command = profile_command(device="cpu-ort", teacher="net.py:build", pool="small",
                              out="l.json", input_shape=(3, 45, 45), shard="2/3")
    lut = Lut.new(teacher="net.py:build", pool="small", input_shape=[3, 45, 45],
                  device={"preset": "cpu-ort", "batch_size": 1}, protocol={},
                  ops_fingerprint="x", layers=[], command=command, shard="2/3")
    assert "--input-shape 3,45,45 --shard 2/3" in command
    assert "--input-shape 3,45,45 --shard 2/3" in lut.command(resume=True)


def test_a_calibration_that_predicts_no_time_is_refused_on_use(tmp_path):
    # make_lut's cheapest network: fixed 0.5 + identity 0.01 in both layers = 0.52 ms
    lut = make_lut()
    path = tmp_path / "c.json"
    cases = [({"offset_ms": -5.0, "slope": 1.0}, "predicts -4.48 ms for the cheapest network"),
             ({"offset_ms": 0.0, "slope": -1.0}, "slope -1; .*slope > 0"),
             ({"offset_ms": 0.1, "slope": 0.0}, "slope 0; "),
             ({"offset_ms": 0.0, "slope": 1.0, "family_ms": {"identity": -10.0}},
              "predicts -19.48 ms"),
             # an efn term makes the dearer efn op the cheapest of layer 0: 0.5 - 0.6 + 0.01
             ({"offset_ms": 0.0, "slope": 1.0, "family_ms": {"efn": -1.6}}, "predicts -0.09 ms")]
    for cal, problem in cases:
        lut.data["calibration"] = {"kind": "affine", **cal, "pool": "small"}
        loaded = Lut.load(lut.save(path))  # still opens: lana lut calibrate must re-fit it
        assert loaded.calibration["offset_ms"] == cal["offset_ms"]
        with pytest.raises(LutError, match=problem) as info:
            loaded.predict([TEACHER, TEACHER])
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"LUT {path}: ")
        assert (f"re-fit it with lana lut calibrate --lut {path} --device cpu-ort --pool small"
                in message and 'delete the LUT\'s "calibration" field' in message)
    # Negative per-family terms are fine as long as every network takes time.
    lut.data["calibration"] = {"kind": "affine", "offset_ms": 0.0, "slope": 1.0,
                               "family_ms": {"efn": -1.2, "identity": -0.2}}
    loaded = Lut.load(lut.save(path))
    assert loaded.lowest_prediction() == pytest.approx(0.5 - 0.2 - 0.19)  # efn, then identity
    assert loaded.predict([TEACHER, IDENTITY]) == pytest.approx(0.5 + 2.0 + 0.01 - 0.2)
    assert loaded.lowest_prediction({"offset_ms": 0.0, "slope": 1.0}) == pytest.approx(0.52)


def test_lowest_prediction_is_unknown_without_layers_and_predict_checks_each_network():
    lut = make_lut(layers=[])
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -1.0, "slope": 1.0}
    assert lut.lowest_prediction() is None
    assert lut.predict([TEACHER]) == pytest.approx(-1.0 + 2.5)
    with pytest.raises(LutError, match="predicts -0.49 ms for a network whose LUT sum is 0.51 ms"):
        lut.predict([IDENTITY])
    # a layer with no measured op: its cheapest network is unknown, not refused
    lut = make_lut(layers=[{"name": "blocks.0", "ops": [CB]}])
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -1.0, "slope": 1.0}
    assert lut.lowest_prediction() is None and lut.predict([TEACHER]) == pytest.approx(1.5)


def test_the_calibration_check_runs_once_per_calibration(monkeypatch):
    lut = make_lut()
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -0.1, "slope": 0.9}
    calls = []
    real = Lut.lowest_prediction
    monkeypatch.setattr(Lut, "lowest_prediction", lambda self, cal=None: calls.append(1)
                        or real(self, cal))
    for _ in range(3):
        lut.predict([TEACHER, EFN])
    assert len(calls) == 1
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -5.0, "slope": 0.9}  # a new one
    with pytest.raises(LutError, match="cheapest network"):
        lut.predict([TEACHER, EFN])
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["cpu-ort/demo.json", "cpu-ort/efficientnet_b0.json",
                                  "cpu-torch/demo.json"])
def test_shipped_luts_predict_with_a_calibration_unless_it_predicts_no_time(name):
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "luts" / name
    lut = Lut.load(path, check_fingerprint=False)
    assert lut.calibration is None
    low = lut.lowest_prediction()
    teacher = [next(k for k in layer["ops"] if k.startswith("teacher:")) for layer in lut.layers]
    assert 0 < low < lut.predict_raw(teacher)
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -low / 2, "slope": 1.0}
    assert lut.predict(teacher) == pytest.approx(lut.predict_raw(teacher) - low / 2)
    lut.data["calibration"] = {"kind": "affine", "offset_ms": -2 * low, "slope": 1.0}
    with pytest.raises(LutError, match=f"predicts {-low:.4g} ms for the cheapest network"):
        lut.predict(teacher)


def test_show_describes_a_calibration_for_people(tmp_path):
    from lana.commands.lut import describe_calibration

    text = describe_calibration({"kind": "affine", "offset_ms": -0.1441, "slope": 0.65,
                                 "family_ms": {"efn": 0.0039}, "model": "families", "n_fit": 20,
                                 "pool": "small", "held_out": {"after": {"median_abs": 0.078,
                                                                         "max_abs": 0.081}}})
    assert text == ("-0.1441 ms + 0.6500 x LUT sum, per op efn +0.0039 ms; the families fit on "
                    "20 networks of the small pool; held-out error median 7.8 %, worst 8.1 %")
    assert describe_calibration({"offset_ms": 0.0, "slope": 1.0}) == "+0.0000 ms + 1.0000 x LUT sum"

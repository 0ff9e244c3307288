"""Device presets: the built-in TOML files, user TOML files (by path and LANA_PRESET_PATH), checks."""

import json
import re
import warnings
from pathlib import Path

import pytest

import profilers.backends
from lana.cli import main as cli_main
from profilers import PresetError, UnknownPresetError, list_presets, load_preset, preset_names
from profilers.device import BACKEND_OPTIONS, PresetWarning, scan_presets
from profilers.system import cpu_model, physical_cores, seen, usable_cpus

BUILTIN = {"v100-trt", "v100-torch", "xeon-ort", "cpu-ort", "cpu-torch", "cuda-torch", "trt"}


@pytest.fixture(autouse=True)
def no_user_presets(monkeypatch):
    monkeypatch.delenv("LANA_PRESET_PATH", raising=False)


def test_builtin_presets_parse_and_fix_their_settings():
    assert BUILTIN <= set(preset_names())
    presets = {p.name: p for p in list_presets()}
    for name in BUILTIN:
        p = presets[name]
        assert p.source == "builtin" and p.backend in ("ort", "torch", "trt") and p.description
        assert p.protocol.statistic == "median" and p.protocol.units == "ms"
    cpu = presets["cpu-ort"]
    assert (cpu.backend, cpu.device, cpu.precision, cpu.batch_size) == ("ort", "cpu", "fp32", 1)
    assert cpu.threads == "physical" and cpu.resolved_threads() == physical_cores()
    assert cpu.backend_config().threads == physical_cores()
    assert dict(cpu.options)["graph_optimization_level"] == "all"
    trt = presets["v100-trt"]
    assert (trt.backend, trt.device, trt.precision) == ("trt", "cuda", "fp16")
    assert trt.hardware == ("V100",) and trt.backend_config().threads is None
    xeon = presets["xeon-ort"]  # extends cpu-ort, overrides part of the protocol
    assert xeon.backend == "ort" and xeon.hardware == ("Xeon",)
    assert xeon.protocol.min_iters == 20
    assert xeon.protocol.max_iters == presets["cpu-ort"].protocol.max_iters


def test_usability_says_why_not():
    assert load_preset("cpu-ort").unusable_reason() is None
    assert load_preset("cpu-torch").unusable_reason() is None
    reason = load_preset("v100-trt").unusable_reason()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "lana[trt]" in reason
    import torch

    if not torch.cuda.is_available():
        assert "CUDA" in load_preset("cuda-torch").unusable_reason()


def test_hardware_warning_only_on_other_hardware():
    xeon = load_preset("xeon-ort")
    assert xeon.hardware_warning({"cpu": "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz"}) is None
    warning = xeon.hardware_warning({"cpu": "AMD EPYC 7763"})
    assert "Xeon" in warning and "AMD EPYC 7763" in warning
    assert "no GPU" in load_preset("v100-trt").hardware_warning({"gpu": None})
    assert load_preset("cpu-ort").hardware_warning({"cpu": "anything"}) is None


def test_user_toml_by_path_with_extends(tmp_path):
    path = tmp_path / "my-box.toml"
    path.write_text('extends = "cpu-ort"\nthreads = 1\nbatch_size = 4\nhardware = "EPYC"\n'
                    '[protocol]\nmin_iters = 3\n[options]\ngraph_optimization_level = "basic"\n')
    p = load_preset(str(path))
    assert p.name == "my-box" and p.source == str(path)
    assert (p.backend, p.threads, p.batch_size, p.hardware) == ("ort", 1, 4, ("EPYC",))
    assert p.protocol.min_iters == 3
    assert p.protocol.min_time_s == load_preset("cpu-ort").protocol.min_time_s  # inherited
    assert p.to_dict()["options"] == {"graph_optimization_level": "basic"}
    assert p.to_dict()["threads"] == 1


def test_user_preset_directory(tmp_path, monkeypatch):
    (tmp_path / "edge.toml").write_text('backend = "torch"\nthreads = 1\n')
    (tmp_path / "cpu-ort.toml").write_text('backend = "ort"\nthreads = 1\n')  # overrides built-in
    monkeypatch.setenv("LANA_PRESET_PATH", str(tmp_path))
    names = preset_names()
    assert "edge" in names and BUILTIN <= set(names)
    assert load_preset("edge").source == str(tmp_path / "edge.toml")
    with pytest.warns(PresetWarning, match="replaces the built-in preset 'cpu-ort'"):
        assert load_preset("cpu-ort").threads == 1  # the override still works, with a warning
    with pytest.warns(PresetWarning):
        listed = {p.name: p.source for p in list_presets()}
    assert listed["cpu-ort"] == str(tmp_path / "cpu-ort.toml") and listed["trt"] == "builtin"


@pytest.mark.parametrize("text, match", [
    ("backend = \n", "not valid TOML"),
    ("backend = \"ort\"\nbatchsize = 2\n", "unknown field"),
    ("threads = 2\n", "missing required field 'backend'"),
    ("backend = \"ort\"\nthreads = 0\n", "threads must be"),
    ("backend = \"ort\"\nprecision = \"int3\"\n", "precision must be"),
    ("backend = \"ort\"\n[protocol]\nmin_iter = 3\n", "unknown field"),
    ("extends = \"nope\"\n", "extends unknown preset 'nope'"),
])
def test_bad_user_toml_is_one_line_error(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PresetError, match=match) as info:
        load_preset(str(path))
    assert "\n" not in str(info.value)


def test_unknown_device_lists_valid_names():
    with pytest.raises(UnknownPresetError, match="unknown device 'v200-trt'; valid: .*cpu-ort"):
        load_preset("v200-trt")
    with pytest.raises(PresetError, match="does not exist"):
        load_preset("missing/preset.toml")


def test_system_seen_records_the_machine():
    info = seen(gpu=False)
    assert info["cpu"] == cpu_model() and info["cpu"]
    assert info["physical_cores"] >= 1 and info["logical_cpus"] >= info["physical_cores"]
    assert info["onnxruntime"] and info["torch"] and "tensorrt" in info


# Every value of the wrong type is a one-line PresetError naming the file, the key, what it holds
# and what it should hold: never a TypeError or AttributeError from deep inside a backend.
@pytest.mark.parametrize("text, key, found, expected", [
    ('backend = "torch"\nbatch_size = true\n', "batch_size", "true (a boolean)", "positive whole"),
    ('backend = "ort"\nbatch_size = 2.0\n', "batch_size", "2.0 (a float)", "positive whole"),
    ('backend = "ort"\nthreads = true\n', "threads", "true (a boolean)", '"physical"'),
    ('backend = "ort"\nthreads = "all"\n', "threads", '"all" (a string)', '"physical"'),
    ('backend = "ort"\nhardware = 5\n', "hardware", "5 (an integer)", "array of strings"),
    ('backend = "ort"\nhardware = ["Xeon", 3]\n', "hardware", '["Xeon", 3] (an array)',
     "array of strings"),
    ('backend = "ort"\noptions = 5\n', "options", "5 (an integer)", "a table"),
    ('backend = "ort"\nprotocol = 5\n', "protocol", "5 (an integer)", "a table"),
    ('extends = "cpu-ort"\nprotocol = 5\n', "protocol", "5 (an integer)", "a table"),
    ('extends = "cpu-ort"\noptions = "all"\n', "options", '"all" (a string)', "a table"),
    ('backend = "ort"\n[protocol]\nmin_iters = "ten"\n', "[protocol] min_iters",
     '"ten" (a string)', "a whole number"),
    ('backend = "ort"\n[protocol]\nretries = true\n', "[protocol] retries", "true (a boolean)",
     "a whole number"),
    ('backend = "ort"\n[protocol]\nmin_time_s = "1s"\n', "[protocol] min_time_s",
     '"1s" (a string)', "a number"),
    ('backend = 3\n', "backend", "3 (an integer)", "a non-empty string"),
    ('backend = "ort"\ndevice = ["cpu"]\n', "device", '["cpu"] (an array)', "a string"),
    ('backend = "ort"\nname = 7\n', "name", "7 (an integer)", "a non-empty string"),
    ('extends = 1\n', "extends", "1 (an integer)", "a non-empty string"),
])
def test_wrong_value_type_is_one_line_error_naming_file_key_found_and_expected(
        tmp_path, text, key, found, expected):
    path = tmp_path / "typo.toml"
    path.write_text(text)
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    message = str(info.value)
    assert message.startswith(f"preset {path}: {key} must be ") and "\n" not in message
    assert message.endswith(f"got {found}") and expected in message


def test_a_wrong_type_in_an_extended_user_file_names_that_file(tmp_path, monkeypatch):
    (tmp_path / "base.toml").write_text('backend = "ort"\nbatch_size = true\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = "base"\n')
    monkeypatch.setenv("LANA_PRESET_PATH", str(tmp_path))
    with pytest.raises(PresetError, match=f"preset {re.escape(str(tmp_path / 'base.toml'))}: "
                                          "batch_size must be"):
        load_preset(str(child))


def test_profile_command_reports_a_bad_value_type_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "typo.toml"
    path.write_text('backend = "ort"\nhardware = 5\n')
    assert cli_main(["profile", "--device", str(path), "--teacher", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: preset {path}: hardware must be") and err.count("\n") == 1


def _broken_directory(tmp_path: Path) -> Path:
    (tmp_path / "edge.toml").write_text('backend = "torch"\nthreads = 1\n')
    (tmp_path / "hw.toml").write_text('backend = "ort"\nhardware = 5\n')
    (tmp_path / "syntax.toml").write_text("backend = \n")
    return tmp_path


def test_a_broken_user_file_does_not_hide_the_other_presets(tmp_path, monkeypatch):
    monkeypatch.setenv("LANA_PRESET_PATH", str(_broken_directory(tmp_path)))
    good, broken = scan_presets()
    assert BUILTIN | {"edge"} <= {p.name for p in good}
    reasons = {b.name: b for b in broken}
    assert set(reasons) == {"hw", "syntax"}
    assert reasons["hw"].source == str(tmp_path / "hw.toml")
    assert reasons["hw"].reason.startswith(f"preset {tmp_path / 'hw.toml'}: hardware must be")
    assert "not valid TOML" in reasons["syntax"].reason
    assert {p.name for p in list_presets()} == {p.name for p in good}
    assert load_preset("edge").backend == "torch"  # unrelated valid presets still load by name
    assert load_preset("cpu-ort").source == "builtin"
    with pytest.raises(PresetError, match="hardware must be"):  # the broken one says why
        load_preset("hw")


def test_devices_command_lists_broken_files_beside_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LANA_PRESET_PATH", str(_broken_directory(tmp_path)))
    assert cli_main(["devices", "--json"]) == 0
    devices = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert BUILTIN | {"edge", "hw", "syntax"} <= set(devices)
    assert devices["hw"]["broken"] and not devices["hw"]["usable"]
    assert devices["hw"]["reason"].startswith(f"preset {tmp_path / 'hw.toml'}: hardware must be")
    assert devices["cpu-ort"]["usable"] and not devices["cpu-ort"]["broken"]
    assert cli_main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "hardware must be a string or an array of strings" in out
    assert "not valid TOML" in out and "edge" in out


def test_unknown_backend_is_a_mistake_in_the_file(tmp_path, capsys):
    path = tmp_path / "badbackend.toml"
    path.write_text('backend = "onnx"\n')
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    assert str(info.value) == (f"preset {path}: backend 'onnx' is not a known backend; set "
                               f"backend to one of ort, torch, trt")
    assert cli_main(["profile", "--device", str(path), "--teacher", "demo"]) == 2
    err = capsys.readouterr().err
    assert "cannot run here" not in err and "backend 'onnx' is not a known backend" in err


@pytest.mark.parametrize("text, match", [
    ('backend = "ort"\n[options]\nintra_op = 3\n', r"unknown option\(s\) \['intra_op'\] in "
     r"\[options\] for backend 'ort'; known: graph_optimization_level, providers, session_config"),
    ('extends = "cpu-ort"\n[options]\ncolour = "red"\n', r"unknown option\(s\) \['colour'\]"),
    ('extends = "cpu-ort"\n[options]\ngraph_optimisation_level = "basic"\n',
     "unknown option.*graph_optimisation_level"),
    ('backend = "torch"\n[options]\ngraph_optimization_level = "all"\n',
     "for backend 'torch'; known: device_index"),
    ('extends = "trt"\n[options]\nworkspace = 64\n', "known: cuda_graph, device_index, fp16_io"),
    ('extends = "cpu-ort"\n[options]\ngraph_optimization_level = "al"\n',
     r'\[options\] graph_optimization_level must be one of "disable", .*got "al" \(a string\)'),
    ('extends = "trt"\n[options]\nworkspace_mb = "big"\n',
     r'\[options\] workspace_mb must be a whole number >= 1, got "big"'),
    ('extends = "trt"\n[options]\ncuda_graph = 1\n', "cuda_graph must be true or false"),
    ('extends = "cpu-ort"\n[options]\nproviders = "CPUExecutionProvider"\n',
     "providers must be an array"),
    ('extends = "cpu-ort"\n[options.session_config]\n"a.b" = [1]\n',
     "session_config must be a table"),
])
def test_unknown_or_bad_options_are_refused(tmp_path, text, match):
    path = tmp_path / "opts.toml"
    path.write_text(text)
    with pytest.raises(PresetError, match=match) as info:
        load_preset(str(path))
    assert str(info.value).startswith(f"preset {path}: ") and "\n" not in str(info.value)


def test_known_options_pass_and_session_config_keys_pass_through(tmp_path, monkeypatch):
    path = tmp_path / "opts.toml"
    path.write_text('extends = "cpu-ort"\n[options]\nproviders = ["CPUExecutionProvider"]\n'
                    '[options.session_config]\n"session.intra_op.allow_spinning" = "0"\n')
    options = load_preset(str(path)).to_dict()["options"]
    assert options["session_config"] == {"session.intra_op.allow_spinning": "0"}
    assert options["providers"] == ["CPUExecutionProvider"]
    assert dict(load_preset("trt").options)["workspace_mb"] == 1024
    # A backend registered elsewhere reads options this module cannot know: not checked.
    monkeypatch.setitem(profilers.backends._BACKENDS, "vendor", "vendor.runtime:Backend")
    path.write_text('backend = "vendor"\n[options]\nanything = 1\n')
    assert dict(load_preset(str(path)).options) == {"anything": 1}


def test_backend_options_table_matches_what_the_backends_read():
    """BACKEND_OPTIONS lists exactly the options each built-in backend's source reads."""
    root = Path(profilers.backends.__file__).parent
    modules = {"ort": ["ort.py"], "torch": ["torch_eager.py"], "trt": ["trt.py", "_cuda.py"]}
    for backend, files in modules.items():
        read = {m for f in files
                for m in re.findall(r"\.option\(\s*\"(\w+)\"", (root / f).read_text())}
        assert read == set(BACKEND_OPTIONS[backend]), backend
    assert set(BACKEND_OPTIONS) == set(profilers.backends.list_backends())


def test_user_preset_named_like_a_builtin_warns_naming_both_files(tmp_path, monkeypatch):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "cpu-ort"\nname = "cpu-ort"\nthreads = 1\n')
    with pytest.warns(PresetWarning) as caught:
        preset = load_preset(str(path))
    assert preset.name == "cpu-ort" and preset.threads == 1
    message = str(caught[0].message)
    assert str(path) in message and str(Path("presets") / "cpu-ort.toml") in message
    # The same by file name in LANA_PRESET_PATH: a deliberate override, kept, and warned about.
    (tmp_path / "cpu-torch.toml").write_text('backend = "torch"\nthreads = 1\n')
    monkeypatch.setenv("LANA_PRESET_PATH", str(tmp_path))
    with pytest.warns(PresetWarning, match="replaces the built-in preset 'cpu-torch'") as caught:
        assert load_preset("cpu-torch").source == str(tmp_path / "cpu-torch.toml")
    assert str(tmp_path / "cpu-torch.toml") in str(caught[0].message)
    assert str(Path("presets") / "cpu-torch.toml") in str(caught[0].message)


def test_presets_with_names_of_their_own_do_not_warn(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('extends = "cpu-ort"\nthreads = 1\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error", PresetWarning)
        load_preset(str(path))
        load_preset("cpu-ort")
        list_presets()


def test_more_threads_than_cpus_is_warned_about(tmp_path):
    path = tmp_path / "many.toml"
    path.write_text('extends = "cpu-ort"\nthreads = 64\n')
    preset = load_preset(str(path))
    warning = preset.hardware_warning({"cpu": "AMD EPYC", "logical_cpus": 2})
    assert warning == (f"preset 'many' asks for 64 threads but this process may run on 2 CPUs: "
                       f"the extra threads wait for each other and inflate every latency; set "
                       f"threads = 2 or \"physical\" in {path}")
    assert preset.hardware_warning({"cpu": "AMD EPYC", "logical_cpus": 64}) is None
    cpus = len(usable_cpus())  # read from this machine when not given
    if cpus < 64:
        assert f"may run on {cpus} CPU" in preset.hardware_warning({"cpu": "x"})
    assert load_preset("cpu-ort").hardware_warning({"cpu": "x", "logical_cpus": 1}) is None
    # Both problems at once: one line holding both.
    path.write_text('extends = "xeon-ort"\nthreads = 8\n')
    both = load_preset(str(path)).hardware_warning({"cpu": "AMD EPYC", "logical_cpus": 4})
    assert "describes Xeon" in both and "asks for 8 threads" in both and "\n" not in both
    # A GPU preset's threads are not used on the GPU: nothing to warn about.
    path.write_text('extends = "cuda-torch"\nthreads = 64\n')
    gpu = load_preset(str(path))
    assert gpu.hardware_warning({"gpu": "NVIDIA V100", "logical_cpus": 2}) is None

"""Device presets: the built-in TOML files, user TOML files (by path and LANA_PRESET_PATH), checks."""

import pytest

from profilers import PresetError, UnknownPresetError, list_presets, load_preset, preset_names
from profilers.system import cpu_model, physical_cores, seen

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
    assert load_preset("cpu-ort").threads == 1
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

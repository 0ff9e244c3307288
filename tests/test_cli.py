"""The command line: help and argument errors start without the heavy libraries.

``lana --help``, ``lana <cmd> --help`` and a mistyped argument must answer at interpreter speed, so
building the parser may not import torch, ONNX, ONNX Runtime, HiGHS or matplotlib.  Command modules
repeat the defaults of the torch-based stage modules for that reason; these tests keep the two
equal and check what the parser actually hands to the stage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from lana import cli
from lana.errors import LanaError

HEAVY = ("torch", "onnx", "onnxruntime", "highspy", "matplotlib", "numpy", "sklearn")

# Runs in a fresh interpreter: build the parser, print every help text and one argument error,
# then report the heavy top-level packages that got imported along the way.
PROBE = """
import contextlib, io, json, sys
import lana.cli

parser = lana.cli.build_parser()
sub = next(a for a in parser._actions if a.dest == "command")
argvs = [["--help"], ["finetune"], ["nosuch"],
         ["score", "--teacher", "demo", "--out", "x.json", "--batch-size", "-1"],
         ["pretrain", "--teacher", "demo", "--out", "x", "--lr", "nan"],
         ["train-teacher", "--teacher", "demo", "--out", "x.pt", "--seed", "-1"]]
argvs += [[name, "--help"] for name in sub.choices]
argvs += [["lut", action, "--help"] for action in ("show", "diff", "merge", "calibrate")]
codes = {}
for argv in argvs:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            lana.cli.main(argv)
        except SystemExit as exc:
            codes[" ".join(argv)] = [exc.code, len(out.getvalue()), err.getvalue()]
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"codes": codes, "heavy": heavy, "commands": sorted(sub.choices)}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    """What the fresh interpreter saw (one subprocess for the whole module)."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY)], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_help_and_argument_errors_import_no_heavy_library(probe):
    assert probe["heavy"] == [], f"building the parser or printing help imported {probe['heavy']}"


def test_every_help_prints_and_exits_zero(probe):
    helps = {argv: c for argv, c in probe["codes"].items() if argv.endswith("--help")}
    assert len(helps) == 1 + len(probe["commands"]) + 4
    for argv, (code, out_len, err) in helps.items():
        assert code == 0, f"lana {argv}: exit {code}: {err}"
        assert out_len > 100, f"lana {argv} printed almost nothing"


def test_argument_errors_exit_two_with_one_line(probe):
    for argv, needle in (("finetune", "the following arguments are required: --arch, --out"),
                         ("nosuch", "invalid choice: 'nosuch'"),
                         ("score --teacher demo --out x.json --batch-size -1",
                          "argument --batch-size: must be >= 1, got -1"),
                         ("pretrain --teacher demo --out x --lr nan",
                          "argument --lr: must be a positive number, got nan"),
                         ("train-teacher --teacher demo --out x.pt --seed -1",
                          "argument --seed: must be >= 0, got -1")):
        code, _, err = probe["codes"][argv]
        assert code == 2 and err.count("\n") == 1
        assert err.startswith("error: lana") and needle in err and err.endswith(" --help\n")


def test_all_commands_registered(probe):
    expected = {name.replace("_", "-") for name in cli.COMMANDS}
    assert set(probe["commands"]) == expected


# (command, stage module, {CLI option dest: name of the stage module's default}, required argv)
MIRRORED = [
    ("pretrain", "lana.pretrain",
     {"epochs": "DEFAULT_EPOCHS", "batch_size": "DEFAULT_BATCH_SIZE", "lr": "DEFAULT_LR"},
     ["--teacher", "demo", "--out", "o"]),
    ("score", "lana.score",
     {"samples": "DEFAULT_SAMPLES", "batch_size": "DEFAULT_BATCH_SIZE"},
     ["--teacher", "demo", "--out", "o"]),
    ("select", "lana.select",
     {"images": "DEFAULT_IMAGES", "batch_size": "DEFAULT_BATCH_SIZE"},
     ["--search", "s.json", "--out", "o"]),
    ("finetune", "lana.finetune",
     {"epochs": "DEFAULT_EPOCHS", "batch_size": "DEFAULT_BATCH_SIZE", "lr": "DEFAULT_LR",
      "temperature": "DEFAULT_TEMPERATURE", "kd_weight": "DEFAULT_KD_WEIGHT"},
     ["--arch", "a.json", "--out", "o"]),
    ("train-teacher", "lana.train_teacher",
     {"epochs": "DEFAULT_EPOCHS", "batch_size": "DEFAULT_BATCH_SIZE", "lr": "DEFAULT_LR",
      "threads": "DEFAULT_THREADS"},
     []),
]


@pytest.mark.parametrize("command,stage,options,required", MIRRORED, ids=[m[0] for m in MIRRORED])
def test_cli_defaults_are_the_stage_defaults(command, stage, options, required):
    stage_module = importlib.import_module(stage)
    command_module = importlib.import_module(f"lana.commands.{command.replace('-', '_')}")
    args = cli.build_parser().parse_args([command, *required])
    for dest, name in options.items():
        expected = getattr(stage_module, name)
        assert getattr(args, dest) == expected, f"lana {command} --{dest}: {stage}.{name}"
        if hasattr(command_module, name):  # the copy kept for a torch-free parser
            assert getattr(command_module, name) == expected, f"{command_module.__name__}.{name}"


def test_lana_error_prints_one_line_and_exits_two(monkeypatch, capsys):
    def fail(args: argparse.Namespace) -> int:
        raise LanaError("no presets found; set LANA_PRESET_PATH to a directory of TOML files")

    monkeypatch.setattr(importlib.import_module("lana.commands.devices"), "run", fail)
    assert cli.main(["devices"]) == 2
    err = capsys.readouterr().err
    assert err == "error: no presets found; set LANA_PRESET_PATH to a directory of TOML files\n"


@pytest.mark.parametrize("argv, needle", [
    (["train-teacher", "--out", "{tmp}/"], "--out {tmp}/ is a folder; name the file, e.g. {tmp}/demo.pt"),
    (["verify", "--search", "s.json", "--lut", "l.json", "--device", "cpu-ort", "--budget", "0.5x",
      "--out", "{tmp}"], "--out {tmp} is a folder; name the file, e.g. {tmp}/verify.json"),
    (["validate", "--arch", "a.json", "--device", "cpu-ort", "--lut", "l.json", "--plot",
      "{tmp}/file.txt/x.png"], "--plot {tmp}/file.txt/x.png cannot be written: {tmp}/file.txt is "
                               "a file, not a folder; choose another path"),
    (["lut", "calibrate", "--lut", "l.json", "--device", "cpu-ort", "--plot", "{tmp}"],
     "--plot {tmp} is a folder; name the file, e.g. {tmp}/calibration.png"),
])
def test_output_paths_are_refused_before_the_work(tmp_path, capsys, argv, needle):
    """A result that could not be written is refused before minutes of training or measuring."""
    (tmp_path / "file.txt").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {needle.replace('{tmp}', str(tmp_path))}\n"


def test_check_output_file_probes_the_folder(tmp_path):
    from lana.errors import check_output_file

    assert check_output_file(tmp_path / "new" / "deeper" / "a.json", "--out", "a.json") == (
        tmp_path / "new" / "deeper" / "a.json")
    assert not (tmp_path / "new").exists()  # nothing made, nothing left behind
    assert list(tmp_path.iterdir()) == []


def test_an_output_never_overwrites_an_input_or_a_file_of_an_input_folder(tmp_path, capsys):
    from lana.errors import check_output_file

    pre = tmp_path / "pre"
    pre.mkdir()
    manifest = pre / "pretrain.json"
    manifest.write_text("{}")
    weights = tmp_path / "teacher.pt"
    weights.write_bytes(b"weights")
    for argv in (["score", "--teacher", "demo", "--pretrain", str(pre), "--out", str(manifest)],
                 ["select", "--search", "s.json", "--pretrain", str(pre), "--out", str(manifest)],
                 ["score", "--teacher", "demo", "--teacher-weights", str(weights),
                  "--out", str(weights)]):
        assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert all("is a file of the --pretrain folder" in line for line in err[:2])
    assert "is also the --teacher-weights file" in err[2] and len(err) == 3
    assert manifest.read_text() == "{}" and weights.read_bytes() == b"weights"
    # a new file in that folder overwrites nothing
    assert check_output_file(pre / "scores.json", "--out", "scores.json",
                             inputs=[("--pretrain", pre)]) == pre / "scores.json"


def test_an_interrupted_command_says_how_to_continue(monkeypatch, capsys):
    import signal

    def ns(command, **kw):
        return argparse.Namespace(command=command, **kw)

    assert cli.continue_command(["profile", "--device", "my preset.toml", "--force"],
                                ns("profile", resume=False, force=True)) == (
        "lana profile --device 'my preset.toml' --resume")
    assert cli.continue_command(["profile", "--out", "a.json"], ns("profile", resume=False),
                                "lana-profile") == "lana-profile --out a.json --resume"
    assert cli.continue_command(["pretrain", "--resume"], ns("pretrain", resume=True)) == (
        "lana pretrain --resume")
    assert cli.continue_command(["run", "--budget", "0.5x"], ns("run")) == "lana run --budget 0.5x"
    assert cli.continue_command(["search"], ns("search")) is None

    def hang_up(args: argparse.Namespace) -> int:
        signal.raise_signal(signal.SIGHUP)
        return 0

    monkeypatch.setattr(importlib.import_module("lana.commands.devices"), "run", hang_up)
    before = signal.getsignal(signal.SIGHUP)
    assert cli.main(["devices"]) == 128 + signal.SIGHUP  # as a shell reports it
    assert capsys.readouterr().err == "terminated\n"
    assert signal.getsignal(signal.SIGHUP) is before


@pytest.mark.parametrize("argv, needle", [
    (["search", "--lut", "l.json", "--scores", "s.json", "--budget", "0.5x", "--out", ""],
     "--out is empty; name the file, e.g. search.json"),
    (["search", "--lut", "l.json", "--scores", "s.json", "--budget", "0.5x", "--out", "/"],
     "--out / is a folder; name the file, e.g. /search.json"),
    (["search", "--lut", "l.json", "--scores", "s.json", "--budget", "0.5x", "--out",
      "{tmp}/r.json"], "--out {tmp}/r.json draws its plot to {tmp}/r.png, which is a folder"),
    (["score", "--teacher", "demo", "--out", "{tmp}/file.txt/s.json"],
     "--out {tmp}/file.txt/s.json cannot be written: {tmp}/file.txt is a file, not a folder"),
    (["select", "--search", "{tmp}/file.txt", "--out", "{tmp}/file.txt"],
     "--out {tmp}/file.txt is also the --search file, which it would overwrite"),
    (["verify", "--search", "{tmp}/file.txt", "--lut", "l.json", "--device", "cpu-ort",
      "--budget", "0.5x", "--out", "{tmp}/file.txt"], "is also the --search file"),
    (["lut", "merge", "{tmp}/file.txt", "b.json", "--combine", "min", "--out", "{tmp}/file.txt"],
     "is also the input file"),
    (["bench", "--arch", "{tmp}/file.txt", "--device", "cpu-ort", "--save-baseline",
      "{tmp}/file.txt"], "--save-baseline {tmp}/file.txt is also the --arch file"),
    (["bench", "--arch", "a.json", "--device", "cpu-ort", "--save-baseline", ""],
     "--save-baseline is empty"),
    (["assemble", "--arch", "a.json", "--out", "{tmp}/file.txt"],
     "--out {tmp}/file.txt is a file, not a folder; name a folder, e.g. student"),
    (["finetune", "--arch", "a.json", "--out", ""], "--out is empty; name a folder"),
    (["pretrain", "--teacher", "demo", "--out", "{tmp}/file.txt/p"],
     "--out {tmp}/file.txt/p cannot be written: {tmp}/file.txt is a file, not a folder"),
])
def test_outputs_that_cannot_be_written_or_would_overwrite_an_input(tmp_path, capsys, argv,
                                                                    needle):
    (tmp_path / "file.txt").write_text("{}")
    (tmp_path / "r.png").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert needle.replace("{tmp}", str(tmp_path)) in err
    assert (tmp_path / "file.txt").read_text() == "{}"

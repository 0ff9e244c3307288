"""The ``lana`` command line: a thin layer over the Python API.

Each subcommand lives in ``lana/commands/<name>.py`` with ``register(subparsers)`` and ``run(args)``;
its help text is the module docstring.  Errors the user can fix (:class:`lana.errors.LanaError`) print
one line and exit with status 2; Ctrl-C exits with 130, and SIGTERM (``kill``, ``timeout``, a batch
scheduler) with 143, both after the command has saved what it measured and removed its temporary files.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from lana.errors import LanaError

COMMANDS = (
    "teachers", "ops", "devices", "profile", "lut", "search",
    "train_teacher", "pretrain", "score", "verify", "select", "finetune",
    "assemble", "validate", "bench", "run", "cache",
)


def _available_commands() -> list:
    modules = []
    for name in COMMANDS:
        try:
            modules.append(importlib.import_module(f"lana.commands.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"lana.commands.{name}":
                raise
    return modules


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of lana (argparse
    prints the whole usage first); the subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lana", description="Latency-aware network acceleration: make a trained network N times "
        "faster on a given device with the least accuracy lost.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _available_commands():
        module.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwound like Ctrl-C, so partial results are flushed and
    resumable; ``signum`` gives the exit code (128 + signum, as a shell reports a signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


def continue_command(argv: Sequence[str], args: argparse.Namespace,
                     prog: str | None = None) -> str | None:
    """The command line that continues an interrupted command, or None for one that keeps
    nothing to continue: ``--resume`` added (and ``--force`` dropped) where the command has it;
    ``lana run`` continues when run again as it was.  ``prog`` is the program that stands for
    ``lana <subcommand>`` (``lana-profile``), as the user typed it."""
    import shlex

    words = list(argv)
    if hasattr(args, "resume"):
        words = [w for w in words if w != "--force"]
        if "--resume" not in words:
            words.append("--resume")
    elif getattr(args, "command", None) != "run":
        return None
    return shlex.join([prog, *words[1:]] if prog else ["lana", *words])


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``lana ...``; ``prog`` names the subcommand in its usage (``lana-profile``)."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if prog is not None:
        for action in parser._subparsers._group_actions:  # the one subcommand action
            action.choices[words[0]].prog = prog
    args, extra = parser.parse_known_args(words)
    if extra:  # named by the subcommand, whose --help lists what it takes
        subcommand = parser._subparsers._group_actions[0].choices[args.command]
        subcommand.error(f"unrecognized arguments: {' '.join(extra)}")
    import signal
    import threading

    from profilers.errors import ProfilerError

    main_thread = threading.current_thread() is threading.main_thread()
    caught = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {s: signal.signal(s, _terminate) for s in caught} if main_thread else {}
    try:
        code = args.func(args)
    except (LanaError, ProfilerError) as exc:  # both are raised with a one-line fix
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lana ... --json | head`: the reader left, which is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        command = continue_command(words, args, prog)
        print(f"{what}: what was done so far is saved; continue with: {command}"
              if command else what, file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return int(code or 0)


def profile_main(argv: Sequence[str] | None = None) -> int:
    """``lana-profile ...`` is ``lana profile ...``."""
    return main(["profile", *(sys.argv[1:] if argv is None else argv)], prog="lana-profile")


def command_parser(sub: argparse._SubParsersAction, name: str, doc: str | None
                   ) -> argparse.ArgumentParser:
    """A subcommand parser whose help is the first docstring line and description the whole."""
    text = (doc or "").strip()
    return sub.add_parser(name, help=text.splitlines()[0] if text else None, description=text,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def layer_arguments(p: argparse.ArgumentParser, recorded: str = "") -> None:
    """``--selector`` and ``--input-shape``: how a user module's layers and input are found."""
    first = f"the one {recorded} recorded, else " if recorded else ""
    p.add_argument("--selector", help="glob over module names picking the layers of a user "
                   f"module (path/file.py:factory; default: {first}model.lana_selector)")
    p.add_argument("--input-shape", metavar="C,H,W",
                   help=f"input C,H,W without the batch, e.g. 3,260,260 for another resolution "
                   f"(default: {first}the teacher's, model.input_shape for a user module)")


def whole(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (refused at parse time, before any work)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())

"""Errors the CLI reports as one line (``error: ...``, exit code 2) instead of a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


class LanaError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""


class UnknownNameError(LanaError, KeyError):
    """An unknown teacher, op family, pool, device or similar name; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# What each lana file is, by the part of its ``schema`` before the version.
KINDS = {"lana.lut": "a latency LUT", "lana.scores": "a scores file",
         "lana.arch": "an architecture file", "lana.search": "a search result",
         "lana.verify": "a verify result", "lana.bench": "a bench baseline",
         "lana.pretrain": "a pretraining manifest", "lana.run": "a run's record",
         "lana.student": "a student description"}


def newer_schema(found: str, reads: str) -> bool:
    """Whether ``found`` (a file's schema) is a later version of ``reads`` (this lana's)."""
    kind, _, major = str(found).partition("/")
    mine, _, my_major = reads.partition("/")
    return kind == mine and major.isdigit() and my_major.isdigit() and int(major) > int(my_major)


UPGRADE = "it was written by a newer lana: upgrade lana to read it"


def refuse_other_kind(data: Any, path: str | Path, accepted: Sequence[str], wanted: str,
                      fix: str, error: type[LanaError] = LanaError) -> None:
    """Refuse another lana file than one of the ``accepted`` kinds (``"lana.search"``, ...) by
    what it is, before its contents are misread (a LUT's layers look like architectures)."""
    schema = data.get("schema") if isinstance(data, dict) else None
    kind = schema.partition("/")[0] if isinstance(schema, str) else None
    if kind in KINDS and kind not in accepted:
        raise error(f"{path} is {KINDS[kind]} ({schema}), not {wanted}; {fix}")


def read_json_file(path: str | Path, error: type[LanaError], what: str, *, missing: str,
                   invalid: str) -> Any:
    """The parsed JSON of an input file; ``error`` with one line naming ``what`` the file is and
    the fix (``missing`` when it does not exist, ``invalid`` when it is not JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; {missing}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder; pass the file itself") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not text (not UTF-8); {invalid}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg}); "
                    f"{invalid}") from None


def check_output_file(path: str | Path, option: str, example: str,
                      error: type[LanaError] = LanaError, *,
                      inputs: Sequence[tuple[str, str | Path | None]] = ()) -> Path:
    """``path`` as a file a command will write when its work is done, refused before the work when
    it names a folder, a place that cannot be written, or one of the command's ``inputs``
    (``(option, path)`` pairs; a folder input covers the files already in it) that it would
    overwrite (``error`` with one line naming ``option``, and ``example`` as a file name that
    would do)."""
    text = str(path)
    if not text.strip():
        raise error(f"{option} is empty; name the file, e.g. {example}")
    p = Path(text)
    if text.endswith(("/", "\\")) or p.is_dir():
        raise error(f"{option} {text} is a folder; name the file, e.g. {p / example}")
    for name, given in inputs:
        if not given:
            continue
        source = Path(given).resolve()
        if source == p.resolve():
            raise error(f"{option} {text} is also the {name} file, which it would overwrite; "
                        f"write to another file, e.g. {p.with_name(example)}")
        if source.is_dir() and p.is_file() and source in p.resolve().parents:
            raise error(f"{option} {text} is a file of the {name} folder {given}, which it would "
                        f"overwrite; write outside it, e.g. {example}")
    _probe_writable(_existing_parent(p), option, text, error)
    return p


def check_output_dir(path: str | Path, option: str, example: str,
                     error: type[LanaError] = LanaError) -> Path:
    """``path`` as a folder a command writes into (made when missing), refused before the work
    when it is empty, an existing file, or a place that cannot be written."""
    text = str(path)
    if not text.strip():
        raise error(f"{option} is empty; name a folder, e.g. {example}")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise error(f"{option} {text} is a file, not a folder; name a folder, e.g. {example}")
    _probe_writable(_existing_parent(p) if not p.exists() else p, option, text, error)
    return p


def _existing_parent(p: Path) -> Path:
    parent = p.parent
    while not parent.exists() and parent != parent.parent:  # the rest is created when written
        parent = parent.parent
    return parent


def _probe_writable(folder: Path, option: str, text: str, error: type[LanaError]) -> None:
    import tempfile

    if not folder.is_dir():
        raise error(f"{option} {text} cannot be written: {folder} is a file, not a folder; "
                    f"choose another path")
    try:  # a probe, not os.access: that says yes to root on /proc and to some network mounts
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lana-probe-"):
            pass
    except OSError as exc:
        raise error(f"{option} {text} cannot be written ({exc.strerror or exc} in {folder}); "
                    f"choose another path") from None

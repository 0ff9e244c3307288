"""Versioned latency look-up tables (LUTs): load, check, query, write atomically, merge, summarise, compare.

A LUT is one JSON file (schema ``lana.lut/1``, see DESIGN.md "LUT file") holding the median latency
of every candidate op of every layer of one teacher on one device preset, plus the latency of the
teacher skeleton (``fixed``) so that a prediction is a total.  Loading checks what can silently go
wrong: another schema major, op code changed since profiling (``ops_fingerprint``), units,
teacher/batch/device mismatch, truncated JSON.  Every error is one line that says what to do,
usually the exact ``lana-profile`` command.

Writes are atomic (:mod:`lana.atomic`).  While profiling, :class:`LutWriter` also appends
each entry to a journal next to the file, so a killed profile loses nothing and ``--resume`` re-measures
nothing.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shlex
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lana.atomic import write_text
from lana.errors import LanaError
from lana.spec import parse_key

SCHEMA = "lana.lut/1"
SCHEMA_NAME, SCHEMA_MAJOR = "lana.lut", 1
UNITS = "ms"
_REQUIRED = ("teacher", "pool", "input_shape", "device", "protocol", "ops_fingerprint", "entries")


class LutError(LanaError):
    """A LUT file that cannot be used as it is (corrupt, other schema, other teacher, ...)."""


class StaleLutError(LutError):
    """A LUT profiled with other op implementations than the installed ones."""


class LutCoverageError(LutError):
    """Latencies asked for that the LUT does not have (missing or failed entries)."""


def profile_command(*, device: str, teacher: str, pool: str, out: str | os.PathLike[str] | None,
                    batch_size: int | None = None, selector: str | None = None,
                    input_shape: str | Sequence[int] | None = None, shard: str | None = None,
                    resume: bool = False, force: bool = False) -> str:
    """The ``lana-profile`` command line that (re)makes a LUT with these settings."""
    parts = ["lana-profile", "--device", device, "--teacher", teacher, "--pool", pool]
    if selector:
        parts += ["--selector", selector]
    if input_shape:
        parts += ["--input-shape", input_shape if isinstance(input_shape, str)
                  else ",".join(str(v) for v in input_shape)]
    if shard:
        parts += ["--shard", shard]
    if batch_size is not None:
        parts += ["--batch-size", str(batch_size)]
    if out is not None:
        parts += ["--out", str(out)]
    if resume:
        parts.append("--resume")
    if force:
        parts.append("--force")
    return " ".join(shlex.quote(p) for p in parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _option(command: Any, option: str) -> str | None:
    """The value of ``option`` in a recorded command line (``--device x`` or ``--device=x``)."""
    if not isinstance(command, str):
        return None
    try:
        words = shlex.split(command)
    except ValueError:  # an unclosed quote: not a command this lana wrote
        return None
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(f"{option}="):
            return word.partition("=")[2]
    return None


def _remake_command(command: str, out: Path) -> str | None:
    """``command`` (a recorded ``lana-profile`` line) writing ``out`` from scratch (``--force``)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or words[0] != "lana-profile":
        return None
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--out":
            skip = True
        elif word not in ("--resume", "--force") and not word.startswith("--out="):
            kept.append(word)
    return " ".join(shlex.quote(w) for w in [*kept, "--out", str(out), "--force"])


_COMMAND_RE = re.compile(r'"command":\s*("(?:[^"\\]|\\.)*")')


def _remake_advice(path: Path, text: str) -> str:
    """How to get a usable LUT back when the file itself cannot be read.

    ``--resume`` cannot help: it reads the same file.  Its recorded ``command`` near the top of the
    file usually survives a cut, so the advice names the exact command to make it again.
    """
    command = None
    match = _COMMAND_RE.search(text)
    if match:
        try:
            command = _remake_command(json.loads(match.group(1)), path)
        except ValueError:
            command = None
    remake = (f"re-make it (ONNX exports are cached, so only the timing is redone): {command}"
              if command else "re-run the lana-profile command that made it with --force (ONNX "
              "exports are cached, so only the timing is redone)")
    advice = f"restore it from a copy, or {remake}"
    journal = journal_path(path)
    if journal.exists():
        advice += (f"; {journal} holds the entries measured since its last save, which "
                   f"lana-profile ... --resume adds back to a restored copy")
    return advice


class Lut:
    """One LUT document; build with :meth:`new`, :meth:`load` or :meth:`from_dict`."""

    def __init__(self, data: dict[str, Any], path: Path | None = None) -> None:
        self.data = data
        self.path = path
        self._layers_checked: tuple[Any, str | None] | None = None  # (layers value, problem)
        self._calibration_checked: tuple[Any, str | None] | None = None  # (calibration, problem)

    # ----------------------------------------------------------------------------------- creation
    @classmethod
    def new(cls, *, teacher: str, pool: str, input_shape: Sequence[int], device: Mapping[str, Any],
            protocol: Mapping[str, Any], ops_fingerprint: str,
            layers: Sequence[Mapping[str, Any]] = (), **extra: Any) -> "Lut":
        """An empty LUT (no entries, no ``fixed`` yet) with the given header."""
        data: dict[str, Any] = {
            "schema": SCHEMA, "teacher": teacher, "pool": pool, "input_shape": list(input_shape),
            "device": dict(device), "protocol": dict(protocol), "ops_fingerprint": ops_fingerprint,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        data.update(extra)
        data.update({"entries": {}, "fixed": None,
                     "layers": [dict(layer) for layer in layers], "calibration": None})
        return cls(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, teacher: str | None = None,
             device: str | None = None, batch_size: int | None = None,
             check_fingerprint: bool = True) -> "Lut":
        """Read and check a LUT file; the keyword arguments say what the caller expects."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise LutError(f"LUT file {path} does not exist; make one with lana-profile "
                           f"--device <preset> --teacher <name> --out {path}") from None
        except OSError as exc:
            raise LutError(f"cannot read LUT file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise LutError(f"LUT file {path} is not text (not UTF-8); it is damaged or not a LUT: "
                           f"{_remake_advice(path, '')}") from None
        if not text.strip():
            raise LutError(f"LUT file {path} is empty; {_remake_advice(path, text)}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            what = "truncated" if exc.pos >= len(text.rstrip()) else "corrupt"
            raise LutError(f"LUT file {path} is {what} (invalid JSON at line {exc.lineno} column "
                           f"{exc.colno}: {exc.msg}); {_remake_advice(path, text)}") from None
        lut = cls.from_dict(data, path=path, check_fingerprint=check_fingerprint)
        lut.check_expected(teacher=teacher, device=device, batch_size=batch_size)
        return lut

    @classmethod
    def from_dict(cls, data: Any, *, path: Path | None = None,
                  check_fingerprint: bool = True) -> "Lut":
        """Validate a parsed LUT document (schema, fields, units, entries, fingerprint)."""
        where = f"LUT file {path}" if path is not None else "LUT"
        if not isinstance(data, dict):
            raise LutError(f"{where} is not a LANA LUT (top level is not a JSON object)")
        schema = data.get("schema")
        name, _, major = str(schema).partition("/")
        if name != SCHEMA_NAME or not major.isdigit():
            raise LutError(f"{where} is not a LANA LUT (schema {schema!r}, expected {SCHEMA!r})")
        if int(major) != SCHEMA_MAJOR:
            remake = (_remake_command(data["command"], Path(path))
                      if isinstance(data.get("command"), str) and path is not None else None)
            action = ("upgrade lana to read it" if int(major) > SCHEMA_MAJOR else
                      f"re-profile it: {remake}" if remake else
                      "re-profile it with the lana-profile command that made it and --force")
            raise LutError(f"{where} has schema {schema} but this lana reads {SCHEMA}; {action}")
        missing = [f for f in _REQUIRED if f not in data]
        if missing:
            raise LutError(f"{where} lacks field(s) {missing}; it is damaged or not a LANA LUT")
        if not isinstance(data["protocol"], dict):
            raise LutError(f"{where}: 'protocol' must be a JSON object, got "
                           f"{type(data['protocol']).__name__}; it is damaged or not a LANA LUT")
        units = data["protocol"].get("units")
        if units != UNITS:
            raise LutError(f"{where} stores latencies in {units!r}, this lana needs {UNITS!r}; "
                           f"re-profile it with lana-profile")
        if not isinstance(data["entries"], dict) or not isinstance(data["device"], dict):
            raise LutError(f"{where}: 'entries' and 'device' must be JSON objects")
        preset, batch = data["device"].get("preset"), data["device"].get("batch_size", 1)
        if not isinstance(preset, str) or not preset.strip():
            raise LutError(f"{where}: device.preset is {preset!r}, not the name of the device "
                           f"preset it was measured with; it is damaged or not a LANA LUT")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise LutError(f"{where}: device.batch_size is {batch!r}, not a whole number >= 1; "
                           f"it is damaged or not a LANA LUT")
        data.setdefault("fixed", None)
        data.setdefault("layers", [])
        data.setdefault("calibration", None)
        lut = cls(data, path)
        for key, entry in data["entries"].items():
            try:
                parse_key(key)
            except ValueError as exc:
                raise LutError(f"{where}: bad entry key: {exc}") from None
            lut._check_entry(key, entry, where)
        if data["fixed"] is not None:
            lut._check_entry("fixed", data["fixed"], where)
        lut._check_layers()  # raised by :attr:`layers`, on use (see there)
        calibration = data["calibration"]
        if calibration is not None and (
                not isinstance(calibration, dict) or calibration.get("kind") != "affine"
                or not _is_number(calibration.get("offset_ms")) or not _is_number(calibration.get("slope"))):
            raise LutError(f"{where}: calibration must be null or "
                           f"{{\"kind\": \"affine\", \"offset_ms\": a, \"slope\": b}}")
        terms = (calibration or {}).get("family_ms")
        if terms is not None and (not isinstance(terms, dict)
                                  or not all(_is_number(v) for v in terms.values())):
            raise LutError(f"{where}: calibration.family_ms must map op families to ms")
        if check_fingerprint:
            lut.check_fingerprint()
        return lut

    @staticmethod
    def _check_entry(key: str, entry: Any, where: str) -> None:
        if isinstance(entry, dict) and isinstance(entry.get("failed"), str):
            return
        if not isinstance(entry, dict) or not _is_number(entry.get("median")) or entry["median"] < 0:
            got = entry.get("median") if isinstance(entry, dict) else entry
            raise LutError(f"{where}: entry {key!r} needs a non-negative 'median' (ms) or a "
                           f"'failed' reason, got {got!r}; delete that entry and re-measure it "
                           f"with the LUT's lana-profile command and --resume")

    # ------------------------------------------------------------------------------------ checks
    @property
    def device_arg(self) -> str:
        """What to pass to ``lana-profile --device`` to profile like this LUT was.

        A built-in or ``LANA_PRESET_PATH`` preset by its name; a preset given as a ``.toml`` file
        by that file, as the recorded ``command`` names it: its name alone would be refused.
        """
        preset = self.data["device"].get("preset")
        if preset is not None and _known_preset(str(preset)):
            return str(preset)
        recorded = _option(self.data.get("command"), "--device")
        if recorded:
            return recorded
        return "<preset>" if preset is None else str(preset)

    def command(self, *, resume: bool = False, force: bool = False) -> str:
        """The ``lana-profile`` command that makes (``force``) or completes (``resume``) this LUT."""
        return profile_command(device=self.device_arg, teacher=self.teacher,
                               pool=self.pool, out=self.path, batch_size=self.batch_size,
                               selector=self.data.get("selector"),
                               input_shape=_option(self.data.get("command"), "--input-shape"),
                               shard=self.data.get("shard"), resume=resume, force=force)

    def check_fingerprint(self) -> None:
        """Raise :class:`StaleLutError` when the op code changed since this LUT was profiled."""
        from lana.ops import ops_fingerprint

        current = ops_fingerprint()
        if self.ops_fingerprint != current:
            raise StaleLutError(
                f"{self._where()} was profiled with other op code (ops fingerprint "
                f"{str(self.ops_fingerprint)[:12]}, installed {current[:12]}); its latencies may "
                f"not match the ops any more, re-profile: {self.command(force=True)}")

    def check_expected(self, *, teacher: str | None = None, device: str | None = None,
                       batch_size: int | None = None) -> None:
        """Raise :class:`LutError` when this LUT is for another teacher, device or batch size."""
        preset = self.data["device"].get("preset")
        if teacher is not None and teacher != self.teacher:
            from lana.teachers import UnknownNameError, get_entry, is_user_module

            if not is_user_module(teacher):
                try:
                    get_entry(teacher)
                except UnknownNameError as exc:  # advising to profile it could not work
                    raise LutError(f"{self._where()} is for teacher {self.teacher!r}, and {exc}; "
                                   f"or leave the teacher out to use the LUT's") from None
            other = profile_command(device=self.device_arg, teacher=teacher, pool=self.pool,
                                    out=None)
            raise LutError(f"{self._where()} is for teacher {self.teacher!r}, not {teacher!r}; "
                           f"profile one: {other}")
        if device is not None and device != preset:
            other = profile_command(device=device, teacher=self.teacher, pool=self.pool, out=None)
            raise LutError(f"{self._where()} was measured with device preset {preset!r}, not "
                           f"{device!r}; pass a LUT for {device} or profile one with {other}")
        if batch_size is not None and batch_size != self.batch_size:
            other = profile_command(device=self.device_arg, teacher=self.teacher, pool=self.pool,
                                    out=None, batch_size=batch_size)
            raise LutError(f"{self._where()} was measured at batch size {self.batch_size}, not "
                           f"{batch_size}; profile one: {other}")

    def _where(self) -> str:
        return f"LUT {self.path}" if self.path is not None else "the LUT"

    # ---------------------------------------------------------------------------------- accessors
    @property
    def teacher(self) -> str:
        return self.data["teacher"]

    @property
    def pool(self) -> str:
        return self.data["pool"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data["input_shape"])

    @property
    def device(self) -> dict[str, Any]:
        return self.data["device"]

    @property
    def preset(self) -> str:
        return str(self.data["device"].get("preset"))

    @property
    def batch_size(self) -> int:
        return int(self.data["device"].get("batch_size", 1))

    @property
    def protocol(self) -> dict[str, Any]:
        return self.data["protocol"]

    @property
    def ops_fingerprint(self) -> str:
        return self.data["ops_fingerprint"]

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return self.data["entries"]

    @property
    def layers(self) -> list[dict[str, Any]]:
        """Per layer of the teacher, its ``name`` and the op keys of its ``ops`` pool.

        Checked when the LUT is loaded, but raised here, on use: ``lana-profile --resume`` loads
        the file, never reads the old layers and rewrites them, so it must still open it.
        """
        problem = self._check_layers()
        if problem is not None:
            raise LutError(f"{self._where()}: {problem}; its lana-profile command rewrites the "
                           f"layers and keeps every entry: {self.command(resume=True)}")
        return self.data["layers"]

    def _check_layers(self) -> str | None:
        """What is wrong with ``layers`` (None: nothing), checked once per value it holds."""
        layers = self.data["layers"]
        if self._layers_checked is None or self._layers_checked[0] is not layers:
            self._layers_checked = (layers, _layers_problem(layers, self.entries))
        return self._layers_checked[1]

    @property
    def calibration(self) -> dict[str, Any] | None:
        return self.data["calibration"]

    def lowest_prediction(self, calibration: Mapping[str, Any] | None = None) -> float | None:
        """The lowest prediction (ms) of any network this LUT's layers allow, under ``calibration``
        (default: the LUT's own, if any): ``fixed`` plus, per layer, the measured op whose
        calibrated cost (``slope * latency``, plus its family's term) is lowest.  Every term is per
        op, so this is exact, and no higher than the teacher's prediction (its ops are among the
        layers').  None when the LUT cannot tell: no or damaged layers, a layer with no measured
        op, no ``fixed`` latency.
        """
        cal = (self.calibration if calibration is None else calibration) or {}
        fixed = self.data["fixed"]
        if (not self.data["layers"] or self._check_layers() is not None
                or not isinstance(fixed, dict) or "median" not in fixed):
            return None
        slope = float(cal.get("slope", 1.0))
        terms = {str(f): float(v) for f, v in (cal.get("family_ms") or {}).items()}
        most_negative = min([0.0, *terms.values()])
        total = float(cal.get("offset_ms", 0.0)) + slope * float(fixed["median"])
        for layer in self.data["layers"]:
            costs = sorted((slope * float(self.entries[k]["median"]), k)
                           for k in layer["ops"] if self.has(k))
            if not costs:
                return None
            best = math.inf
            for cost, key in costs:
                if cost + most_negative >= best:
                    break  # no family term brings this op or a dearer one below the best
                best = min(best, cost + terms.get(_family(key), 0.0) if terms else cost)
            total += best
        return total

    def _calibration_problem(self) -> str | None:
        """What makes the calibration predict nonsense (None: nothing), checked once per value it
        holds: a slope that is not positive, or a prediction of no time for the cheapest network
        the layers allow.  Raised by :meth:`predict`, on use: ``lana lut calibrate`` must still
        open the LUT to re-fit it."""
        cal = self.data["calibration"]
        if self._calibration_checked is None or self._calibration_checked[0] is not cal:
            problem = None
            if cal is not None and not float(cal["slope"]) > 0:
                problem = (f"its calibration has slope {float(cal['slope']):g}; a calibrated "
                           f"latency must grow with the LUT sum (slope > 0)")
            elif cal is not None:
                low = self.lowest_prediction(cal)
                if low is not None and not low > 0:
                    problem = (f"its calibration predicts {low:.4g} ms for the cheapest network "
                               f"its layers allow; a latency must be positive")
            self._calibration_checked = (cal, problem)
        return self._calibration_checked[1]

    def _calibration_advice(self) -> str:
        """How to replace a calibration that predicts nonsense."""
        parts = ["lana", "lut", "calibrate", "--lut", str(self.path or "LUT.json"),
                 "--device", self.device_arg]
        pool = (self.calibration or {}).get("pool")
        if isinstance(pool, str):
            parts += ["--pool", pool]
        return (f"re-fit it with {' '.join(shlex.quote(p) for p in parts)}, or delete the LUT's "
                f"\"calibration\" field to use the raw LUT sum")

    @property
    def fixed(self) -> dict[str, Any] | None:
        return self.data["fixed"]

    @property
    def fixed_ms(self) -> float:
        """Median latency of the teacher skeleton (stem, head, overhead)."""
        fixed = self.data["fixed"]
        if fixed is None or "median" not in fixed:
            reason = f" ({fixed['failed']})" if fixed and "failed" in fixed else ""
            raise LutCoverageError(f"{self._where()} has no 'fixed' (skeleton) latency{reason}; "
                                   f"complete it: {self.command(resume=True)}")
        return float(fixed["median"])

    def has(self, key: str) -> bool:
        """True when ``key`` has a measured latency (not missing, not failed)."""
        entry = self.entries.get(key)
        return entry is not None and "median" in entry

    def failed(self, key: str) -> str | None:
        """The reason ``key`` could not be measured, or None."""
        entry = self.entries.get(key)
        return entry.get("failed") if entry is not None else None

    def latency(self, key: str) -> float:
        """Median latency of ``key`` in ms; :class:`LutCoverageError` when missing or failed."""
        entry = self.entries.get(key)
        if entry is not None and "median" in entry:
            return float(entry["median"])
        if entry is not None:
            raise LutCoverageError(f"op {key} failed to profile in {self._where()} "
                                   f"({entry['failed']}); the search skips it")
        raise LutCoverageError(f"op {key} is not in {self._where()}; add it: "
                               f"{self.command(resume=True)}")

    def predict_raw(self, keys: Iterable[str]) -> float:
        """``fixed`` plus the sum of the op medians: the uncalibrated network latency (ms)."""
        return self.fixed_ms + sum(self.latency(k) for k in keys)

    def predict(self, keys: Iterable[str]) -> float:
        """Predicted network latency (ms): :meth:`predict_raw`, calibrated when the LUT has one.

        The calibration is ``offset_ms + slope * raw``, plus ``family_ms[family]`` for every op of
        a family listed there (an optional per-family correction, e.g. for launch overhead).  A
        calibration that predicts a non-positive latency (for this network, or for the cheapest one
        the layers allow) raises :class:`LutError`.
        """
        keys = list(keys)
        raw = self.predict_raw(keys)
        cal = self.calibration
        if cal is None:
            return raw
        problem = self._calibration_problem()
        if problem is not None:
            raise LutError(f"{self._where()}: {problem}; {self._calibration_advice()}")
        out = float(cal["offset_ms"]) + float(cal["slope"]) * raw
        terms = cal.get("family_ms") or {}
        if terms:
            out += sum(float(terms.get(_family(k), 0.0)) for k in keys)
        if not out > 0:  # a network outside the layers, or a LUT without them
            raise LutError(f"{self._where()}: its calibration predicts {out:.4g} ms for a network "
                           f"whose LUT sum is {raw:.4g} ms; a latency must be positive; "
                           f"{self._calibration_advice()}")
        return out

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys with no entry at all (failed entries are known, not missing)."""
        return [k for k in dict.fromkeys(keys) if k not in self.entries]

    def require(self, keys: Iterable[str]) -> None:
        """Raise :class:`LutCoverageError` naming how many keys are missing and the command that adds them."""
        keys = list(dict.fromkeys(keys))
        missing = self.missing(keys)
        if missing:
            raise LutCoverageError(
                f"{self._where()} lacks {len(missing)} of {len(keys)} needed entries "
                f"(e.g. {missing[0]}); add them: {self.command(resume=True)}")

    def required_keys(self) -> list[str]:
        """Every key some layer needs, in layer order, without repeats."""
        return list(dict.fromkeys(k for layer in self.layers for k in layer.get("ops", ())))

    # ------------------------------------------------------------------------------------ writing
    def set_entry(self, key: str, entry: Mapping[str, Any]) -> None:
        parse_key(key)
        self._check_entry(key, entry, self._where())
        self.entries[key] = dict(entry)

    def set_failed(self, key: str, reason: str) -> None:
        self.set_entry(key, {"failed": " ".join(str(reason).split())[:500] or "failed"})

    def set_fixed(self, entry: Mapping[str, Any]) -> None:
        self._check_entry("fixed", entry, self._where())
        self.data["fixed"] = dict(entry)

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def dumps(self) -> str:
        """JSON text with one entry and one layer per line (readable diffs of shipped LUTs)."""
        lines = ["{"]
        items = list(self.data.items())
        for i, (name, value) in enumerate(items):
            comma = "," if i < len(items) - 1 else ""
            if name == "entries" and value:
                body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(value.items()))
                lines.append(f" {json.dumps(name)}: {{\n{body}\n }}{comma}")
            elif name == "layers" and value:
                body = ",\n".join(f"  {json.dumps(layer)}" for layer in value)
                lines.append(f" {json.dumps(name)}: [\n{body}\n ]{comma}")
            else:
                lines.append(f" {json.dumps(name)}: {json.dumps(value)}{comma}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write atomically (:func:`lana.atomic.write_text`): readers see the old or the new file."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise LutError("no path to save the LUT to")
        write_text(target, self.dumps())
        self.path = target
        return target


class LutWriter:
    """Saves a LUT while it is being measured.

    Every :meth:`add` appends one JSON line to ``<file>.journal`` (flushed to the OS at once, so a
    SIGKILL loses nothing); every ``every`` entries or ``every_s`` seconds, and on :meth:`flush`,
    the whole LUT is rewritten atomically and the journal emptied.  :meth:`recover` folds a leftover
    journal back into the LUT on resume.
    """

    def __init__(self, lut: Lut, path: str | os.PathLike[str], *, every: int = 16,
                 every_s: float = 10.0) -> None:
        self.lut = lut
        self.path = Path(path)
        self.journal_path = journal_path(self.path)
        self.every = every
        self.every_s = every_s
        self._pending = 0
        self._last = time.monotonic()
        self._journal = None

    def add(self, key: str | None, entry: Mapping[str, Any]) -> None:
        """Record ``entry`` for ``key`` (``None``: the skeleton's ``fixed`` latency)."""
        if key is None:
            self.lut.set_fixed(entry)
        else:
            self.lut.set_entry(key, entry)
        if self._journal is None:
            self._journal = open(self.journal_path, "a")
        self._journal.write(json.dumps({"key": key, "entry": dict(entry)}) + "\n")
        self._journal.flush()
        self._pending += 1
        if self._pending >= self.every or time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Rewrite the LUT file atomically and empty the journal."""
        self.lut.save(self.path)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.journal_path.unlink(missing_ok=True)
        self._pending = 0
        self._last = time.monotonic()

    def close(self) -> None:
        self.flush()

    @staticmethod
    def recover(lut: Lut, path: str | os.PathLike[str]) -> int:
        """Fold the journal next to ``path`` into ``lut``; returns how many entries it held."""
        jpath = journal_path(Path(path))
        if not jpath.exists():
            return 0
        count = 0
        for line in jpath.read_text().splitlines():
            try:
                record = json.loads(line)
                key, entry = record["key"], record["entry"]
                if key is None:
                    lut.set_fixed(entry)
                else:
                    lut.set_entry(key, entry)
            except (ValueError, KeyError, TypeError, LutError):
                continue  # a line cut short by a kill; its op is simply measured again
            count += 1
        return count


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def _known_preset(name: str) -> bool:
    """True when ``lana-profile --device name`` finds a preset of that name (built-in or in
    ``LANA_PRESET_PATH``); also when the profilers cannot be imported to tell."""
    try:
        from profilers.device import preset_names
    except ImportError:
        return True
    return name in preset_names()


def _layers_problem(layers: Any, entries: Mapping[str, Any]) -> str | None:
    """What is wrong with a LUT's ``layers`` field (a list of ``{"name", "ops": [op key, ...]}``),
    or None; keys already validated as entries are not parsed again."""
    shape = 'a list of {"name": ..., "ops": [op key, ...]} objects'
    if not isinstance(layers, list):
        return f"'layers' must be {shape}, got {type(layers).__name__} {_clip(layers)}"
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            return f"layer {i} must be an object, got {_clip(layer)}"
        name = layer.get("name")
        if not isinstance(name, str):
            return f"layer {i} needs a 'name' string, got {_clip(name)}"
        ops = layer.get("ops")
        if not isinstance(ops, list) or not ops:
            return f"layer {i} ({name}) needs 'ops', a non-empty list of op keys, got {_clip(ops)}"
        for key in ops:
            if not isinstance(key, str):
                return f"layer {i} ({name}) lists {_clip(key)}, not an op key string"
            if key not in entries:
                try:
                    parse_key(key)
                except ValueError as exc:
                    return f"layer {i} ({name}) lists a bad op key: {exc}"
    return None


def _clip(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------ merge / show / diff
_HEADER_MUST_MATCH = ("teacher", "pool", "input_shape", "protocol", "ops_fingerprint", "selector")
_DEVICE_MUST_MATCH = ("preset", "backend", "device", "precision", "batch_size", "threads")


COMBINE = ("min", "median")


def merge(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None, *,
          combine: str | None = None) -> Lut:
    """Join LUTs of one profile split into shards (``--shard i/n``); their headers must agree.

    Shards of one profile hold disjoint entries, so files that are not shards of one ``n``, the
    same shard twice, or files sharing an entry are refused: taking one file's entry over
    another's would silently drop a measurement.

    With ``combine`` ("min" or "median") the files are instead whole profiles of the same pool
    taken at different moments: an op measured in several of them gets the fastest profile's
    entry (``min``) or the median of its medians, and keeps them all under ``profiles``; so does
    the fixed part.  On a machine
    whose busy moments only ever add time, the min keeps an op that one profile caught in a slow
    moment out of the prediction.
    """
    if len(paths) < 2:
        given = f" (got only {paths[0]})" if paths else ""
        raise LutError(f"merge needs two or more LUT files{given}: the shards of one lana-profile "
                       f"--shard i/n run, or whole profiles with --combine min|median")
    if combine is not None and combine not in COMBINE:
        raise LutError(f"--combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    resolved: dict[str, str] = {}
    for p in paths:
        real = os.path.realpath(p)
        if real in resolved:
            both = f" (as {resolved[real]} and {p})" if resolved[real] != str(p) else ""
            raise LutError(f"{p} is given twice{both}; pass each shard or profile once")
        resolved[real] = str(p)
    luts = [Lut.load(p, check_fingerprint=False) for p in paths]
    if combine is None:
        _check_shards(luts)
    base = luts[0]
    merged = Lut(json.loads(json.dumps(base.data)))
    merged.data.pop("shard", None)
    merged.data["merged_from"] = [str(p) for p in paths]
    seen = [base.device.get("seen")]
    for other in luts[1:]:
        diffs = [f for f in _HEADER_MUST_MATCH if base.data.get(f) != other.data.get(f)]
        diffs += [f"device.{f}" for f in _DEVICE_MUST_MATCH if base.device.get(f) != other.device.get(f)]
        if diffs:
            what = ("profiles of one pool with one preset" if combine else
                    "shards of one lana-profile command")
            raise LutError(f"cannot merge {other.path} into {base.path}: they differ in "
                           f"{', '.join(diffs)}; merge only {what}")
        for key, entry in other.entries.items():
            current = merged.entries.get(key)
            if current is None or ("failed" in current and "median" in entry):
                merged.entries[key] = entry
        if merged.fixed is None or ("median" not in merged.fixed and other.fixed and "median" in other.fixed):
            merged.data["fixed"] = other.fixed
        if len(other.layers) > len(merged.layers):
            merged.data["layers"] = other.layers
        if other.device.get("seen") not in seen:
            seen.append(other.device.get("seen"))
    if len(seen) > 1:
        merged.data["device"]["seen_shards" if combine is None else "seen_profiles"] = seen
    if combine is not None:
        _combine_profiles(merged, luts, combine)
        merged.data["combined"] = combine
        merged.data["calibration"] = None  # fitted to one profile's figures, not these
    if out is not None:
        merged.save(out)
    return merged


def _check_shards(luts: Sequence[Lut]) -> None:
    """Refuse to join files that are not distinct shards of one profile: without ``--combine``
    an op in two files would silently keep the first file's entry."""
    join = "to join whole profiles of one pool, pass --combine min|median"
    shards: dict[int, Lut] = {}
    count = None
    for lut in luts:
        i, _, n = str(lut.data.get("shard")).partition("/")
        if not (i.isdigit() and n.isdigit()):
            raise LutError(f"{lut.path} is a whole profile, not a shard (lana-profile --shard "
                           f"i/n); {join}")
        if count is not None and int(n) != count:
            raise LutError(f"{lut.path} is shard {i}/{n} but {luts[0].path} is shard "
                           f"{luts[0].data['shard']}; merge the shards of one lana-profile run")
        count = int(n)
        if int(i) in shards:
            raise LutError(f"{shards[int(i)].path} and {lut.path} are both shard {i}/{n}; pass "
                           f"each shard once, or {join}")
        shards[int(i)] = lut
    owner: dict[str, Lut] = {}
    for lut in luts:
        for key in lut.entries:
            first = owner.setdefault(key, lut)
            if first is not lut:
                both = sum(1 for k in lut.entries if k in first.entries)
                raise LutError(f"{first.path} and {lut.path} both hold entries for {both} op(s) "
                               f"(e.g. {key}), which shards of one profile never do; {join}")


def _combine_profiles(merged: Lut, luts: Sequence[Lut], combine: str) -> None:
    """Per op (and for the fixed part) measured in several ``luts``: the entry of the fastest
    profile (``min``), or the median of the medians (``median``); ``profiles`` lists them all."""

    def reduce(entries: list[dict[str, Any]], current: dict[str, Any]) -> dict[str, Any]:
        values = [float(e["median"]) for e in entries]
        if combine == "min":
            return {**entries[values.index(min(values))], "profiles": values}
        return {**current, "median": statistics.median(values), "profiles": values,
                "noisy": all(bool(e.get("noisy")) for e in entries)}

    for key, entry in merged.entries.items():
        found = [lut.entries[key] for lut in luts if "median" in lut.entries.get(key, {})]
        if len(found) > 1:
            merged.entries[key] = reduce(found, entry)
    fixed = [lut.fixed for lut in luts if lut.fixed and "median" in lut.fixed]
    if len(fixed) > 1:
        merged.data["fixed"] = reduce(fixed, merged.fixed)


def _family(key: str) -> str:
    return parse_key(key).family


def summarize(lut: Lut, *, top: int = 5) -> dict[str, Any]:
    """Figures ``lana lut show`` prints: coverage, noise, extremes, per-family medians, fingerprint."""
    measured = {k: e["median"] for k, e in lut.entries.items() if "median" in e}
    failed = {k: e["failed"] for k, e in lut.entries.items() if "failed" in e}
    required = lut.required_keys()
    ordered = sorted(measured.items(), key=lambda kv: kv[1])
    families: dict[str, list[float]] = defaultdict(list)
    for key, ms in measured.items():
        families[_family(key)].append(ms)
    try:
        lut.check_fingerprint()
        fingerprint = "current"
    except StaleLutError:
        fingerprint = "stale"
    except ImportError:
        fingerprint = "unknown"
    teacher_total = None
    if lut.layers and lut.fixed and "median" in lut.fixed:
        teacher_keys = [next((k for k in layer["ops"] if _family(k) == "teacher"), None)
                        for layer in lut.layers]
        if all(k is not None and k in measured for k in teacher_keys):
            teacher_total = lut.fixed_ms + sum(measured[k] for k in teacher_keys)
    return {
        "path": str(lut.path) if lut.path else None, "teacher": lut.teacher, "pool": lut.pool,
        "input_shape": list(lut.input_shape), "device": lut.device, "protocol": lut.protocol,
        "created": lut.data.get("created"), "ops_fingerprint": fingerprint,
        "entries": len(lut.entries), "measured": len(measured), "failed": len(failed),
        "required": len(required), "missing": len(lut.missing(required)),
        "noisy": sum(1 for e in lut.entries.values() if e.get("noisy")),
        "fixed_ms": lut.fixed.get("median") if lut.fixed else None,
        "teacher_total_ms": teacher_total, "calibration": lut.calibration,
        "fastest": ordered[:top], "slowest": ordered[::-1][:top],
        "families": {f: {"n": len(v), "median_ms": statistics.median(v)}
                     for f, v in sorted(families.items())},
        "failed_examples": list(failed.items())[:top],
    }


def differences(a: Lut, b: Lut) -> dict[str, list[Any]]:
    """``{what: [a's, b's]}`` for the settings in which ``a`` and ``b`` differ: teacher, pool, batch
    size, input shape (then the two time other ops and networks) and preset (other devices)."""
    shape = "x".join
    pairs = {"teacher": (a.teacher, b.teacher), "pool": (a.pool, b.pool),
             "batch size": (a.batch_size, b.batch_size),
             "input shape": (shape(map(str, a.input_shape)), shape(map(str, b.input_shape))),
             "preset": (a.preset, b.preset)}
    return {what: list(pair) for what, pair in pairs.items() if pair[0] != pair[1]}


def diff(a: Lut, b: Lut, *, top: int = 5) -> dict[str, Any]:
    """Compare two LUTs op by op: ratio b/a distribution, who is faster, per family, largest changes."""
    common = sorted(k for k in a.entries if a.has(k) and b.has(k))
    ratios = {k: b.latency(k) / a.latency(k) for k in common if a.latency(k) > 0}
    rel = sorted(abs(b.latency(k) - a.latency(k)) / a.latency(k) for k in ratios)
    values = sorted(ratios.values())
    families: dict[str, list[float]] = defaultdict(list)
    for key, r in ratios.items():
        families[_family(key)].append(r)

    def q(vals: list[float], p: float) -> float | None:
        if not vals:
            return None
        h = (len(vals) - 1) * p
        lo = math.floor(h)
        hi = min(lo + 1, len(vals) - 1)
        return vals[lo] + (h - lo) * (vals[hi] - vals[lo])

    by_change = sorted(ratios.items(), key=lambda kv: abs(math.log(kv[1])) if kv[1] > 0 else math.inf)
    return {
        "differs": differences(a, b),
        "a": {"path": str(a.path), "preset": a.preset, "teacher": a.teacher, "pool": a.pool},
        "b": {"path": str(b.path), "preset": b.preset, "teacher": b.teacher, "pool": b.pool},
        "same_device": a.preset == b.preset and ((a.device.get("seen") or {}).get("cpu")
                                                 == (b.device.get("seen") or {}).get("cpu")),
        "common": len(ratios), "only_a": sum(1 for k in a.entries if a.has(k) and not b.has(k)),
        "only_b": sum(1 for k in b.entries if b.has(k) and not a.has(k)),
        "ratio_b_over_a": {"min": q(values, 0), "p10": q(values, 0.1), "median": q(values, 0.5),
                           "p90": q(values, 0.9), "max": q(values, 1)},
        "abs_rel_change": {"median": q(rel, 0.5), "p95": q(rel, 0.95)},
        "a_faster": sum(1 for r in values if r > 1), "b_faster": sum(1 for r in values if r < 1),
        "fixed_ratio": (b.fixed_ms / a.fixed_ms if a.fixed and b.fixed and "median" in a.fixed
                        and "median" in b.fixed and a.fixed_ms > 0 else None),
        "families": {f: {"n": len(v), "median_ratio": statistics.median(v)}
                     for f, v in sorted(families.items())},
        "largest_changes": [(k, a.latency(k), b.latency(k)) for k, _ in by_change[::-1][:top]],
    }

"""Frozen operation specs and the one function pair that turns them into LUT keys and back.

Every candidate operation is described by an :class:`OpSpec`: the op family, its hyper-parameters,
and the tensor shapes it maps between.  A spec is hashable, serialisable, and never mutated.  LUT
entries, score files, architecture files and checkpoints all refer to ops by :func:`op_key`, and the
only way to read a key is :func:`parse_key`, so a key cannot drift in meaning between tables.

Key grammar (one line, no spaces)::

    <family>:<name>=<value>,<name>=<value>|in=<C>x<H>x<W>|out=<C>x<H>x<W>|s=<stride>

Parameter names are sorted; values are ints, floats (``repr``), ``none``, or strings of
``[A-Za-z0-9_.-]`` (quoted with a leading ``'`` when they would read as a number or ``none``).  A family with no parameters writes ``<family>:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

Shape = tuple[int, int, int]
ParamValue = int | float | str | None

_FAMILY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_STR_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class KeyError_(ValueError):
    """A string that is not a well-formed op key."""


def _check_value(name: str, value: Any) -> ParamValue:
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise TypeError(f"parameter {name!r}: booleans are not allowed, use 0/1")
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"parameter {name!r} must be finite, got {value!r}")
        if value.is_integer():
            # 2.0 and 2 must give one key; floats that are whole numbers are stored as ints.
            return int(value)
        return float(value)
    if isinstance(value, str):
        if not _STR_RE.match(value):
            raise ValueError(f"parameter {name!r}: string value {value!r} is not key-safe")
        return value
    raise TypeError(f"parameter {name!r} has unsupported type {type(value).__name__}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shape(value: Any, what: str) -> Shape:
    shape = tuple(int(v) for v in value)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{what} must be (C, H, W) with positive sizes, got {value!r}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class OpSpec:
    """One candidate operation for one layer geometry."""

    family: str  # registered op family, e.g. "efn", "cb_stack", "identity", "teacher"
    params: tuple[tuple[str, ParamValue], ...] = field(default=())  # sorted (name, value) pairs
    in_shape: Shape = (1, 1, 1)  # (C, H, W) of the layer input, batch excluded
    out_shape: Shape = (1, 1, 1)  # (C, H, W) of the layer output
    stride: int = 1  # spatial reduction in_H / out_H

    def __post_init__(self) -> None:
        if not _FAMILY_RE.match(self.family):
            raise ValueError(f"op family {self.family!r} must match {_FAMILY_RE.pattern}")
        items = self.params.items() if isinstance(self.params, Mapping) else self.params
        checked = []
        for name, value in items:
            if not _NAME_RE.match(name):
                raise ValueError(f"parameter name {name!r} must match {_NAME_RE.pattern}")
            checked.append((name, _check_value(name, value)))
        checked.sort()
        names = [n for n, _ in checked]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {names}")
        object.__setattr__(self, "params", tuple(checked))
        object.__setattr__(self, "in_shape", _shape(self.in_shape, "in_shape"))
        object.__setattr__(self, "out_shape", _shape(self.out_shape, "out_shape"))
        if int(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        object.__setattr__(self, "stride", int(self.stride))

    @classmethod
    def make(cls, family: str, in_shape: Shape, out_shape: Shape, stride: int = 1,
             **params: ParamValue) -> "OpSpec":
        """Build a spec from keyword parameters (the usual way in op families)."""
        return cls(family, tuple(params.items()), tuple(in_shape), tuple(out_shape), stride)

    def param(self, name: str, default: ParamValue = None) -> ParamValue:
        for n, v in self.params:
            if n == name:
                return v
        return default

    @property
    def kwargs(self) -> dict[str, ParamValue]:
        return dict(self.params)

    @property
    def key(self) -> str:
        return op_key(self)

    def with_shapes(self, in_shape: Shape, out_shape: Shape, stride: int) -> "OpSpec":
        return OpSpec(self.family, self.params, in_shape, out_shape, stride)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "params": dict(self.params),
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "stride": self.stride,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OpSpec":
        return cls(data["family"], tuple(dict(data.get("params", {})).items()),
                   tuple(data["in_shape"]), tuple(data["out_shape"]), int(data["stride"]))


def _fmt_value(value: ParamValue) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and (value == "none" or _is_number(value)):
        return "'" + value  # a string that would read back as a number or None is quoted
    return str(value)


def _parse_value(text: str) -> ParamValue:
    if text.startswith("'"):
        return text[1:]
    if text == "none":
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if _is_number(text):
        return float(text)
    return text


def _fmt_shape(shape: Shape) -> str:
    return "x".join(str(v) for v in shape)


def op_key(spec: OpSpec) -> str:
    """The canonical LUT key of ``spec``; ``parse_key(op_key(s)) == s`` for every spec."""
    params = ",".join(f"{n}={_fmt_value(v)}" for n, v in spec.params)
    return (f"{spec.family}:{params}|in={_fmt_shape(spec.in_shape)}"
            f"|out={_fmt_shape(spec.out_shape)}|s={spec.stride}")


_KEY_RE = re.compile(
    r"^(?P<family>[a-z][a-z0-9_]*):(?P<params>[^|]*)\|in=(?P<in>\d+x\d+x\d+)"
    r"\|out=(?P<out>\d+x\d+x\d+)\|s=(?P<s>\d+)$"
)


def parse_key(key: str) -> OpSpec:
    """Read a key written by :func:`op_key`; anything else raises ``ValueError`` naming the problem."""
    m = _KEY_RE.match(key)
    if not m:
        raise KeyError_(
            f"not an op key: {key!r} (expected 'family:a=1,b=2|in=CxHxW|out=CxHxW|s=N')")
    params: list[tuple[str, ParamValue]] = []
    if m["params"]:
        for item in m["params"].split(","):
            name, sep, value = item.partition("=")
            if not sep:
                raise KeyError_(f"op key {key!r}: parameter {item!r} has no '='")
            params.append((name, _parse_value(value)))
    spec = OpSpec(m["family"], tuple(params),
                  tuple(int(v) for v in m["in"].split("x")),
                  tuple(int(v) for v in m["out"].split("x")), int(m["s"]))
    if op_key(spec) != key:
        raise KeyError_(f"op key {key!r} is not canonical; the canonical form is {op_key(spec)!r}")
    return spec

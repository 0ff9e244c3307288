"""Budgets: a limit on one cost table, absolute ("12.5", "12.5ms", "5M") or relative to the teacher
architecture ("0.5x" = half the teacher's total on that table), and budget lists/ranges for sweeps
("0.3x,0.4x" or "0.3x:0.7x:0.1x")."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lana.search.errors import SearchError
from lana.search.table import SearchTable

_SUFFIX = {"": 1.0, "ms": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(x|ms|k|m|g|)\s*$",
                     re.IGNORECASE)


def _parse(text: str) -> tuple[float, bool]:
    """(value, is_fraction) of one budget string."""
    value, unit = _split(text)
    if unit == "x":
        return value, True
    return value * _SUFFIX[unit], False


def _split(text: str) -> tuple[float, str]:
    m = _NUMBER.match(text)
    if not m:
        raise SearchError(f"budget {text!r} is not a number; write e.g. 12.5 or 12.5ms for a "
                          f"latency, 5M for parameters or FLOPs, or 0.5x for half the teacher's")
    return float(m.group(1)), m.group(2).lower()


def check_unit(text: str, latency: bool) -> None:
    """Refuse a count (5M) as a latency budget and milliseconds as a parameter or FLOP budget."""
    unit = _split(text)[1]
    if latency and unit in ("k", "m", "g"):
        raise SearchError(f"budget {text!r} is a count, but latency budgets are milliseconds; "
                          f"write e.g. 12.5, 12.5ms or 0.5x")
    if not latency and unit == "ms":
        raise SearchError(f"limit {text!r} is a time, but parameters and FLOPs are counted; write "
                          f"e.g. 5M, 300M or 0.5x")


@dataclass(frozen=True)
class Budget:
    """Total cost on ``table`` must be at most ``limit`` (table units, or a string such as "0.5x")."""

    table: str  # cost table name, e.g. the LUT's device preset, or "params"
    limit: float | str  # absolute limit, or "0.5x" for a fraction of the teacher architecture

    def __post_init__(self) -> None:
        value, fraction = _parse(self.limit) if isinstance(self.limit, str) else (
            float(self.limit), False)
        if not math.isfinite(value) or value <= 0:
            raise SearchError(f"budget {self.limit!r} on {self.table!r} must be a positive number")

    @property
    def is_fraction(self) -> bool:
        return isinstance(self.limit, str) and _parse(self.limit)[1]

    @property
    def value(self) -> float:
        """The number as given: a fraction for "0.5x", else the absolute limit."""
        return _parse(self.limit)[0] if isinstance(self.limit, str) else float(self.limit)

    def resolve(self, table: SearchTable) -> float:
        """The absolute limit on ``table`` (fractions are of the teacher architecture's total)."""
        if self.table not in table.costs:
            raise SearchError(f"budget on unknown cost table {self.table!r}; tables are "
                              f"{table.table_names}")
        if self.is_fraction:
            return self.value * table.total(self.table, table.teacher_choice())
        return self.value

    def label(self) -> str:
        return str(self.limit) if isinstance(self.limit, str) else f"{self.limit:g}"


def parse_budgets(text: str) -> list[str]:
    """Split "0.3x,0.5x" and expand ranges "0.3x:0.7x:0.1x" into budget strings; the stop is
    always included, also when the step does not land on it (0.5x:0.6x:0.3x: 0.5x and 0.6x)."""
    out: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if ":" not in part:
            _parse(part)
            out.append(part)
            continue
        pieces = part.split(":")
        if len(pieces) != 3:
            raise SearchError(f"budget range {part!r} must be start:stop:step, e.g. 0.3x:0.7x:0.1x")
        (a, fa), (b, fb), (s, fs) = (_parse(p) for p in pieces)
        if s <= 0 or b < a:
            raise SearchError(f"budget range {part!r} needs start <= stop and a positive step")
        if not fa == fb == fs:
            raise SearchError(f"budget range {part!r} mixes fractions ('x') and absolute values; "
                              f"use one kind for start, stop and step")
        count = int(math.floor((b - a) / s + 1e-9)) + 1
        if count > 1000:
            raise SearchError(f"budget range {part!r} has {count} values; use a larger step")
        values = [a + i * s for i in range(count)]
        if b - values[-1] > 1e-9 * max(1.0, abs(b)):  # a step that does not land on the stop
            values.append(b)
        out += [f"{v:.6g}{'x' if fa else ''}" for v in values]
    if not out:
        raise SearchError(f"no budget in {text!r}; write e.g. 0.5x or 0.3x:0.7x:0.1x")
    seen: dict[tuple[float, bool], str] = {}
    for budget in out:
        value, fraction = _parse(budget)
        key = (round(value, 9), fraction)
        if key in seen:
            both = f" (as {seen[key]} and {budget})" if seen[key] != budget else ""
            raise SearchError(f"budget {budget} comes twice in {text!r}{both}; give each budget "
                              f"once")
        seen[key] = budget
    return out

"""The one timing core every backend uses: warm-up, timed iterations, robust statistics.

Modelled on ``torch.utils.benchmark.Timer`` and its ``Measurement``: a :class:`Timer` runs a
callable under a :class:`Protocol` (warm-up by time *and* count, then at least ``min_iters``
iterations *and* ``min_time_s`` seconds), keeps every raw sample, and derives the median,
p10/p90 and IQR.  A result whose IQR/median exceeds the protocol's noise threshold is measured
again (up to ``retries`` times); if every attempt stays noisy, the one with the lowest median (the
least disturbed: interference only adds time) is kept and flagged ``noisy``.  The garbage collector is off while timing.

The clock is injectable, so the statistics are tested with a fake clock and no hardware.  Device
timers (CUDA events) plug in as ``interval``: a callable that runs one iteration and returns its
duration in milliseconds, while the clock still decides when warm-up and measurement end.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping

from profilers.errors import ProfilerError

Clock = Callable[[], float]  # seconds, monotonic

_STATISTICS = ("median",)
_UNITS = ("ms",)


@dataclass(frozen=True)
class Protocol:
    """How one entry is measured; recorded verbatim in every LUT."""

    warmup_s: float = 0.05  # warm up for at least this long ...
    warmup_iters: int = 5  # ... and at least this many iterations
    min_iters: int = 20  # measure at least this many iterations ...
    min_time_s: float = 0.2  # ... and at least this long
    max_iters: int = 10_000  # stop here even if min_time_s is not reached (very fast ops)
    noise_threshold: float = 0.10  # IQR / median above this counts as noisy
    retries: int = 2  # re-measurements of a noisy entry before it is flagged
    statistic: str = "median"  # the statistic a LUT uses
    units: str = "ms"  # units of every latency in a LUT

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.min_time_s < 0:
            raise ProfilerError("protocol: warmup_s and min_time_s must be >= 0")
        if self.warmup_iters < 0 or self.min_iters < 1 or self.max_iters < self.min_iters:
            raise ProfilerError(
                "protocol: need warmup_iters >= 0, min_iters >= 1 and max_iters >= min_iters, got "
                f"{self.warmup_iters}/{self.min_iters}/{self.max_iters}")
        if self.noise_threshold <= 0 or self.retries < 0:
            raise ProfilerError("protocol: noise_threshold must be > 0 and retries >= 0")
        if self.statistic not in _STATISTICS:
            raise ProfilerError(f"protocol: statistic must be one of {_STATISTICS}, "
                                f"got {self.statistic!r}")
        if self.units not in _UNITS:
            raise ProfilerError(f"protocol: units must be one of {_UNITS}, got {self.units!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Protocol":
        """Build from a mapping (a TOML table or a LUT's ``protocol``); unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ProfilerError(f"protocol: unknown field(s) {unknown}; valid: {sorted(names)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "Protocol":
        return dataclasses.replace(self, **changes)


def quantile(sorted_values: list[float] | tuple[float, ...], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default method)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


@dataclass(frozen=True)
class Measurement:
    """Raw samples of one measured entry and the statistics derived from them (milliseconds)."""

    samples_ms: tuple[float, ...]  # every timed iteration of the kept attempt, in order
    noisy: bool = False  # above the noise threshold in every attempt
    attempts: int = 1  # measurement attempts made (1 + re-measurements)
    timed_s: float = 0.0  # seconds spent inside timed iterations, all attempts
    wall_s: float = 0.0  # seconds the whole measurement took, warm-up included
    label: str = ""

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ProfilerError("a measurement needs at least one sample")

    @cached_property
    def _sorted(self) -> tuple[float, ...]:
        return tuple(sorted(self.samples_ms))

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median(self) -> float:
        return quantile(self._sorted, 0.5)

    @property
    def fastest(self) -> float:
        """The fastest timed iteration: what the entry costs when nothing else on the machine
        gets in its way (interference only ever adds time)."""
        return self._sorted[0]

    @property
    def p10(self) -> float:
        return quantile(self._sorted, 0.1)

    @property
    def p90(self) -> float:
        return quantile(self._sorted, 0.9)

    @property
    def iqr(self) -> float:
        return quantile(self._sorted, 0.75) - quantile(self._sorted, 0.25)

    @property
    def mean(self) -> float:
        return sum(self.samples_ms) / self.n

    @property
    def relative_iqr(self) -> float:
        """IQR / median: the noise figure checked against the protocol's threshold."""
        median = self.median
        return self.iqr / median if median > 0 else math.inf

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        """The LUT entry: median, p10, p90, iqr, n, noisy (and the raw samples when asked)."""
        out: dict[str, Any] = {
            "median": self.median, "p10": self.p10, "p90": self.p90, "iqr": self.iqr,
            "n": self.n, "noisy": self.noisy,
        }
        if self.attempts > 1:
            out["attempts"] = self.attempts
        if samples:
            out["samples"] = list(self.samples_ms)
        return out

    def __repr__(self) -> str:
        flag = " NOISY" if self.noisy else ""
        return (f"Measurement({self.label or 'op'}: median {self.median:.4g} ms, "
                f"IQR {self.iqr:.3g} ms ({self.relative_iqr:.1%}), n={self.n}{flag})")


class Timer:
    """Times ``fn`` under a :class:`Protocol`; see the module docstring.

    ``interval``, when given, runs one iteration itself and returns its duration in ms (device
    timers); ``sync`` is called after each iteration timed with the clock (e.g. a device
    synchronise) so the clock sees finished work.
    """

    def __init__(self, fn: Callable[[], object], *, protocol: Protocol | None = None,
                 clock: Clock = time.perf_counter,
                 interval: Callable[[], float] | None = None,
                 sync: Callable[[], object] | None = None, label: str = "") -> None:
        self.fn = fn
        self.protocol = protocol if protocol is not None else Protocol()
        self.clock = clock
        self.interval = interval
        self.sync = sync
        self.label = label

    def measure(self) -> Measurement:
        """Warm up once, then measure; re-measure while noisy, up to ``protocol.retries`` times."""
        gc_was_enabled = gc.isenabled()
        gc.collect(0)
        gc.disable()
        try:
            start = self.clock()
            self._warmup()
            best: Measurement | None = None
            timed = 0.0
            attempts = 0
            for attempts in range(1, self.protocol.retries + 2):
                samples = self._attempt()
                timed += sum(samples) / 1e3
                m = Measurement(tuple(samples))
                if m.relative_iqr <= self.protocol.noise_threshold:
                    best = m
                    break
                # Interference only ever adds time: of noisy attempts, the lowest median is the
                # least disturbed one.
                if best is None or m.median < best.median:
                    best = m
            wall = self.clock() - start
        finally:
            if gc_was_enabled:
                gc.enable()
        assert best is not None
        return Measurement(best.samples_ms,
                           noisy=best.relative_iqr > self.protocol.noise_threshold,
                           attempts=attempts, timed_s=timed, wall_s=wall, label=self.label)

    def _warmup(self) -> None:
        p = self.protocol
        start = self.clock()
        count = 0
        while count < p.warmup_iters or self.clock() - start < p.warmup_s:
            self.fn()
            if self.sync is not None:
                self.sync()
            count += 1

    def _attempt(self) -> list[float]:
        p = self.protocol
        clock, fn, sync, interval = self.clock, self.fn, self.sync, self.interval
        samples: list[float] = []
        start = clock()
        while True:
            if interval is not None:
                samples.append(interval())
                now = clock()
            else:
                t0 = clock()
                fn()
                if sync is not None:
                    sync()
                now = clock()
                samples.append((now - t0) * 1e3)
            n = len(samples)
            if n >= p.max_iters or (n >= p.min_iters and now - start >= p.min_time_s):
                return samples

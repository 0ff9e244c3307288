"""How busy the machine is apart from the profiler, so that a LUT timed beside other work is flagged.

Latencies timed while other processes share the CPUs are inflated, often many times over (thread
pools oversubscribed, caches and memory bandwidth shared), and consistently so: the IQR stays low
and the noise check does not catch it.  :class:`LoadMonitor` therefore takes a reading before the
first op is timed and every ``check_every_s`` seconds after, and returns a one-line warning the first
time other work leaves the profiler's threads short of CPUs.

A reading is "other work, in CPUs" over the window between two samples.  On Linux it comes from
``/proc/stat`` (CPU time spent on the CPUs this process may run on) less this process's own CPU time
(``getrusage``, finished children included).  Processes at a lower priority (a positive ``nice``)
are counted apart as *background*: they barely delay a profiler at normal priority, but compete on
equal terms when the profiler is niced itself, and then count in full.  Where ``/proc/stat`` is
missing (macOS, BSD) the 1-minute load average stands in, less the profiler's own share; where neither
exists the load is unknown and nothing is flagged.  The clock, the counters and ``sleep`` are
injectable, so the decision is tested with made-up readings.

Counters see only this operating system.  On a virtual machine whose cores the host also gives to
others, the profiler's threads can be left short of CPU with every counter here reading idle.  With
more than one thread, each reading therefore also runs a *parallel probe*
(:func:`parallel_probe`): a fixed convolution timed with one thread and with the profiler's threads
in ONNX Runtime.  A free machine runs it nearly ``threads`` times faster with ``threads`` threads; a
speed-up under :data:`CONTENDED_EFFICIENCY` x ``threads`` means the CPUs are contended, whoever holds
them, and the multi-threaded latencies are inflated.  The probe uses at most
:data:`PROBE_MAX_THREADS` threads, so on a bigger machine it watches the first few cores only, and
never more threads than the CPUs it may run on (a free machine cannot do better than that).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from profilers.system import usable_cpus

SLACK_CPUS = 0.5  # other work tolerated beyond the CPUs the profiler leaves free
# Parallel probe: with n threads a free machine runs the probe about n times faster (1.8-2.0x with
# two threads here); a speed-up under this share of n means the CPUs are contended.
CONTENDED_EFFICIENCY = 0.6
_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class Counters:
    """One sample of the machine's CPU counters (seconds since some fixed point)."""

    time_s: float  # monotonic clock
    busy_s: float | None  # CPU time spent running anything on this process's CPUs; None: unknown
    niced_s: float | None  # ... of which by processes with a positive nice value
    own_s: float  # CPU time of this process and its finished children
    loadavg: float | None  # 1-minute load average, None where the OS has none
    own_niced: bool = False  # this process runs at a positive nice value


@dataclass(frozen=True)
class LoadReading:
    """How busy the machine was over one window, apart from this process."""

    window_s: float
    cpus: int  # CPUs this process may run on
    others: float | None  # CPUs kept busy by other processes that compete with the profiler
    background: float | None  # CPUs kept busy by lower-priority processes that do not
    loadavg: float | None  # 1-minute load average at the end of the window (this process included)
    source: str | None  # "proc-stat", "loadavg" or None (unknown)


def _proc_stat(cpus: Sequence[int]) -> tuple[float, float] | None:
    """(busy, niced) CPU seconds on ``cpus`` from /proc/stat, or None where it cannot be read."""
    try:
        text = _STAT.read_text()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = niced = 0
    found = False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        fields = [int(v) for v in rest.split()]
        if len(fields) < 4:
            continue
        found = True
        user, nice, system = fields[0], fields[1], fields[2]
        irq_etc = sum(fields[5:8])  # irq, softirq, steal (guest time is already in user)
        busy += user + nice + system + irq_etc
        niced += nice
    return (busy / tick, niced / tick) if found else None


def _own_cpu_s() -> float:
    try:
        import resource
    except ImportError:  # Windows: this process only
        t = os.times()
        return t.user + t.system
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def niceness() -> int:
    """This process's nice value (0 where the OS has none)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


def read_counters(cpus: Sequence[int] | None = None) -> Counters:
    """Sample the counters now (``cpus``: the CPUs to count; default, those this process may use)."""
    stat = None
    if sys.platform.startswith("linux"):
        stat = _proc_stat(usable_cpus() if cpus is None else cpus)
    try:
        loadavg: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        loadavg = None
    return Counters(time_s=time.monotonic(), busy_s=None if stat is None else stat[0],
                    niced_s=None if stat is None else stat[1], own_s=_own_cpu_s(), loadavg=loadavg,
                    own_niced=niceness() > 0)


def reading(a: Counters, b: Counters, cpus: int) -> LoadReading:
    """Other work on ``cpus`` CPUs between samples ``a`` and ``b``."""
    dt = b.time_s - a.time_s
    own = (b.own_s - a.own_s) / dt if dt > 0 else 0.0
    if dt > 0 and a.busy_s is not None and b.busy_s is not None:
        everyone_else = max(0.0, (b.busy_s - a.busy_s) / dt - own)
        niced = max(0.0, ((b.niced_s or 0.0) - (a.niced_s or 0.0)) / dt)
        # This process's own time sits in the niced column when it is niced itself; then every other
        # process competes with it, niced or not.
        others = everyone_else if b.own_niced else max(0.0, everyone_else - niced)
        return LoadReading(dt, cpus, others, everyone_else - others, b.loadavg, "proc-stat")
    if b.loadavg is not None:
        # The load average also counts this process (runnable threads), smoothed over a minute.
        return LoadReading(dt, cpus, max(0.0, b.loadavg - own), None, b.loadavg, "loadavg")
    return LoadReading(dt, cpus, None, None, None, None)


def is_busy(r: LoadReading, threads: int, slack: float = SLACK_CPUS) -> bool:
    """Whether other work left fewer free CPUs than the profiler's ``threads`` (with ``slack``)."""
    if r.others is None:
        return False
    return r.others > max(0.0, r.cpus - threads) + slack


def busy_message(r: LoadReading, threads: int) -> str:
    """The one-line warning for a busy reading."""
    load = f"load {r.loadavg:.1f}" if r.loadavg is not None else f"{r.others:.1f} CPUs of other work"
    return (f"{load} on {r.cpus} CPUs while profiling (other processes kept {r.others:.1f} CPUs busy; "
            f"the profiler uses {threads} thread{'s' if threads != 1 else ''}): latencies will be "
            f"inflated; profile on an idle machine")


def _r2(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def contention_message(speedup: float, threads: int) -> str:
    """The one-line warning for a probe whose ``threads``-thread speed-up was ``speedup``;
    ``threads`` is what the probe ran with (:func:`probe_threads`), never more than the CPUs."""
    return (f"the CPUs are contended: a reference convolution ran {speedup:.2f}x as fast with "
            f"{threads} threads as with 1 (a free machine gives about {0.9 * threads:.1f}x) while "
            f"no process here kept them busy, so something outside this system (a virtual "
            f"machine's host) is using them; multi-threaded latencies are inflated: profile on a "
            f"dedicated machine, or with a one-thread preset (threads = 1 in a preset TOML)")


PROBE_MAX_THREADS = 4  # a small convolution stops scaling beyond a few threads


def probe_threads(threads: int, cpus: int | None = None) -> int:
    """The threads the parallel probe compares with one: the profile's, at most
    :data:`PROBE_MAX_THREADS` (contention of the other cores goes unseen on bigger machines) and
    at most ``cpus``, the CPUs the probe may run on: a free machine cannot run more threads at once
    than it has CPUs, so a preset asking for more (``threads = 64`` on two CPUs) must not make the
    probe expect more speed-up than the CPUs give, nor call the shortfall contention."""
    return max(1, min(int(threads), PROBE_MAX_THREADS, int(cpus) if cpus else PROBE_MAX_THREADS))


def parallel_probe(threads: int, *, cpus: int | None = None, channels: int = 64, size: int = 56,
                   runs: int = 9) -> Callable[[], float | None] | None:
    """A function returning the probe's speed-up with :func:`probe_threads` threads over one
    thread (the ratio of median latencies of a 3x3 convolution, ``channels`` x ``size`` x
    ``size``, in ONNX Runtime), or None when there is nothing to probe (one thread or one CPU,
    ONNX Runtime missing).  ``cpus``: the CPUs it may run on (default: this process's).  The
    function's ``threads`` attribute is the threads it compares with one.

    The two sessions are built on the first call and kept; each call costs about 30 ms.
    """
    threads = probe_threads(threads, len(usable_cpus()) if cpus is None else cpus)
    if threads <= 1:
        return None
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    state: dict[str, Any] = {}

    def build() -> None:
        weight = np.random.RandomState(0).randn(channels, channels, 3, 3).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
            [numpy_helper.from_array(weight, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7
        blob = model.SerializeToString()
        for n in (1, threads):
            so = ort.SessionOptions()
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            state[n] = ort.InferenceSession(blob, sess_options=so,
                                            providers=["CPUExecutionProvider"])
        state["x"] = {"x": np.random.RandomState(1).rand(1, channels, size, size).astype(
            np.float32)}

    def median_ms(session: Any) -> float:
        x = state["x"]
        for _ in range(2):
            session.run(None, x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, x)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def probe() -> float | None:
        try:
            if not state:
                build()
            one = median_ms(state[1])
            many = median_ms(state[threads])
        except Exception:  # a probe must never end a profile
            return None
        return one / many if many > 0 else None

    probe.threads = threads  # type: ignore[attr-defined]  # what LoadMonitor judges it by
    return probe


class LoadMonitor:
    """Watches the machine's load over one profiling run; see the module docstring.

    Create it early (its first window starts then), call :meth:`start` before timing the first op,
    :meth:`check` after each op (it samples only every ``check_every_s`` seconds) and :meth:`finish`
    at the end.  Each returns the warning the first time the machine is found busy, else None: the
    warning is given once per run.  :meth:`to_dict` is what the LUT records.
    """

    def __init__(self, threads: int, *, cpus: Sequence[int] | None = None,
                 check_every_s: float = 30.0, min_window_s: float = 0.5,
                 read: Callable[[], Counters] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 probe: Callable[[], float | None] | None = None) -> None:
        self.threads = max(1, int(threads))
        self._probe = probe  # e.g. parallel_probe(threads); None: counters only
        self.speedups: list[float] = []
        self.contended_checks = 0
        self.contention_warning: str | None = None
        self._cpu_list = list(cpus) if cpus is not None else usable_cpus()
        self.cpus = max(1, len(self._cpu_list))
        self.check_every_s = check_every_s
        self.min_window_s = min_window_s
        self._read = read if read is not None else (lambda: read_counters(self._cpu_list))
        self._clock = clock
        self._sleep = sleep
        self._last = self._read()
        self.first: LoadReading | None = None
        self.last: LoadReading | None = None
        self.peak: LoadReading | None = None
        self.background_peak: float | None = None
        self.checks = 0
        self.busy_checks = 0
        self.warning: str | None = None

    def _take(self) -> LoadReading:
        now = self._read()
        r = reading(self._last, now, self.cpus)
        self._last = now
        self.checks += 1
        self.first = self.first or r
        self.last = r
        if r.others is not None and (self.peak is None or r.others > (self.peak.others or 0.0)):
            self.peak = r
        if r.background is not None:
            self.background_peak = max(r.background, self.background_peak or 0.0)
        return r

    def _judge(self, r: LoadReading) -> str | None:
        if not is_busy(r, self.threads):
            return self._judge_probe()
        self.busy_checks += 1
        if self.warning is not None:
            return None
        self.warning = busy_message(r, self.threads)
        return self.warning

    def _judge_probe(self) -> str | None:
        """The parallel probe, run while the counters read idle (busy readings explain themselves)."""
        if self._probe is None:
            return None
        speedup = self._probe()
        if speedup is None:
            return None
        self.speedups.append(speedup)
        threads = getattr(self._probe, "threads", None) or probe_threads(self.threads, self.cpus)
        if speedup >= CONTENDED_EFFICIENCY * threads:
            return None
        self.contended_checks += 1
        if self.contention_warning is not None:
            return None
        self.contention_warning = contention_message(speedup, threads)
        return self.contention_warning

    def start(self) -> str | None:
        """The reading before timing starts: the window since creation, at least ``min_window_s``."""
        wait = self.min_window_s - (self._clock() - self._last.time_s)
        if wait > 0:
            self._sleep(wait)
        return self._judge(self._take())

    def check(self) -> str | None:
        """A reading if ``check_every_s`` have passed since the last one."""
        if self._clock() - self._last.time_s < self.check_every_s:
            return None
        return self._judge(self._take())

    def finish(self) -> str | None:
        """The closing reading (skipped when the last one is under ``min_window_s`` old)."""
        if self.checks and self._clock() - self._last.time_s < self.min_window_s:
            return None
        return self._judge(self._take())

    @property
    def busy(self) -> bool:
        return self.busy_checks > 0

    @property
    def contended(self) -> bool:
        return self.contended_checks > 0

    def to_dict(self) -> dict[str, Any]:
        """The ``load`` record of a LUT's ``device.seen``: load averages, other work, verdict."""
        first, last, peak = self.first, self.last, self.peak
        return {
            "cpus": self.cpus, "threads": self.threads,
            "start": _r2(first.loadavg) if first else None,
            "end": _r2(last.loadavg) if last else None,
            "others_start": _r2(first.others) if first else None,
            "others_end": _r2(last.others) if last else None,
            "others_peak": _r2(peak.others) if peak else None,
            "background_peak": _r2(self.background_peak),
            "busy": self.busy, "warning": self.warning, "checks": self.checks,
            "busy_checks": self.busy_checks, "source": first.source if first else None,
            "parallel_speedup_min": _r2(min(self.speedups)) if self.speedups else None,
            "parallel_speedup_median": (_r2(sorted(self.speedups)[len(self.speedups) // 2])
                                        if self.speedups else None),
            "probes": len(self.speedups), "contended": self.contended,
            "contended_checks": self.contended_checks,
            "contention_warning": self.contention_warning,
        }


def merge_load(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> dict[str, Any]:
    """``current``'s record with an earlier run's (a resumed profile): busy if either was."""
    out = dict(current)
    if not isinstance(previous, Mapping):
        return out
    earlier = [{k: v for k, v in previous.items() if k != "earlier"}, *previous.get("earlier", [])]
    peaks = [v for v in (current.get("others_peak"), *(e.get("others_peak") for e in earlier))
             if isinstance(v, (int, float))]
    out["busy"] = bool(current.get("busy")) or any(bool(e.get("busy")) for e in earlier)
    out["contended"] = bool(current.get("contended")) or any(bool(e.get("contended"))
                                                             for e in earlier)
    out["contention_warning"] = current.get("contention_warning") or next(
        (e["contention_warning"] for e in earlier if e.get("contention_warning")), None)
    out["warning"] = current.get("warning") or next(
        (e["warning"] for e in earlier if e.get("warning")), None)
    out["others_peak"] = max(peaks) if peaks else None
    out["earlier"] = earlier
    return out


def describe_load(load: Mapping[str, Any] | None) -> str:
    """One line for ``lana lut show``; LUTs made before loads were recorded say so."""
    if not isinstance(load, Mapping):
        return "not recorded (profiled before the machine's load was recorded)"
    if load.get("source") is None:
        return "unknown (this OS reports neither /proc/stat nor a load average)"

    def f(v: Any) -> str:
        return "?" if v is None else f"{v:.1f}"

    runs = 1 + len(load.get("earlier") or [])
    text = (f"other work {f(load.get('others_start'))} of {load.get('cpus')} CPUs at start, "
            f"{f(load.get('others_end'))} at end, {f(load.get('others_peak'))} at peak; load average "
            f"{f(load.get('start'))} -> {f(load.get('end'))}"
            + (f" ({runs} runs, resumed)" if runs > 1 else ""))
    if load.get("parallel_speedup_median") is not None:
        threads = probe_threads(load.get("threads") or 1, load.get("cpus"))
        text += (f"; {threads}-thread speed-up of the parallel probe "
                 f"{load.get('parallel_speedup_min') or 0:.2f} min, "
                 f"{load['parallel_speedup_median']:.2f} median")
    marks = []  # a profile can be both: other work here, and CPUs taken from outside
    if load.get("busy"):
        marks.append("BUSY: latencies inflated, re-profile on an idle machine")
    if load.get("contended"):
        marks.append("CONTENDED from outside this system: multi-threaded latencies inflated, "
                     "re-profile on a dedicated machine or with threads = 1 in the preset")
    return text + "; " + ("; ".join(marks) or "idle enough")

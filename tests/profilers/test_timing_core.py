"""The timing core's statistics and stopping rules, driven by a fake clock (no hardware, exact)."""

import gc

import numpy as np
import pytest

from profilers import Measurement, ProfilerError, Protocol, Timer, quantile

U = 1 / 1024  # one clock unit in seconds: multiples are exact in binary floating point
U_MS = U * 1e3  # 0.9765625 ms, also exact


class FakeClock:
    """A clock that only moves when the timed function says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def scripted(clock: FakeClock, units: list[int]):
    """A function whose i-th call takes units[i] clock units; records how often it ran."""
    calls = []

    def fn():
        clock.now += units[len(calls)] * U
        calls.append(gc.isenabled())

    return fn, calls


def proto(**kw) -> Protocol:
    base = dict(warmup_s=0.0, warmup_iters=0, min_iters=5, min_time_s=0.0, max_iters=1000,
                noise_threshold=10.0, retries=0)
    base.update(kw)
    return Protocol(**base)


def test_statistics_are_exact_with_a_fake_clock():
    clock = FakeClock()
    fn, calls = scripted(clock, [50, 50] + [3, 1, 5, 2, 4])
    m = Timer(fn, protocol=proto(warmup_iters=2), clock=clock).measure()
    assert m.samples_ms == tuple(u * U_MS for u in (3, 1, 5, 2, 4))  # warm-up not kept, order kept
    assert m.n == 5 and len(calls) == 7
    assert m.median == 3 * U_MS
    assert m.p10 == pytest.approx(1.4 * U_MS, abs=1e-12)
    assert m.p90 == pytest.approx(4.6 * U_MS, abs=1e-12)
    assert m.iqr == 2 * U_MS  # q75 = 4 units, q25 = 2 units
    assert m.relative_iqr == pytest.approx(2 / 3)
    assert m.mean == 3 * U_MS
    assert not m.noisy and m.attempts == 1
    assert m.timed_s == pytest.approx(15 * U)
    assert m.wall_s == pytest.approx(115 * U)


def test_quantile_matches_numpy_linear_interpolation():
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 100):
        values = sorted(rng.exponential(size=n).tolist())
        for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            assert quantile(values, q) == pytest.approx(np.percentile(values, q * 100), rel=1e-12)


def test_measurement_keeps_running_until_min_iters_and_min_time():
    clock = FakeClock()
    fn, _ = scripted(clock, [2] * 100)
    # 5 iterations take 10 units < 32 units of min_time: it must go on to 16 iterations.
    m = Timer(fn, protocol=proto(min_iters=5, min_time_s=32 * U), clock=clock).measure()
    assert m.n == 16
    clock2 = FakeClock()
    fn2, _ = scripted(clock2, [64] * 100)
    # Slow iterations: min_time is passed after one, but min_iters still asks for 5.
    m2 = Timer(fn2, protocol=proto(min_iters=5, min_time_s=32 * U), clock=clock2).measure()
    assert m2.n == 5


def test_max_iters_caps_very_fast_ops():
    clock = FakeClock()
    fn, _ = scripted(clock, [1] * 100)
    m = Timer(fn, protocol=proto(min_iters=3, max_iters=7, min_time_s=1000.0), clock=clock).measure()
    assert m.n == 7


def test_warmup_runs_for_both_its_count_and_its_time():
    clock = FakeClock()
    fn, calls = scripted(clock, [1] * 100)
    Timer(fn, protocol=proto(warmup_iters=2, warmup_s=6 * U, min_iters=1), clock=clock).measure()
    assert len(calls) == 6 + 1  # time-bound warm-up (6 x 1 unit), then one measured
    clock = FakeClock()
    fn, calls = scripted(clock, [10] * 100)
    Timer(fn, protocol=proto(warmup_iters=4, warmup_s=6 * U, min_iters=1), clock=clock).measure()
    assert len(calls) == 4 + 1  # count-bound warm-up


def test_noisy_attempt_is_remeasured_and_the_quiet_one_kept():
    clock = FakeClock()
    noisy = [1, 10, 1, 10, 1]  # IQR/median = 9
    quiet = [4, 4, 5, 4, 4]  # IQR/median = 0
    fn, _ = scripted(clock, noisy + quiet)
    m = Timer(fn, protocol=proto(noise_threshold=0.1, retries=2), clock=clock).measure()
    assert m.attempts == 2 and not m.noisy
    assert m.samples_ms == tuple(u * U_MS for u in quiet)
    assert m.timed_s == pytest.approx(sum(noisy + quiet) * U)  # both attempts were timed
    assert m.to_dict()["attempts"] == 2


def test_entry_that_stays_noisy_keeps_its_least_disturbed_attempt():
    clock = FakeClock()
    a = [10, 30, 10, 30, 10]  # median 10, IQR/median 2
    b = [4, 12, 4, 12, 4]  # median 4: interference only adds time, so this one is kept
    c = [6, 7, 6, 7, 6]  # IQR/median 1/6, still above the threshold
    fn, calls = scripted(clock, a + b + c)
    m = Timer(fn, protocol=proto(noise_threshold=0.1, retries=2), clock=clock).measure()
    assert m.noisy and m.attempts == 3 and len(calls) == 15
    assert m.samples_ms == tuple(u * U_MS for u in b)
    assert m.to_dict()["noisy"] is True
    # A quiet re-measurement ends the retries and is kept even if its median is higher.
    clock = FakeClock()
    fn, calls = scripted(clock, b + [5, 5, 5, 5, 5] + a)
    m = Timer(fn, protocol=proto(noise_threshold=0.1, retries=2), clock=clock).measure()
    assert not m.noisy and m.attempts == 2 and len(calls) == 10 and m.median == 5 * U_MS


def test_gc_is_off_while_timing_and_restored_after():
    clock = FakeClock()
    fn, calls = scripted(clock, [1] * 20)
    assert gc.isenabled()
    Timer(fn, protocol=proto(warmup_iters=2), clock=clock).measure()
    assert calls and not any(calls)
    assert gc.isenabled()
    gc.disable()
    try:
        Timer(scripted(FakeClock(), [1] * 20)[0], protocol=proto()).measure()
        assert not gc.isenabled()  # a caller's disabled GC stays disabled
    finally:
        gc.enable()


def test_device_interval_supplies_the_samples_and_the_clock_the_stopping_rule():
    clock = FakeClock()
    device_ms = iter([0.5, 0.25, 0.75, 0.5, 0.5, 9.0])
    synced = []

    def interval():
        clock.now += 8 * U
        return next(device_ms)

    m = Timer(lambda: None, protocol=proto(min_iters=2, min_time_s=40 * U), clock=clock,
              interval=interval, sync=lambda: synced.append(1)).measure()
    assert m.samples_ms == (0.5, 0.25, 0.75, 0.5, 0.5)  # 5 x 8 units reach 40 units
    assert m.median == 0.5


def test_protocol_validation_and_round_trip():
    p = Protocol(min_iters=7, min_time_s=0.3)
    assert Protocol.from_dict(p.to_dict()) == p
    with pytest.raises(ProfilerError, match="unknown field"):
        Protocol.from_dict({"min_iter": 3})
    with pytest.raises(ProfilerError, match="max_iters >= min_iters"):
        Protocol(min_iters=10, max_iters=5)
    with pytest.raises(ProfilerError, match="units"):
        Protocol(units="us")
    with pytest.raises(ProfilerError, match="statistic"):
        Protocol(statistic="mean")


def test_measurement_to_dict_and_sample_option():
    m = Measurement((1.0, 2.0, 3.0, 4.0))
    d = m.to_dict()
    assert set(d) == {"median", "p10", "p90", "iqr", "n", "noisy"}
    assert d["median"] == 2.5 and d["n"] == 4 and d["iqr"] == 1.5
    assert m.to_dict(samples=True)["samples"] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ProfilerError):
        Measurement(())
    assert "median 2.5 ms" in repr(m)


# ------------------------------------------------------------- the machine's load (busy guard)
from profilers.load import (Counters, LoadMonitor, LoadReading, describe_load, is_busy, merge_load,
                            read_counters, reading)


def counters(t, busy=None, niced=0.0, own=0.0, loadavg=None, own_niced=False) -> Counters:
    return Counters(time_s=t, busy_s=busy, niced_s=None if busy is None else niced, own_s=own,
                    loadavg=loadavg, own_niced=own_niced)


def test_reading_subtracts_the_profilers_own_cpu_time_and_sets_niced_work_apart():
    # 2 s window: 3 CPU-seconds busy in all, 1 of them ours, 0.6 by niced processes.
    a, b = counters(10.0, 100.0, 5.0, 1.0, 2.5), counters(12.0, 103.0, 5.6, 2.0, 3.5)
    r = reading(a, b, cpus=2)
    assert r.source == "proc-stat" and r.window_s == 2.0 and r.loadavg == 3.5
    assert r.others == pytest.approx((3.0 - 1.0 - 0.6) / 2) and r.background == pytest.approx(0.3)
    # A niced profiler competes with niced work on equal terms: all of it counts.
    niced = reading(a, counters(12.0, 103.0, 5.6, 2.0, 3.5, own_niced=True), cpus=2)
    assert niced.others == pytest.approx(1.0) and niced.background == 0.0
    # Without /proc/stat the load average stands in, less what the profiler itself used.
    r = reading(counters(0.0, own=0.0), counters(4.0, own=2.0, loadavg=1.8), cpus=2)
    assert r.source == "loadavg" and r.others == pytest.approx(1.3)
    # Neither: unknown, never busy.
    r = reading(counters(0.0), counters(1.0), cpus=2)
    assert r.others is None and r.source is None and not is_busy(r, threads=2)


@pytest.mark.parametrize("cpus, threads, others, busy", [
    (2, 2, 0.4, False), (2, 2, 0.6, True), (2, 1, 1.4, False), (2, 1, 1.6, True),
    (16, 2, 14.4, False), (16, 2, 14.6, True), (2, 4, 0.6, True), (1, 1, 0.49, False)])
def test_busy_when_other_work_leaves_the_profilers_threads_short(cpus, threads, others, busy):
    r = LoadReading(1.0, cpus, others, 0.0, 5.3, "proc-stat")
    assert is_busy(r, threads) is busy


class FakeMachine:
    """Counters of a machine whose other work (in CPUs) follows a script, one value per reading."""

    def __init__(self, others: list[float], cpus: int = 2) -> None:
        self.others, self.cpus = list(others), cpus
        self.now, self.busy, self.reads, self.slept = 0.0, 0.0, 0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s

    def read(self) -> Counters:
        self.reads += 1
        return counters(self.now, self.busy, own=0.0, loadavg=1.0 + self.busy / max(self.now, 1))

    def advance(self, seconds: float) -> None:
        """Time passes with the next scripted amount of other work."""
        self.busy += self.others.pop(0) * seconds
        self.now += seconds


def test_load_monitor_warns_once_and_records_start_end_and_peak():
    m = FakeMachine([0.1, 0.2, 1.5, 1.8, 0.3])
    mon = LoadMonitor(2, cpus=[0, 1], check_every_s=30.0, min_window_s=0.5, read=m.read,
                      clock=m.clock, sleep=m.sleep)
    m.busy += 0.1 * 0.2  # 0.2 s of set-up before the first op: the window is topped up to 0.5 s
    m.others.pop(0)
    m.now += 0.2
    assert mon.start() is None and m.slept == [pytest.approx(0.3)]
    assert mon.first.others == pytest.approx(0.2 * 0.1 / 0.5)
    m.advance(10.0)  # only 10 s since the last reading: no new reading yet
    reads = m.reads
    assert mon.check() is None and m.reads == reads
    m.advance(25.0)  # 35 s since the last reading, 1.5 CPUs of other work: busy
    warning = mon.check()
    assert warning and warning.startswith("load ") and "on 2 CPUs while profiling" in warning
    assert "latencies will be inflated; profile on an idle machine" in warning and "\n" not in warning
    m.advance(40.0)
    assert mon.check() is None  # busy again, but the warning is given once
    m.advance(40.0)
    assert mon.finish() is None
    d = mon.to_dict()
    assert d["busy"] and d["busy_checks"] == 2 and d["checks"] == 4 and d["warning"] == warning
    assert d["others_peak"] == pytest.approx(1.8) and d["others_end"] == pytest.approx(0.3)
    assert d["cpus"] == 2 and d["threads"] == 2 and d["source"] == "proc-stat"
    assert "BUSY" in describe_load(d)


def test_idle_machine_gives_no_warning_and_a_resumed_run_keeps_an_earlier_busy_one():
    m = FakeMachine([0.05, 0.1])
    mon = LoadMonitor(2, cpus=[0, 1], read=m.read, clock=m.clock, sleep=m.sleep)
    m.advance(2.0)
    assert mon.start() is None and m.slept == []  # the window was long enough already
    m.advance(5.0)
    assert mon.finish() is None
    idle = mon.to_dict()
    assert not idle["busy"] and idle["warning"] is None and "idle enough" in describe_load(idle)
    earlier = {**idle, "busy": True, "warning": "load 5.3 on 2 CPUs ...", "others_peak": 1.7}
    merged = merge_load(earlier, idle)
    assert merged["busy"] and merged["warning"] == earlier["warning"]
    assert merged["others_peak"] == 1.7 and len(merged["earlier"]) == 1
    assert "2 runs" in describe_load(merged)
    assert merge_load(None, idle) == idle
    assert describe_load(None).startswith("not recorded")


def test_parallel_probe_flags_cpus_contended_from_outside_once():
    """Counters read idle, but the probe's two-thread speed-up collapses: contended, warned once."""
    m = FakeMachine([0.05, 0.05, 0.05, 1.5, 0.05])
    speedups = [1.9, 0.5, 0.45]
    mon = LoadMonitor(2, cpus=[0, 1], check_every_s=30.0, read=m.read, clock=m.clock,
                      sleep=m.sleep, probe=lambda: speedups.pop(0) if speedups else None)
    m.advance(2.0)
    assert mon.start() is None  # 1.9x with two threads: a free machine
    m.advance(40.0)
    warning = mon.check()
    assert warning and "CPUs are contended" in warning and "0.50x" in warning
    assert "threads = 1" in warning and "\n" not in warning
    m.advance(40.0)
    assert mon.check() is None  # contended again; the warning is given once
    m.advance(40.0)
    assert mon.check() and mon.busy  # a busy reading explains itself: the probe is not run
    m.advance(40.0)
    assert mon.finish() is None  # the probe had three values only: None means "no figure"
    d = mon.to_dict()
    assert d["contended"] and d["contended_checks"] == 2 and d["probes"] == 3
    assert d["parallel_speedup_min"] == 0.45 and d["parallel_speedup_median"] == 0.5
    assert d["contention_warning"] == warning
    idle_before = {**d, "contended": False, "contention_warning": None, "busy": False}
    merged = merge_load(d, idle_before)
    assert merged["contended"] and merged["contention_warning"] == warning
    assert "0.45 min" in describe_load(merged)
    assert "CONTENDED" in describe_load({**idle_before, "contended": True})


def test_parallel_probe_of_this_machine():
    from profilers.load import parallel_probe

    from profilers.load import probe_threads

    assert parallel_probe(1) is None  # one thread: nothing to compare
    assert probe_threads(64) == 4  # a small convolution does not scale to 64 threads
    probe = parallel_probe(2, channels=16, size=16, runs=3)
    speedup = probe()
    assert speedup is not None and 0.05 < speedup < 10


def test_counters_of_this_machine_are_sane():
    a = read_counters()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    b = read_counters()
    assert b.time_s > a.time_s and b.own_s >= a.own_s > 0
    r = reading(a, b, cpus=2)
    if a.busy_s is not None:  # Linux
        assert b.busy_s >= a.busy_s and r.source == "proc-stat" and r.others >= 0

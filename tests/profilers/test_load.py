"""The parallel probe never expects more speed-up than the machine has CPUs (fake readings)."""

import pytest

from profilers.load import (Counters, LoadMonitor, contention_message, describe_load,
                            parallel_probe, probe_threads)


def idle_machine():
    """A clock and counters of a machine where nothing else runs; ``advance`` moves time on."""
    state = {"now": 0.0}

    def read() -> Counters:
        return Counters(time_s=state["now"], busy_s=0.0, niced_s=0.0, own_s=0.0, loadavg=0.1)

    def advance(seconds: float) -> None:
        state["now"] += seconds

    return read, (lambda: state["now"]), advance


@pytest.mark.parametrize("threads, cpus, expected", [
    (64, 2, 2), (64, 16, 4), (3, 2, 2), (2, 16, 2), (64, 1, 1), (1, 8, 1), (64, None, 4)])
def test_probe_threads_are_capped_by_the_cpus(threads, cpus, expected):
    assert probe_threads(threads, cpus) == expected


def test_many_threads_on_two_cpus_expect_the_speed_up_of_two():
    """threads = 64 on a 2-CPU machine: 1.62x with 2 threads is a free machine, not contention."""
    read, clock, advance = idle_machine()
    speedups = [1.62, 0.9]
    mon = LoadMonitor(64, cpus=[0, 1], check_every_s=30.0, read=read, clock=clock,
                      sleep=advance, probe=lambda: speedups.pop(0))
    advance(2.0)
    assert mon.start() is None and not mon.contended
    advance(40.0)
    warning = mon.check()  # 0.9x with 2 threads is contended: the message assumes 2, not 4
    assert warning == contention_message(0.9, 2)
    assert "with 2 threads as with 1 (a free machine gives about 1.8x)" in warning
    assert "4 threads" not in warning and "3.6x" not in warning
    d = mon.to_dict()
    assert d["threads"] == 64 and d["cpus"] == 2 and d["contended_checks"] == 1
    assert "2-thread speed-up of the parallel probe" in describe_load(d)


def test_monitor_judges_the_probe_by_the_threads_it_ran_with():
    read, clock, advance = idle_machine()

    def probe() -> float:
        return 1.5  # a free machine with 2 threads; contended with 4

    probe.threads = 2
    mon = LoadMonitor(8, cpus=list(range(8)), read=read, clock=clock, sleep=advance, probe=probe)
    advance(2.0)
    assert mon.start() is None and not mon.contended


def test_parallel_probe_uses_no_more_threads_than_cpus():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert parallel_probe(64, cpus=1) is None  # one CPU: nothing to compare with
    assert parallel_probe(64, cpus=2).threads == 2
    assert parallel_probe(64, cpus=16).threads == 4

"""Shared fixtures: a one-thread device preset with a tiny protocol and a demo small-pool LUT."""

from __future__ import annotations

import shutil
import warnings

import pytest

TINY_PRESET = """\
description = "cpu-ort, one thread, tiny protocol (tests)"
extends = "cpu-ort"
threads = 1
[protocol]
warmup_s = 0.0
warmup_iters = 1
min_iters = 3
min_time_s = 0.0
max_iters = 50
retries = 0
"""


@pytest.fixture(scope="session")
def tiny_device(tmp_path_factory) -> str:
    """Path of a preset TOML named ``cpu-ort-tiny``: what the tests measure with."""
    path = tmp_path_factory.mktemp("presets") / "cpu-ort-tiny.toml"
    path.write_text(TINY_PRESET)
    return str(path)


@pytest.fixture(scope="session")
def demo_lut_master(tiny_device, tmp_path_factory):
    """The demo teacher's small pool profiled with the tiny protocol (exports are cached)."""
    from lana.profile import profile

    out = tmp_path_factory.mktemp("luts") / "demo-small.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = profile(tiny_device, "demo", pool="small", out=out)
    assert report.failed == 0
    return out


@pytest.fixture
def demo_lut(demo_lut_master, tmp_path):
    """A private copy of the demo LUT (tests may calibrate it)."""
    path = tmp_path / "demo-small.json"
    shutil.copy(demo_lut_master, path)
    return path


@pytest.fixture(scope="session")
def demo_teacher():
    from lana.teachers import create_teacher

    return create_teacher("demo", pretrained=False)


@pytest.fixture(scope="session")
def demo_pool(demo_teacher):
    from lana.pool import build_pool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_pool(demo_teacher, "small")

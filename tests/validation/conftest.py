"""Shared fixtures: a demo small-pool LUT profiled with the tiny preset of tests/conftest.py."""

from __future__ import annotations

import shutil
import warnings

import pytest


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


@pytest.fixture
def random_arch_file(demo_pool, tmp_path):
    """``make(seed)``: the path of an architecture file with a seeded random op per layer."""
    import random

    from lana.assemble import Architecture, write_arch

    def make(seed: int):
        rng = random.Random(seed)
        ops = tuple(rng.choice(lp.keys) for lp in demo_pool)
        path = tmp_path / "arch.json"
        write_arch(Architecture("demo", "small", ops, tuple(lp.layer.name for lp in demo_pool)),
                   path)
        return path

    return make

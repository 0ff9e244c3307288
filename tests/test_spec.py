import random

import pytest

from lana.spec import OpSpec, op_key, parse_key


def _random_spec(rng: random.Random) -> OpSpec:
    params = {}
    for name in rng.sample(["e", "k", "w", "se", "h", "d", "sig"], rng.randint(0, 4)):
        params[name] = rng.choice([1, 3, 7, 0.25, 1 / 16, 1 / 10, None, "abc123", "x_y.z-1", "0123", "1e5", "none"])
    c, h = rng.randint(1, 512), rng.randint(1, 600)
    s = rng.choice([1, 2, 4])
    return OpSpec.make(rng.choice(["efn", "cb_stack", "teacher", "lambda"]), (c, h, h),
                       (rng.randint(1, 512), -(-h // s), -(-h // s)), s, **params)


def test_key_round_trip_random():
    rng = random.Random(0)
    for _ in range(2000):
        spec = _random_spec(rng)
        assert parse_key(op_key(spec)) == spec
        assert OpSpec.from_dict(spec.to_dict()) == spec
        assert hash(spec) == hash(parse_key(spec.key))


def test_key_is_canonical_and_order_free():
    a = OpSpec.make("efn", (16, 8, 8), (16, 8, 8), 1, k=3, e=6, se=None)
    b = OpSpec.make("efn", (16, 8, 8), (16, 8, 8), 1, se=None, e=6, k=3)
    assert a == b and a.key == b.key == "efn:e=6,k=3,se=none|in=16x8x8|out=16x8x8|s=1"
    assert OpSpec.make("cb_res", (4, 2, 2), (4, 2, 2), w=2.0).key == \
        OpSpec.make("cb_res", (4, 2, 2), (4, 2, 2), w=2).key


@pytest.mark.parametrize("bad", [
    "efn", "efn:e=6|in=16x8x8|out=16x8x8", "efn:e6|in=16x8x8|out=16x8x8|s=1",
    "efn:k=3,e=6|in=16x8x8|out=16x8x8|s=1",  # not sorted: not canonical
    "Efn:|in=1x1x1|out=1x1x1|s=1", "efn:|in=0x8x8|out=16x8x8|s=1",
])
def test_bad_keys_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_key(bad)


def test_specs_are_frozen_and_validated():
    spec = OpSpec.make("identity", (3, 4, 4), (3, 4, 4))
    with pytest.raises(Exception):
        spec.family = "efn"  # type: ignore[misc]
    with pytest.raises(ValueError):
        OpSpec.make("efn", (3, 4, 4), (3, 4, 4), w=float("nan"))
    with pytest.raises(ValueError):
        OpSpec.make("efn", (3, 4, 4), (3, 4, 4), tag="has space")
    with pytest.raises(ValueError):
        OpSpec.make("efn", (3, 4, 4), (3, 4, 4), tag="a|b")

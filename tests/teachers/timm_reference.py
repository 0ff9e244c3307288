"""Parameter names and shapes of timm models, derived from timm's own definitions.

timm is not installed here, so this re-derives its state_dict layout from the architecture
strings in ``timm/models/efficientnet.py`` / ``resnest.py`` and the rules of
``_efficientnet_builder.py`` (``_decode_block_str``, ``_scale_stage_depth``, ``round_channels``,
SE sizing from the block input) and ``resnet.py`` (deep stem, ``downsample_avg``).  It is written
independently of ``lana.teachers`` so that the tests compare two derivations.
"""

from __future__ import annotations

import math
import re

# Architecture strings as in timm/models/efficientnet.py.
TIMM_EFFICIENTNET_ARCH = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]
TIMM_EFFICIENTNETV2_BASE_ARCH = [
    ["cn_r1_k3_s1_e1_c16_skip"],
    ["er_r2_k3_s2_e4_c32"],
    ["er_r2_k3_s2_e4_c48"],
    ["ir_r3_k3_s2_e4_c96_se0.25"],
    ["ir_r5_k3_s1_e6_c112_se0.25"],
    ["ir_r8_k3_s2_e6_c192_se0.25"],
]
# timm model name -> (channel multiplier, depth multiplier, round_limit of round_channels)
TIMM_MULTIPLIERS = {
    "efficientnet_b0": (1.0, 1.0, 0.9), "efficientnet_b1": (1.0, 1.1, 0.9),
    "efficientnet_b2": (1.1, 1.2, 0.9), "efficientnet_b3": (1.2, 1.4, 0.9),
    "efficientnet_b4": (1.4, 1.8, 0.9), "efficientnet_b5": (1.6, 2.2, 0.9),
    "efficientnet_b6": (1.8, 2.6, 0.9),
    "tf_efficientnetv2_b0": (1.0, 1.0, 0.0), "tf_efficientnetv2_b1": (1.0, 1.1, 0.0),
    "tf_efficientnetv2_b2": (1.1, 1.2, 0.0), "tf_efficientnetv2_b3": (1.2, 1.4, 0.0),
}


def _make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def _decode(block_str):
    ops = block_str.split("_")
    kind, opts, skip = ops[0], {}, None
    for op in ops[1:]:
        if op == "skip":
            skip = True
        elif op == "noskip":
            skip = False
        else:
            key, value = re.split(r"(\d.*)", op)[:2]
            opts[key] = value
    return dict(kind=kind, r=int(opts["r"]), k=int(opts["k"]), s=int(opts["s"]),
                e=float(opts.get("e", 1)), c=int(opts["c"]), se=float(opts.get("se", 0)),
                skip=skip)


def _bn(prefix, chs, out):
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.{name}"] = (chs,)
    out[f"{prefix}.num_batches_tracked"] = ()


def _se(prefix, chs, rd, out):
    out[f"{prefix}.conv_reduce.weight"] = (rd, chs, 1, 1)
    out[f"{prefix}.conv_reduce.bias"] = (rd,)
    out[f"{prefix}.conv_expand.weight"] = (chs, rd, 1, 1)
    out[f"{prefix}.conv_expand.bias"] = (chs,)


def efficientnet_table(timm_name: str, num_classes: int = 1000) -> dict[str, tuple]:
    """state_dict key -> shape of timm's ``timm_name`` (an EfficientNet V1 or V2 B-series)."""
    mult, depth, limit = TIMM_MULTIPLIERS[timm_name]
    arch = TIMM_EFFICIENTNETV2_BASE_ARCH if "v2" in timm_name else TIMM_EFFICIENTNET_ARCH
    rc = lambda c: _make_divisible(c * mult, 8, None, limit)  # noqa: E731
    out: dict[str, tuple] = {}
    stem = rc(32)
    out["conv_stem.weight"] = (stem, 3, 3, 3)
    _bn("bn1", stem, out)
    in_chs = stem
    for si, stage in enumerate(arch):
        (ba,) = [_decode(s) for s in stage]
        repeats = int(math.ceil(ba["r"] * depth))
        for bi in range(repeats):
            p = f"blocks.{si}.{bi}"
            o, k, e = rc(ba["c"]), ba["k"], ba["e"]
            if ba["kind"] == "ds":
                out[f"{p}.conv_dw.weight"] = (in_chs, 1, k, k)
                _bn(f"{p}.bn1", in_chs, out)
                if ba["se"]:
                    _se(f"{p}.se", in_chs, round(in_chs * ba["se"]), out)
                out[f"{p}.conv_pw.weight"] = (o, in_chs, 1, 1)
                _bn(f"{p}.bn2", o, out)
            elif ba["kind"] == "ir":
                mid = _make_divisible(in_chs * e)
                out[f"{p}.conv_pw.weight"] = (mid, in_chs, 1, 1)
                _bn(f"{p}.bn1", mid, out)
                out[f"{p}.conv_dw.weight"] = (mid, 1, k, k)
                _bn(f"{p}.bn2", mid, out)
                if ba["se"]:
                    _se(f"{p}.se", mid, round(mid * ba["se"] / e), out)
                out[f"{p}.conv_pwl.weight"] = (o, mid, 1, 1)
                _bn(f"{p}.bn3", o, out)
            elif ba["kind"] == "er":
                mid = _make_divisible(in_chs * e)
                out[f"{p}.conv_exp.weight"] = (mid, in_chs, k, k)
                _bn(f"{p}.bn1", mid, out)
                out[f"{p}.conv_pwl.weight"] = (o, mid, 1, 1)
                _bn(f"{p}.bn2", o, out)
            elif ba["kind"] == "cn":
                out[f"{p}.conv.weight"] = (o, in_chs, k, k)
                _bn(f"{p}.bn1", o, out)
            in_chs = o
    nf = rc(1280)
    out["conv_head.weight"] = (nf, in_chs, 1, 1)
    _bn("bn2", nf, out)
    out["classifier.weight"] = (num_classes, nf)
    out["classifier.bias"] = (num_classes,)
    return out


def resnest_table(layers=(3, 4, 6, 3), stem_width=32, radix=1, cardinality=4, base_width=24,
                  num_classes=1000) -> dict[str, tuple]:
    """state_dict key -> shape of timm's ``resnest50d_1s4x24d`` (ResNet-D + SplitAttn)."""
    out: dict[str, tuple] = {}
    inplanes = stem_width * 2
    out["conv1.0.weight"] = (stem_width, 3, 3, 3)
    _bn("conv1.1", stem_width, out)
    out["conv1.3.weight"] = (stem_width, stem_width, 3, 3)
    _bn("conv1.4", stem_width, out)
    out["conv1.6.weight"] = (inplanes, stem_width, 3, 3)
    _bn("bn1", inplanes, out)
    for si, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for bi in range(n):
            p = f"layer{si + 1}.{bi}"
            gw = int(planes * (base_width / 64.0)) * cardinality
            attn = _make_divisible(gw * radix * 0.25, 8, 32)
            out[f"{p}.conv1.weight"] = (gw, inplanes, 1, 1)
            _bn(f"{p}.bn1", gw, out)
            out[f"{p}.conv2.conv.weight"] = (gw * radix, gw // (cardinality * radix), 3, 3)
            _bn(f"{p}.conv2.bn0", gw * radix, out)
            out[f"{p}.conv2.fc1.weight"] = (attn, gw // cardinality, 1, 1)
            out[f"{p}.conv2.fc1.bias"] = (attn,)
            _bn(f"{p}.conv2.bn1", attn, out)
            out[f"{p}.conv2.fc2.weight"] = (gw * radix, attn // cardinality, 1, 1)
            out[f"{p}.conv2.fc2.bias"] = (gw * radix,)
            out[f"{p}.conv3.weight"] = (planes * 4, gw, 1, 1)
            _bn(f"{p}.bn3", planes * 4, out)
            if bi == 0:
                out[f"{p}.downsample.1.weight"] = (planes * 4, inplanes, 1, 1)
                _bn(f"{p}.downsample.2", planes * 4, out)
            inplanes = planes * 4
    out["fc.weight"] = (num_classes, inplanes)
    out["fc.bias"] = (num_classes,)
    return out


def timm_table(timm_name: str) -> dict[str, tuple]:
    if timm_name == "resnest50d_1s4x24d":
        return resnest_table()
    return efficientnet_table(timm_name)

"""ResNeSt-50d 1s4x24d: ResNet-D with split-attention bottlenecks (its layers are the 16 blocks).

Deep 3-conv stem (``conv1.0/.3/.6``), max-pool, four stages ``layer1..layer4`` of bottlenecks
whose 3x3 conv is a split-attention conv (``conv2.conv``, ``conv2.fc1``, ``conv2.fc2``,
``conv2.rsoftmax``), average-pool shortcut downsampling (``downsample.1`` conv,
``downsample.2`` BN) and ``fc``.  Names and shapes follow timm's ``resnest50d_1s4x24d``:
radix 1 ("1s"), cardinality 4, base width 24, the stride done by a 3x3 average pool before
the split-attention conv ("avd first").
"""

from __future__ import annotations

from torch import nn
import torch

from lana.teachers import register_teacher
from lana.teachers.efficientnet import make_divisible


class RadixSoftmax(nn.Module):
    """Softmax over the radix splits of each cardinal group (sigmoid when radix is 1)."""

    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.radix > 1:
            b = x.size(0)
            x = x.view(b, self.cardinality, self.radix, -1).transpose(1, 2)
            return torch.softmax(x, dim=1).reshape(b, -1)
        return torch.sigmoid(x)


class SplitAttn(nn.Module):
    """Split-attention 3x3 conv: grouped conv over ``radix`` splits, attention from their sum."""

    def __init__(self, chs: int, *, stride: int = 1, groups: int = 1, radix: int = 2,
                 rd_ratio: float = 0.25) -> None:
        super().__init__()
        self.radix = radix
        mid = chs * radix
        attn_chs = make_divisible(chs * radix * rd_ratio, 8, min_value=32)
        self.conv = nn.Conv2d(chs, mid, 3, stride, 1, groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(mid)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(chs, attn_chs, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(attn_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn_chs, mid, 1, groups=groups)
        self.rsoftmax = RadixSoftmax(radix, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        if self.radix > 1:
            x = x.reshape(b, self.radix, rc // self.radix, h, w)
            gap = x.sum(dim=1)
        else:
            gap = x
        gap = self.act1(self.bn1(self.fc1(gap.mean((2, 3), keepdim=True))))
        attn = self.rsoftmax(self.fc2(gap)).view(b, -1, 1, 1)
        if self.radix > 1:
            return (x * attn.reshape(b, self.radix, rc // self.radix, 1, 1)).sum(dim=1)
        return x * attn


class ResNestBottleneck(nn.Module):
    """1x1 reduce, (avg-pool stride), split-attention 3x3, 1x1 expand, residual add, ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, radix: int = 1,
                 cardinality: int = 1, base_width: int = 64, avd_first: bool = True) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * cardinality
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        pool = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else None
        self.avd_first = pool if avd_first else None
        self.conv2 = SplitAttn(width, groups=cardinality, radix=radix)
        self.avd_last = None if avd_first else pool
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1 else nn.Identity(),
                nn.Conv2d(inplanes, out, 1, bias=False),
                nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        if self.avd_first is not None:
            out = self.avd_first(out)
        out = self.conv2(out)
        if self.avd_last is not None:
            out = self.avd_last(out)
        out = self.bn3(self.conv3(out))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.act3(out + shortcut)


class ResNeSt(nn.Module):
    """ResNet-D layout (deep stem, avg-down shortcuts) with ResNeSt bottlenecks."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), *, num_classes: int = 1000,
                 in_chans: int = 3, stem_width: int = 32, radix: int = 1, cardinality: int = 4,
                 base_width: int = 24, avd_first: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        inplanes = stem_width * 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, inplanes, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(ResNestBottleneck(inplanes, planes, stride, radix=radix,
                                                cardinality=cardinality, base_width=base_width,
                                                avd_first=avd_first))
                inplanes = planes * ResNestBottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        if not self.fc.weight.is_meta:  # a shapes-only build has nothing to initialise
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResNestBottleneck):
                nn.init.zeros_(m.bn3.weight)  # each block starts as (almost) its shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.global_pool(x).flatten(1))


# ---------------------------------------------------------------------------------------------
# Registered variant


@register_teacher(
    "resnest50d_1s4x24d", input_shape=(3, 224, 224), num_classes=1000, selector="layer*.*",
    timm_compatible=True, timm_name="resnest50d_1s4x24d",
    description="ResNeSt-50d 224px, split-attention bottlenecks (radix 1, 4x24d), deep stem, "
                "avg-down")
def resnest50d_1s4x24d(num_classes: int = 1000, **kwargs) -> ResNeSt:
    return ResNeSt((3, 4, 6, 3), num_classes=num_classes, radix=1, cardinality=4, base_width=24,
                   avd_first=True, **kwargs)

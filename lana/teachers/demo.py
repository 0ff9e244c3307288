"""``demo``: a small EfficientNet-style teacher for the embedded handwritten-digits dataset.

Input (1, 32, 32) (8x8 digits upsampled), 10 classes, 11 layers: a depthwise-separable block and
two MBConv+SE blocks at full resolution, then three MBConv+SE stages that each open with a
stride-2, channel-widening block followed by same-shape blocks (what LANA can skip or replace).
About 95 % of its latency is in the layers, not the stem or head, so replacing layers pays off.
The shipped weights (``weights/demo.pt``, 99.4 % top-1 on the held-out digits) are reproduced by
``lana train-teacher --teacher demo --out lana/teachers/weights/demo.pt``.
"""

from __future__ import annotations

from torch import nn

from lana.teachers import register_teacher
from lana.teachers.efficientnet import EfficientNet, StageDef, build_stages

# kind, blocks, kernel, first stride, expansion, out channels, SE ratio
DEMO_STAGES = (
    StageDef("ds", 1, 3, 1, 1, 16, 0.25),  # 32x32
    StageDef("ir", 2, 3, 1, 4, 24, 0.25),  # 32x32: widen, then a same-shape block
    StageDef("ir", 3, 3, 2, 4, 40, 0.25),  # 16x16
    StageDef("ir", 3, 5, 2, 4, 64, 0.25),  # 8x8
    StageDef("ir", 2, 3, 2, 4, 96, 0.25),  # 4x4
)
DEMO_STEM = 24
DEMO_FEATURES = 256


def demo_net(num_classes: int = 10, in_chans: int = 1) -> EfficientNet:
    """The demo teacher: stride-1 stem, 11 blocks, 1x1 head, linear classifier."""
    stages = build_stages(DEMO_STAGES, DEMO_STEM, 1.0, 1.0)
    return EfficientNet(stages, stem_size=DEMO_STEM, num_features=DEMO_FEATURES,
                        num_classes=num_classes, in_chans=in_chans, stem_stride=1,
                        act_layer=nn.SiLU)


@register_teacher(
    "demo", input_shape=(1, 32, 32), num_classes=10, selector="blocks.*.*",
    timm_compatible=False, weights="demo.pt",
    description="small EfficientNet-style net for the embedded digits data, 32px, 11 layers")
def demo(num_classes: int = 10, **kwargs) -> EfficientNet:
    return demo_net(num_classes, **kwargs)

"""MobileNetV3-Small (Howard et al., 2019) with the torchvision layer shapes."""

from __future__ import annotations

from torch import nn

from sparsecc.models._blocks import ConvBNAct, InvertedResidual, SqueezeExcite, make_divisible

# (kernel, expanded channels, output channels, squeeze-excite, hard-swish, stride) per block.
_BLOCKS = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
           (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
           (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
           (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)]


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small: stem, 11 blocks, 1x1 conv to 576, 1024-wide head, Linear.

    Args:
        num_classes: Classifier outputs. Defaults to 1000.
        small_input: For 32x32 inputs the stem and the first block use stride 1
            (the usual CIFAR adaptation). Defaults to False.
        in_channels: Image channels. Defaults to 3.
        dropout: Dropout inside the head. Defaults to 0.2.
    """

    def __init__(self, num_classes: int = 1000, small_input: bool = False, in_channels: int = 3,
                 dropout: float = 0.2):
        super().__init__()
        layers = [ConvBNAct(in_channels, 16, 3, 1 if small_input else 2, act=nn.Hardswish)]
        in_ch = 16
        for i, (kernel, hidden, out_ch, use_se, hswish, stride) in enumerate(_BLOCKS):
            stride = 1 if small_input and i == 0 else stride
            se = SqueezeExcite(hidden, make_divisible(hidden // 4), gate=nn.Hardsigmoid) if use_se else None
            layers.append(InvertedResidual(in_ch, hidden, out_ch, kernel, stride,
                                           nn.Hardswish if hswish else nn.ReLU, se))
            in_ch = out_ch
        layers.append(ConvBNAct(in_ch, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(1024, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v3_small(**kwargs) -> MobileNetV3Small:
    """Builds MobileNetV3-Small; keyword arguments go to :class:`MobileNetV3Small`."""
    return MobileNetV3Small(**kwargs)

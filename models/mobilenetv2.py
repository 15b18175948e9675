"""MobileNetV2 (Sandler et al., 2018) with the torchvision layer shapes."""

from __future__ import annotations

from torch import nn

from sparsecc.models._blocks import ConvBNAct, InvertedResidual, make_divisible

# (expansion t, output channels c, repeats n, first stride s) per stage.
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """MobileNetV2: a 3x3 stem, 17 inverted residual blocks, a 1x1 conv to 1280, Linear.

    Args:
        num_classes: Classifier outputs. Defaults to 1000.
        small_input: For 32x32 inputs the stem and the second stage use
            stride 1 (the usual CIFAR adaptation: 4x4 final maps instead of 1x1). Defaults to False.
        width: Channel multiplier, rounded to multiples of 8; the last conv stays
            1280 wide for width <= 1, as in the reference. Defaults to 1.0.
        in_channels: Image channels. Defaults to 3.
        dropout: Dropout before the classifier. Defaults to 0.2.
    """

    def __init__(self, num_classes: int = 1000, small_input: bool = False, width: float = 1.0,
                 in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        in_ch = make_divisible(32 * width)
        last_ch = make_divisible(1280 * max(1.0, width))
        layers = [ConvBNAct(in_channels, in_ch, 3, 1 if small_input else 2, act=nn.ReLU6)]
        for i, (expand, channels, repeats, stride) in enumerate(_STAGES):
            out_ch = make_divisible(channels * width)
            if small_input and i == 1:
                stride = 1
            for j in range(repeats):
                layers.append(InvertedResidual(in_ch, in_ch * expand, out_ch, 3, stride if j == 0 else 1, nn.ReLU6))
                in_ch = out_ch
        layers.append(ConvBNAct(in_ch, last_ch, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_ch, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v2(**kwargs) -> MobileNetV2:
    """Builds MobileNetV2; keyword arguments go to :class:`MobileNetV2`."""
    return MobileNetV2(**kwargs)

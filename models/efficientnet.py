"""EfficientNet-B0 (Tan and Le, 2019) with the torchvision layer shapes."""

from __future__ import annotations

from torch import nn

from sparsecc.models._blocks import ConvBNAct, InvertedResidual, SqueezeExcite

# (expansion, kernel, first stride, output channels, repeats) per stage.
_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class EfficientNetB0(nn.Module):
    """EfficientNet-B0: stem, 16 MBConv blocks, 1x1 conv to 1280, Linear.

    Args:
        num_classes: Classifier outputs. Defaults to 1000.
        small_input: For 32x32 inputs the stem and the second stage use
            stride 1 (the usual CIFAR adaptation). Defaults to False.
        in_channels: Image channels. Defaults to 3.
        dropout: Dropout before the classifier. Defaults to 0.2.
    """

    def __init__(self, num_classes: int = 1000, small_input: bool = False, in_channels: int = 3,
                 dropout: float = 0.2):
        super().__init__()
        layers = [ConvBNAct(in_channels, 32, 3, 1 if small_input else 2, act=nn.SiLU)]
        in_ch = 32
        for i, (expand, kernel, stride, out_ch, repeats) in enumerate(_STAGES):
            stride = 1 if small_input and i == 1 else stride
            for j in range(repeats):
                se = SqueezeExcite(in_ch * expand, max(1, in_ch // 4), act=nn.SiLU)
                layers.append(InvertedResidual(in_ch, in_ch * expand, out_ch, kernel, stride if j == 0 else 1,
                                               nn.SiLU, se))
                in_ch = out_ch
        layers.append(ConvBNAct(in_ch, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def efficientnet_b0(**kwargs) -> EfficientNetB0:
    """Builds EfficientNet-B0; keyword arguments go to :class:`EfficientNetB0`."""
    return EfficientNetB0(**kwargs)

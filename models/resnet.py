"""ResNet-18 (He et al., 2016) with the torchvision layer shapes."""

from __future__ import annotations

from torch import nn

from sparsecc.models._blocks import ConvBNAct


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or 1x1-projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = ConvBNAct(in_ch, out_ch, 3, stride)
        self.conv2 = ConvBNAct(out_ch, out_ch, 3, act=None)
        self.shortcut = (ConvBNAct(in_ch, out_ch, 1, stride, act=None)
                         if stride != 1 or in_ch != out_ch else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18: stem, four stages of two basic blocks, global pool, Linear.

    Args:
        num_classes: Classifier outputs. Defaults to 1000.
        small_input: Use the CIFAR stem (3x3 stride-1 conv, no max-pool) for
            32x32 inputs instead of the 7x7 stride-2 conv and max-pool. Defaults to False.
        width: Multiplier on every channel count (64, 128, 256, 512). Defaults to 1.0.
        in_channels: Image channels. Defaults to 3.
    """

    def __init__(self, num_classes: int = 1000, small_input: bool = False, width: float = 1.0,
                 in_channels: int = 3):
        super().__init__()
        widths = [int(c * width) for c in (64, 128, 256, 512)]
        if small_input:
            self.stem = ConvBNAct(in_channels, widths[0], 3)
        else:
            self.stem = nn.Sequential(ConvBNAct(in_channels, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, in_ch = [], widths[0]
        for i, out_ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def resnet18(**kwargs) -> ResNet18:
    """Builds ResNet-18; keyword arguments go to :class:`ResNet18`."""
    return ResNet18(**kwargs)

"""Building blocks shared by the zoo's convolutional networks.

Every block keeps BatchNorm as its own module after its convolution: the
compiler folds BatchNorm into Conv itself, so the exported graphs must still
contain it.
"""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds a scaled channel count to a multiple of ``divisor``.

    Same rule as the reference MobileNet/EfficientNet code: round to the
    nearest multiple, never below ``divisor``, never more than 10% down.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> optional activation.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        kernel: Square kernel size.
        stride: Stride. Defaults to 1.
        groups: Convolution groups; ``groups == in_ch == out_ch`` is depthwise. Defaults to 1.
        act: Activation module class, or None for none. Defaults to nn.ReLU.
        bias: Give the convolution a bias, as VGG's reference layers have even
            though BatchNorm follows. Defaults to False.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU, bias: bool = False):
        layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=bias),
                  nn.BatchNorm2d(out_ch)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel gates from globally pooled features.

    Args:
        channels: Channels of the gated feature map.
        squeeze: Channels of the bottleneck.
        act: Bottleneck activation class. Defaults to nn.ReLU.
        gate: Gate activation class. Defaults to nn.Sigmoid.
    """

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """PW1 expand -> depthwise kxk (DW) -> optional squeeze-excitation -> linear PW2 project.

    The block of MobileNetV2, MobileNetV3 and EfficientNet (MBConv); a residual
    connection is added when the block keeps the shape. Stochastic depth is a
    training-time regulariser and the identity at inference, so it is left out.

    Args:
        in_ch: Input channels.
        hidden: Expanded channels; no expand conv when equal to ``in_ch``.
        out_ch: Output channels.
        kernel: Depthwise kernel size.
        stride: Depthwise stride.
        act: Activation class of the expand and depthwise convs.
        squeeze_excite: SE module applied after the depthwise conv. Defaults to none.
    """

    def __init__(self, in_ch: int, hidden: int, out_ch: int, kernel: int, stride: int,
                 act: type[nn.Module], squeeze_excite: nn.Module | None = None):
        super().__init__()
        layers = [ConvBNAct(in_ch, hidden, 1, act=act)] if hidden != in_ch else []
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if squeeze_excite is not None:
            layers.append(squeeze_excite)
        layers.append(ConvBNAct(hidden, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)

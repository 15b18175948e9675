"""VGG-16 with BatchNorm (Simonyan and Zisserman, 2015), torchvision layer shapes."""

from __future__ import annotations

from torch import nn

from sparsecc.models._blocks import ConvBNAct

# Output channels of the 13 convolutions; "M" is a 2x2 max-pool.
_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG-16-BN: thirteen 3x3 Conv-BN-ReLU layers in five pooled stages, then a classifier.

    Args:
        num_classes: Classifier outputs. Defaults to 1000.
        small_input: For 32x32 inputs the features end at 1x1, so the
            classifier is the usual CIFAR one, a single Linear; otherwise it is
            the ImageNet 4096-4096 MLP with dropout on the 7x7 features (torchvision's
            7x7 adaptive pool is the identity at 224x224 and is left out). Defaults to False.
        width: Multiplier on every convolution's channels. Defaults to 1.0.
        in_channels: Image channels. Defaults to 3.
    """

    def __init__(self, num_classes: int = 1000, small_input: bool = False, width: float = 1.0,
                 in_channels: int = 3):
        super().__init__()
        layers, in_ch = [], in_channels
        for item in _CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvBNAct(in_ch, int(item * width), 3, bias=True))
                in_ch = int(item * width)
        self.features = nn.Sequential(*layers)
        if small_input:
            self.classifier = nn.Sequential(nn.Flatten(1), nn.Linear(in_ch, num_classes))
        else:
            self.classifier = nn.Sequential(
                nn.Flatten(1),
                nn.Linear(in_ch * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg16_bn(**kwargs) -> VGG16BN:
    """Builds VGG-16-BN; keyword arguments go to :class:`VGG16BN`."""
    return VGG16BN(**kwargs)

"""AlexNet (Krizhevsky et al., 2012) in the single-tower torchvision layout."""

from __future__ import annotations

from torch import nn


class AlexNet(nn.Module):
    """AlexNet: five convolutions (64, 192, 384, 256, 256 channels) and a three-layer MLP.

    AlexNet has no BatchNorm. At 224x224 the features end at 6x6, which is
    what torchvision's 6x6 adaptive pool produces, so the pool is left out.

    Args:
        num_classes: Classifier outputs. Defaults to 1000.
        small_input: For 32x32 inputs: a 3x3 stride-1 first convolution and
            2x2 pools (features end at 4x4) and a 1024-wide MLP, the usual
            CIFAR adaptation; otherwise the 11x11 stride-4 stem, 3x3 stride-2
            pools and a 4096-wide MLP. Defaults to False.
        in_channels: Image channels. Defaults to 3.
    """

    def __init__(self, num_classes: int = 1000, small_input: bool = False, in_channels: int = 3):
        super().__init__()
        if small_input:
            stem, pool, hidden, spatial = nn.Conv2d(in_channels, 64, 3, 1, 1), (2, 2), 1024, 4
        else:
            stem, pool, hidden, spatial = nn.Conv2d(in_channels, 64, 11, 4, 2), (3, 2), 4096, 6
        self.features = nn.Sequential(
            stem, nn.ReLU(inplace=True), nn.MaxPool2d(*pool),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(*pool),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(*pool))
        self.classifier = nn.Sequential(
            nn.Flatten(1), nn.Dropout(),
            nn.Linear(256 * spatial * spatial, hidden), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def alexnet(**kwargs) -> AlexNet:
    """Builds AlexNet; keyword arguments go to :class:`AlexNet`."""
    return AlexNet(**kwargs)

"""The peer benchmark's models, written here in plain PyTorch (independent of sparsecc's zoo).

ResNet-50-style (bottlenecks [3, 4, 6, 3], 224x224), MobileNetV2-style (inverted residuals, 224x224)
and VGG-style (VGG-16-BN's thirteen 3x3 convs, global average pool, one Linear; 128x128 so a run
takes about as long as ResNet-50's). Weights are PyTorch's seeded initialisation with trained-like
BatchNorm (scales, shifts and running statistics spread as after training, so channels differ in
importance and folding BatchNorm changes every filter).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = 4 * width
        self.body = nn.Sequential(conv_bn(c_in, width), conv_bn(width, width, 3, stride),
                                  conv_bn(width, c_out, act=False))
        self.shortcut = conv_bn(c_in, c_out, 1, stride, act=False) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet50Style(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, c_in = [], 64
        for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for index in range(count):
                blocks.append(Bottleneck(c_in, width, stride if index == 0 else 1))
                c_in = 4 * width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn(c_in, hidden)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, c_out, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Style(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, c_in = [conv_bn(3, 32, 3, 2)], 32
        for expand, c_out, count, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
            for index in range(count):
                layers.append(InvertedResidual(c_in, c_out, stride if index == 0 else 1, expand))
                c_in = c_out
        layers.append(conv_bn(c_in, 1280))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class VGGStyle(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, c_in = [], 3
        for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(conv_bn(c_in, item, 3))
                c_in = item
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


MODELS = {"resnet50": (ResNet50Style, 224), "mobilenetv2": (MobileNetV2Style, 224), "vgg": (VGGStyle, 128)}


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights, and BatchNorm statistics and affine parameters spread as in a trained network."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            with torch.no_grad():
                module.weight.copy_(0.2 + torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01, generator=generator)
            nn.init.zeros_(module.bias)
    return model.eval()


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model called ``name`` (a key of :data:`MODELS`) with trained-like weights, and a batch-1 input."""
    cls, size = MODELS[name]
    return trained_like(cls(), seed), torch.zeros(1, 3, size, size)


def export(model: nn.Module, example: torch.Tensor, path) -> None:
    """Plain ``torch.onnx.export`` (TorchScript exporter, opset 17), input "input", output "logits"."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])

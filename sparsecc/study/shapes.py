"""The layers of the study: each as its GEMM, from VGG-16, ResNet-18, ViT and BERT-base."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvShape:
    """A conv layer of the study (square input, batch 1), to build its ONNX model and derive its im2col GEMM."""

    c_in: int
    c_out: int
    size: int
    kernel: int = 3
    stride: int = 1
    pad: int | None = None

    @property
    def padding(self) -> int:
        return self.kernel // 2 if self.pad is None else self.pad

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class GemmShape:
    """One layer of the study as its GEMM ``[M, K] x [K, N]``.

    Attributes:
        model: Model (and shape group of the plot), e.g. "BERT-base".
        layer: Layer name inside the model.
        m: Rows of the activation: output pixels of a conv, tokens of a linear layer.
        k: Reduction length: C_in*kh*kw, or input features.
        n: Output channels or features.
        conv: The conv layer, or None for a linear (MatMul) layer.
    """

    model: str
    layer: str
    m: int
    k: int
    n: int
    conv: ConvShape | None = None

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    @property
    def label(self) -> str:
        return f"{self.model} {self.layer}"


def conv(model: str, layer: str, c_in: int, c_out: int, size: int, kernel: int = 3, stride: int = 1,
         pad: int | None = None) -> GemmShape:
    """The im2col GEMM of a conv with a square ``size`` x ``size`` input, batch 1."""
    geo = ConvShape(c_in, c_out, size, kernel, stride, pad)
    return GemmShape(model, layer, geo.out_size ** 2, c_in * kernel * kernel, c_out, geo)


def linear(model: str, layer: str, tokens: int, fan_in: int, fan_out: int) -> GemmShape:
    """A linear layer applied to ``tokens`` rows (batch 1)."""
    return GemmShape(model, layer, tokens, fan_in, fan_out)


# ImageNet-size inputs (224 x 224, batch 1) for the CNNs; ViT at 224 with 16 x 16 patches (197 tokens);
# BERT-base at sequence 128, batch 1.
_VGG16 = [conv("VGG-16", "conv1_1", 3, 64, 224), conv("VGG-16", "conv1_2", 64, 64, 224),
          conv("VGG-16", "conv2_1", 64, 128, 112), conv("VGG-16", "conv2_2", 128, 128, 112),
          conv("VGG-16", "conv3_1", 128, 256, 56), conv("VGG-16", "conv3_2", 256, 256, 56),
          conv("VGG-16", "conv4_1", 256, 512, 28), conv("VGG-16", "conv4_2", 512, 512, 28),
          conv("VGG-16", "conv5_2", 512, 512, 14),
          linear("VGG-16", "fc6", 1, 25088, 4096), linear("VGG-16", "fc7", 1, 4096, 4096),
          linear("VGG-16", "fc8", 1, 4096, 1000)]
_RESNET18 = [conv("ResNet-18", "conv1", 3, 64, 224, kernel=7, stride=2),
             conv("ResNet-18", "layer1.conv", 64, 64, 56),
             conv("ResNet-18", "layer2.0.conv1", 64, 128, 56, stride=2),
             conv("ResNet-18", "layer2.conv", 128, 128, 28),
             conv("ResNet-18", "layer2.0.downsample", 64, 128, 56, kernel=1, stride=2),
             conv("ResNet-18", "layer3.0.conv1", 128, 256, 28, stride=2),
             conv("ResNet-18", "layer3.conv", 256, 256, 14),
             conv("ResNet-18", "layer4.0.conv1", 256, 512, 14, stride=2),
             conv("ResNet-18", "layer4.conv", 512, 512, 7),
             linear("ResNet-18", "fc", 1, 512, 1000)]
_VIT = [conv("ViT", "B patch-embed", 3, 768, 224, kernel=16, stride=16, pad=0),
        linear("ViT", "B qkv", 197, 768, 2304), linear("ViT", "B proj", 197, 768, 768),
        linear("ViT", "B fc1", 197, 768, 3072), linear("ViT", "B fc2", 197, 3072, 768),
        conv("ViT", "Ti patch-embed", 3, 192, 224, kernel=16, stride=16, pad=0),
        linear("ViT", "Ti qkv", 197, 192, 576), linear("ViT", "Ti proj", 197, 192, 192),
        linear("ViT", "Ti fc1", 197, 192, 768), linear("ViT", "Ti fc2", 197, 768, 192)]
_BERT = [linear("BERT-base", "attn q/k/v/out", 128, 768, 768), linear("BERT-base", "ffn up", 128, 768, 3072),
         linear("BERT-base", "ffn down", 128, 3072, 768)]


def _pick(shapes: list[GemmShape], *layers: str) -> list[GemmShape]:
    return [s for s in shapes if s.layer in layers]


SHAPE_SETS: dict[str, list[GemmShape]] = {
    # Two small ViT-Tiny layers (one conv, one linear): a smoke run for tests.
    "quick": _pick(_VIT, "Ti patch-embed", "Ti proj"),
    # One or two representative layers per model: a few minutes on 2 cores.
    "default": (_pick(_VGG16, "conv5_2", "fc7") + _pick(_RESNET18, "layer2.conv", "layer4.conv")
                + _pick(_VIT, "B fc1", "Ti qkv") + _BERT),
    # Every distinct GEMM shape of the four models (long; VGG-16 fc6 alone holds 411 MB of weights).
    "full": _VGG16 + _RESNET18 + _VIT + _BERT,
}

"""The sparsecc model zoo: which models exist, their inputs, and their checkpoints.

This module is plain data and never imports torch, so ``sparsecc zoo list``
works everywhere. The PyTorch definitions (one module per architecture) are
imported only when a model is built, by :func:`sparsecc.zoo.export_onnx`.

Name rule: ``ARCH`` is the ImageNet-shape model (1x3x224x224, 1000 classes;
BERT: 1x128 token ids), ``ARCH-small`` the small-input variant with its stem
adapted the usual CIFAR way (1x3x32x32, 10 classes; BERT: 1x32 token ids), and
``ARCH-digits`` a channel-slim small variant trained on scikit-learn's digits
(1x1x32x32, 10 classes) whose ONNX checkpoint ships in ``checkpoints/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InputSpec", "ZooEntry", "ZOO"]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its ONNX name, static shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Attributes:
        name: Zoo name, e.g. ``resnet18-small``.
        architecture: Architecture family, e.g. ``ResNet-18``.
        description: One line: input, classes, and any change from the reference.
        inputs: Graph inputs, in order.
        output_shape: Shape of the single output (logits).
        builder: ``module:function`` that builds the ``torch.nn.Module``.
        kwargs: Keyword arguments for the builder.
        params: Trainable parameter count, so listing needs no torch (a test
            checks it against the built model).
        checkpoint: File name of the trained ONNX model in ``checkpoints/``,
            or None when only random weights exist.
        eval_data: File name of the validation split in ``checkpoints/`` that
            the checkpoint was scored on, or None.
    """

    name: str
    architecture: str
    description: str
    inputs: tuple[InputSpec, ...]
    output_shape: tuple[int, ...]
    builder: str
    params: int
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    eval_data: str | None = None


_IMAGENET = (InputSpec("input", (1, 3, 224, 224)),)
_SMALL = (InputSpec("input", (1, 3, 32, 32)),)
_DIGITS = (InputSpec("input", (1, 1, 32, 32)),)
_SMALL_KW = {"num_classes": 10, "small_input": True}
_DIGITS_KW = {"num_classes": 10, "small_input": True, "in_channels": 1}

_ENTRIES = [
    ZooEntry("resnet18", "ResNet-18", "ImageNet shape, 1000 classes", _IMAGENET, (1, 1000),
             "sparsecc.models.resnet:resnet18", 11_689_512),
    ZooEntry("resnet18-small", "ResNet-18", "32x32, 10 classes, 3x3 stride-1 stem, no max-pool",
             _SMALL, (1, 10), "sparsecc.models.resnet:resnet18", 11_173_962, _SMALL_KW),
    ZooEntry("vgg16", "VGG-16-BN", "ImageNet shape, 1000 classes", _IMAGENET, (1, 1000),
             "sparsecc.models.vgg:vgg16_bn", 138_365_992),
    ZooEntry("vgg16-small", "VGG-16-BN", "32x32, 10 classes, single Linear classifier",
             _SMALL, (1, 10), "sparsecc.models.vgg:vgg16_bn", 14_728_266, _SMALL_KW),
    ZooEntry("mobilenetv2", "MobileNetV2", "ImageNet shape, 1000 classes", _IMAGENET, (1, 1000),
             "sparsecc.models.mobilenetv2:mobilenet_v2", 3_504_872),
    ZooEntry("mobilenetv2-small", "MobileNetV2", "32x32, 10 classes, stride 1 in stem and stage 2",
             _SMALL, (1, 10), "sparsecc.models.mobilenetv2:mobilenet_v2", 2_236_682, _SMALL_KW),
    ZooEntry("mobilenetv3s", "MobileNetV3-Small", "ImageNet shape, 1000 classes", _IMAGENET,
             (1, 1000), "sparsecc.models.mobilenetv3:mobilenet_v3_small", 2_542_856),
    ZooEntry("mobilenetv3s-small", "MobileNetV3-Small",
             "32x32, 10 classes, stride 1 in stem and first block", _SMALL, (1, 10),
             "sparsecc.models.mobilenetv3:mobilenet_v3_small", 1_528_106, _SMALL_KW),
    ZooEntry("efficientnet-b0", "EfficientNet-B0", "ImageNet shape, 1000 classes, SE + SiLU",
             _IMAGENET, (1, 1000), "sparsecc.models.efficientnet:efficientnet_b0", 5_288_548),
    ZooEntry("efficientnet-b0-small", "EfficientNet-B0",
             "32x32, 10 classes, stride 1 in stem and stage 2", _SMALL, (1, 10),
             "sparsecc.models.efficientnet:efficientnet_b0", 4_020_358, _SMALL_KW),
    ZooEntry("alexnet", "AlexNet", "ImageNet shape, 1000 classes", _IMAGENET, (1, 1000),
             "sparsecc.models.alexnet:alexnet", 61_100_840),
    ZooEntry("alexnet-small", "AlexNet", "32x32, 10 classes, 3x3 stem, 2x2 pools, 1024-wide MLP",
             _SMALL, (1, 10), "sparsecc.models.alexnet:alexnet", 7_703_370, _SMALL_KW),
    ZooEntry("vit-tiny", "ViT-Tiny", "ImageNet shape, 1000 classes, patch 16, dim 192, depth 12, 3 heads",
             _IMAGENET, (1, 1000), "sparsecc.models.vit:vit_tiny", 5_717_416),
    ZooEntry("vit-tiny-small", "ViT-Tiny", "32x32, 10 classes, patch 4 (64 patches)", _SMALL,
             (1, 10), "sparsecc.models.vit:vit_tiny", 5_362_762, _SMALL_KW),
    ZooEntry("bert-mini", "BERT", "128 token ids, 4 layers, hidden 256, 4 heads, vocab 30522, 2 classes",
             (InputSpec("input_ids", (1, 128), "int64"),), (1, 2), "sparsecc.models.bert:bert_mini",
             11_171_074),
    ZooEntry("bert-mini-small", "BERT", "32 token ids, otherwise as bert-mini",
             (InputSpec("input_ids", (1, 32), "int64"),), (1, 2), "sparsecc.models.bert:bert_mini",
             11_171_074),
    ZooEntry("resnet18-digits", "ResNet-18",
             "trained on digits: 1x32x32 grayscale, 10 classes, small stem, width 0.25 (16-128 channels)",
             _DIGITS, (1, 10), "sparsecc.models.resnet:resnet18", 701_178,
             {**_DIGITS_KW, "width": 0.25}, "resnet18-digits.onnx", "digits_val.npz"),
    ZooEntry("vgg16-digits", "VGG-16-BN",
             "trained on digits: 1x32x32 grayscale, 10 classes, small classifier, width 0.125 (8-64 channels)",
             _DIGITS, (1, 10), "sparsecc.models.vgg:vgg16_bn", 232_130,
             {**_DIGITS_KW, "width": 0.125}, "vgg16-digits.onnx", "digits_val.npz"),
    ZooEntry("mobilenetv2-digits", "MobileNetV2",
             "trained on digits: 1x32x32 grayscale, 10 classes, small stem, width 0.35",
             _DIGITS, (1, 10), "sparsecc.models.mobilenetv2:mobilenet_v2", 408_650,
             {**_DIGITS_KW, "width": 0.35}, "mobilenetv2-digits.onnx", "digits_val.npz"),
]

ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}

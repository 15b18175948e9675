"""Conv geometry: explicit padding, stride, dilation and output size of a 2-D Conv at a known input shape.

The one description of a Conv's geometry: the lowerings emit from it, and its fields are what a
plugin convolution passes its kernel (input and kernel sizes, pads in ONNX order, strides,
dilations, output size).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class ConvGeometry:
    """Explicit padding, stride, dilation and output size of a 2-D Conv at a known input shape."""

    pads: tuple[int, int, int, int]  # top, left, bottom, right
    strides: tuple[int, int]
    dilations: tuple[int, int]
    out_hw: tuple[int, int]
    input_shape: tuple[int, ...] = ()  # N, C, H, W
    kernel: tuple[int, int] = (1, 1)  # kh, kw


def conv_geometry(node: gs.Node, input_shape: tuple[int, ...], kernel: tuple[int, int]) -> ConvGeometry:
    """Resolve auto_pad (SAME_UPPER, SAME_LOWER, VALID) and pads into explicit numbers."""
    strides = tuple(int(s) for s in node.attrs.get("strides", [1, 1]))
    dilations = tuple(int(d) for d in node.attrs.get("dilations", [1, 1]))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    size = input_shape[2:]
    begin, end = [0, 0], [0, 0]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for a in range(2):
            out = -(-size[a] // strides[a])
            total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - size[a])
            small, large = total // 2, total - total // 2
            begin[a], end[a] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
        begin, end = pads[:2], pads[2:]
    out_hw = tuple((size[a] + begin[a] + end[a] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1
                   for a in range(2))
    return ConvGeometry((begin[0], begin[1], end[0], end[1]), strides, dilations, out_hw,
                        tuple(int(d) for d in input_shape), (int(kernel[0]), int(kernel[1])))


def padding_depends_on_size(node: gs.Node) -> bool:
    """True when the Conv's padding follows its input size (auto_pad SAME_* with a stride above 1):
    explicit pads resolved at one size are then wrong at another."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad in ("SAME_UPPER", "SAME_LOWER") and any(int(s) > 1 for s in node.attrs.get("strides", [1]))


def symbolic_spatial_dims(tensor: gs.Tensor) -> bool:
    """True when the tensor's declared shape leaves a spatial dimension (after batch and channel) symbolic."""
    shape = tensor.shape
    return shape is not None and any(not isinstance(d, int) or d <= 0 for d in list(shape)[2:])

"""The DEPrune lowerings of a depthwise Conv (family ``deprune``), for ``deprune-rewrite``.

- ``depthwise``: the plain depthwise Conv with its zeros (the masked model; the baseline every
  other candidate is measured against).
- ``kernel-crop`` (tap skipping): the kernel cropped to the taps some channel keeps, pads
  adjusted; the same Conv with fewer taps.
- ``dr-grouped``: Diagonal-wise Refactorization as a grouped Conv with block-diagonal weights,
  G = M / width sub-GEMMs of width x (width*kh*kw) (width*kh*kw MACs per output instead of kh*kw).
- ``dr-compact``: DR after pruning: a Gather of the kept tap planes, a one-hot depthwise Conv and
  a grouped 1x1 Conv (the group-wise tap-gather on the block-diagonal weight), so only kept
  columns of each sub-GEMM are computed (the form a GPU sub-GEMM kernel replaces).

DR multiplies the depthwise MACs by the width on purpose, for GPU GEMM units; on a CPU it is
slower, and the cost models say so. The sub-GEMM width comes from the pass
(``LayerToLower.options["width"]``, default 32); a width that does not divide the channel count
falls back to its largest divisor (:func:`dr_width`).
"""

from __future__ import annotations

import numpy as np

from sparsecc.lowering.emitter import Emitter
from sparsecc.lowering.gather import emit_tap_gather, tap_rows
from sparsecc.conv_geometry import ConvGeometry, conv_geometry
from sparsecc.lowering.registry import Candidate, LayerToLower, Lowering, register_lowering

FAMILY = "deprune"
DEFAULT_WIDTH = 32


def dr_width(channels: int, width: int) -> int:
    """The sub-GEMM width used in ONNX: ``width`` if it divides M, else its largest divisor of M below it."""
    return max(d for d in range(1, min(width, channels) + 1) if channels % d == 0)


def _kept(view: LayerToLower) -> np.ndarray:
    return view.weight[:, 0] != 0  # [M, kh, kw]


def _geometry(view: LayerToLower) -> ConvGeometry:
    return conv_geometry(view.node, view.in_shape, tuple(view.weight.shape[2:]))


def _out_pixels(view: LayerToLower) -> int:
    return int(view.out_shape[0] * view.out_shape[2] * view.out_shape[3])


def _width(view: LayerToLower) -> int:
    return dr_width(view.weight.shape[0], int(view.options.get("width", DEFAULT_WIDTH)))


def _emit_dw(em: Emitter, x, y, view: LayerToLower, weight: np.ndarray, pads=None) -> None:
    """A depthwise Conv with the layer's attributes, explicit pads and ``weight``."""
    attrs = {k: v for k, v in view.node.attrs.items() if k not in ("kernel_shape", "pads", "auto_pad")}
    attrs["pads"] = list(pads if pads is not None else _geometry(view).pads)
    attrs["kernel_shape"] = list(weight.shape[2:])
    inputs = [x, em.const("weight", weight)] + ([em.own(view.bias)] if view.bias is not None else [])
    em.node("Conv", inputs, [y], "dw", **attrs)


def _plain(view: LayerToLower) -> Candidate | str:
    if view.in_shape is None or view.out_shape is None:
        return "input/output shape unknown"
    return Candidate("", lambda em, x, y: _emit_dw(em, x, y, view, view.weight),
                     _out_pixels(view) * int(np.prod(view.weight.shape)), 0, 1)


def _crop_box(view: LayerToLower) -> tuple[int, int, int, int]:
    used = _kept(view).any(axis=0)
    rows, cols = np.flatnonzero(used.any(axis=1)), np.flatnonzero(used.any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def _crop_pads(view: LayerToLower) -> list[int]:
    kh, kw = view.weight.shape[2:]
    i0, i1, j0, j1 = _crop_box(view)
    geometry = _geometry(view)
    (top, left, bottom, right), (dh, dwd) = geometry.pads, geometry.dilations
    return [top - i0 * dh, left - j0 * dwd, bottom - (kh - 1 - i1) * dh, right - (kw - 1 - j1) * dwd]


def _kernel_crop(view: LayerToLower) -> Candidate | str:
    if not _kept(view).any():
        return "every tap is pruned"
    i0, i1, j0, j1 = _crop_box(view)
    kh, kw = view.weight.shape[2:]
    if (i0, j0, i1, j1) == (0, 0, kh - 1, kw - 1):
        return "some channel keeps a tap in every kernel row and column"
    pads = _crop_pads(view)
    if min(pads) < 0:
        return "cropping would need negative padding"
    cropped = np.ascontiguousarray(view.weight[:, :, i0:i1 + 1, j0:j1 + 1])
    return Candidate("", lambda em, x, y: _emit_dw(em, x, y, view, cropped, pads),
                     _out_pixels(view) * int(np.prod(cropped.shape)), 0, 1)


def _block_diagonal(view: LayerToLower) -> np.ndarray:
    m, _, kh, kw = view.weight.shape
    w = _width(view)
    out = np.zeros((m, w, kh, kw), view.weight.dtype)
    out[np.arange(m), np.arange(m) % w] = view.weight[:, 0]
    return out


def _why_not_dr(view: LayerToLower) -> str | None:
    if _width(view) == 1:
        return f"no sub-GEMM width above 1 divides {view.weight.shape[0]} channels"
    if view.weight.shape[2] * view.weight.shape[3] == 1:
        return "1x1 depthwise: nothing for DR to gather"
    return None


def _dr_grouped(view: LayerToLower) -> Candidate | str:
    reason = _why_not_dr(view)
    if reason:
        return reason
    weight = _block_diagonal(view)
    m = weight.shape[0]

    def emit(em: Emitter, x, y) -> None:
        attrs = {k: v for k, v in view.node.attrs.items() if k not in ("group", "pads", "auto_pad", "kernel_shape")}
        inputs = [x, em.const("dr_weight", weight)] + ([em.own(view.bias)] if view.bias is not None else [])
        em.node("Conv", inputs, [y], "dr", group=m // weight.shape[1], pads=list(_geometry(view).pads),
                kernel_shape=list(weight.shape[2:]), **attrs)

    return Candidate("", emit, _out_pixels(view) * int(np.prod(weight.shape)), 0, 1)


def _dr_table(view: LayerToLower) -> np.ndarray:
    """The kept taps of each sub-GEMM as tap-gather rows: group g keeps local channel c at tap (i, j)."""
    m, _, kh, kw = view.weight.shape
    w = _width(view)
    return tap_rows(_kept(view).reshape(m // w, w, kh, kw))


def _dr_compact(view: LayerToLower) -> Candidate | str:
    reason = _why_not_dr(view) or (None if _kept(view).any() else "every tap is pruned")
    if reason:
        return reason
    weight, table, geometry = _block_diagonal(view), _dr_table(view), _geometry(view)
    m, _, kh, kw = view.weight.shape
    k = table.shape[0] * table.shape[1]
    pixels = _out_pixels(view)
    batch, _, height, width = view.in_shape
    # the Gather copies K' input planes; the one-hot Conv writes K' output planes
    copied = batch * k * height * width + pixels * k
    return Candidate("", lambda em, x, y: emit_tap_gather(em, x, y, weight, table, view.bias, geometry),
                     pixels * (m * table.shape[1] + k * kh * kw), copied, 3)


# Analytic calibration (ONNX Runtime CPU, 2 threads): depthwise convs are memory bound, ~60 ps per
# MAC measured on EfficientNet-B0's layers; the GEMM-like DR convs run ~17-20 ps per MAC.
DEPTHWISE = register_lowering(Lowering(
    "depthwise", FAMILY, frozenset({"Conv"}), _plain, 60e-12, "the plain depthwise Conv, zeros included"))
KERNEL_CROP = register_lowering(Lowering(
    "kernel-crop", FAMILY, frozenset({"Conv"}), _kernel_crop, 60e-12,
    "depthwise Conv with the kernel cropped to the taps some channel keeps (pads adjusted)"))
DR_GROUPED = register_lowering(Lowering(
    "dr-grouped", FAMILY, frozenset({"Conv"}), _dr_grouped, 20e-12,
    "Diagonal-wise Refactorization: grouped Conv with block-diagonal weights (M/width sub-GEMMs)"))
DR_COMPACT = register_lowering(Lowering(
    "dr-compact", FAMILY, frozenset({"Conv"}), _dr_compact, 17e-12,
    "DR after pruning: Gather of kept tap planes + one-hot depthwise Conv + grouped 1x1 Conv"))

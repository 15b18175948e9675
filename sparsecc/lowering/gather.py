"""The group-wise lowerings: pruned im2col rows or input features skipped by a Gather.

- ``channel-gather``: input channels (or features) with every group pruned are dropped: a Gather
  of the kept channels feeds a smaller Conv/Gemm/MatMul with the same attributes (features are
  gathered between two Transposes, as rows: ONNX Runtime gathers a last axis element by element).
- ``tap-gather`` (Conv with a kernel larger than 1x1): the paper's transposition (section 4.2).
  The im2col input is built tap-major as whole planes, so skipped columns of the im2col matrix
  become skipped rows: one Gather copies each input channel plane once per kept tap of that
  channel, one depthwise Conv with one-hot kernels (the layer's padding, stride and dilation)
  shifts each copy to its tap, and one 1x1 Conv with K' = kept groups (padded to a multiple of 8)
  computes the layer. ONNX Runtime runs both Convs in its blocked NCHWc layout.

Also here: :func:`dense_candidate`, the layer as it is, which every choice is measured against.
"""

from __future__ import annotations

import numpy as np

from sparsecc.lowering.emitter import Emitter, emit_conv, emit_gather, emit_gather_features, emit_gemm
from sparsecc.conv_geometry import ConvGeometry, conv_geometry
from sparsecc.lowering.registry import Candidate, LayerToLower, Lowering, register_lowering
from sparsecc.plan import gemm_weight_kn

FAMILY = "groupwise"


def conv_kept_rows(weight: np.ndarray, group: int) -> np.ndarray:
    """[groups, C_in/groups, *kernel]: whether any output channel of the group reads that im2col row
    (a Conv of any spatial rank: Conv1d [.., k], Conv2d [.., kh, kw], Conv3d [.., kd, kh, kw])."""
    c_out, c_in_g = weight.shape[:2]
    return np.any(weight.reshape(group, c_out // group, c_in_g, *weight.shape[2:]) != 0, axis=1)


def _conv_out_elements(view: LayerToLower) -> int:
    """Output elements of a Conv layer, from its known output shape (any spatial rank)."""
    return int(np.prod(view.out_shape))


def gemm_kept_features(layer, weight: np.ndarray) -> np.ndarray:
    """[K]: whether any output of a Gemm/MatMul reads that input feature (a row of W[K, N] with a non-zero)."""
    return np.any(gemm_weight_kn(layer, weight) != 0, axis=1)


def dense_candidate(view: LayerToLower) -> Candidate:
    """The layer as it is (re-emitted with its own weight)."""
    node, weight = view.node, view.weight
    if node.op == "Conv":
        return Candidate("dense", lambda em, x, y: emit_conv(em, x, y, node, weight, view.bias),
                         _conv_out_elements(view) * int(np.prod(weight.shape[1:])), 0, 1)
    k, n = gemm_weight_kn(view.layer, weight).shape
    rows = int(np.prod(view.in_shape[:-1])) if view.in_shape else 1
    return Candidate("dense", lambda em, x, y: emit_gemm(em, x, y, node, weight), rows * k * n, 0, 1)


def _channel_gather(view: LayerToLower) -> Candidate | str:
    return _conv_channel_gather(view) if view.node.op == "Conv" else _gemm_feature_gather(view)


def _conv_channel_gather(view: LayerToLower) -> Candidate | str:
    node, weight, in_shape, group = view.node, view.weight, view.in_shape, view.layer.group
    c_out, c_in_g = weight.shape[:2]
    taps = int(np.prod(weight.shape[2:]))
    used = conv_kept_rows(weight, group).reshape(group, c_in_g, -1).any(axis=2)  # [g, C/g]: read by a kept tap
    counts = used.sum(axis=1)
    if used.all():
        return "every input channel is read by some kept group"
    if not np.all(counts == counts[0]):
        return f"the conv groups keep unequal channel counts {counts.tolist()}"
    channels = np.concatenate([gi * c_in_g + np.flatnonzero(used[gi]) for gi in range(group)])
    local = [np.flatnonzero(used[gi]) for gi in range(group)]
    small = np.concatenate([weight[gi * (c_out // group):(gi + 1) * (c_out // group)][:, local[gi]]
                            for gi in range(group)])
    copied = in_shape[0] * channels.size * int(np.prod(in_shape[2:]))
    return Candidate("channel-gather",
                     lambda em, x, y: emit_conv(em, emit_gather(em, x, channels, 1, "channels"), y, node, small,
                                                view.bias),
                     _conv_out_elements(view) * int(counts[0]) * taps, copied, 2)


def _gemm_feature_gather(view: LayerToLower) -> Candidate | str:
    node, weight, in_shape = view.node, view.weight, view.in_shape
    kn = gemm_weight_kn(view.layer, weight)
    used = gemm_kept_features(view.layer, weight)
    if used.all():
        return "no all-zero input feature"
    rows = int(np.prod(in_shape[:-1])) if in_shape else 1
    k, n = kn.shape
    features = np.flatnonzero(used)
    small = weight[:, features] if view.layer.trans_b else weight[features]
    rank = len(in_shape) if in_shape else (2 if node.op == "Gemm" else None)
    return Candidate("channel-gather",
                     lambda em, x, y: emit_gemm(em, emit_gather_features(em, x, features, rank), y, node, small),
                     rows * features.size * n, rows * (k + 2 * features.size), 4)


def _tap_gather(view: LayerToLower) -> Candidate | str:
    weight, in_shape = view.weight, view.in_shape
    if weight.ndim != 4:
        return f"{weight.ndim - 2}-D convolution: tap-gather emits 2-D Convs (channel-gather covers any rank)"
    c_out, c_in_g, kh, kw = weight.shape
    if kh * kw == 1:
        return "1x1 kernel: there are no taps to gather (channel-gather covers it)"
    table = tap_rows(conv_kept_rows(weight, view.layer.group))
    geometry = conv_geometry(view.node, in_shape, (kh, kw))
    batch = in_shape[0]
    out_elems = batch * c_out * geometry.out_hw[0] * geometry.out_hw[1]
    k = table.shape[0] * table.shape[1]
    out_planes = batch * k * geometry.out_hw[0] * geometry.out_hw[1]
    # the Gather copies K' input planes; ONNX Runtime reorders them to NCHWc
    copied = batch * k * in_shape[2] * in_shape[3] + out_planes
    return Candidate("tap-gather", lambda em, x, y: emit_tap_gather(em, x, y, weight, table, view.bias, geometry),
                     out_elems * table.shape[1] + out_planes * kh * kw, copied, 3)


def tap_rows(rows: np.ndarray, block: int = 8) -> np.ndarray:
    """The im2col rows each conv group keeps: [groups, K'/groups, 3] of (channel in the group, i, j).

    ``rows[g, c, i, j]`` says whether group g keeps channel c at tap (i, j). Rows are channel-major,
    so the Gather reads the input planes in order. Groups are padded with (-1, -1, -1) zero rows to
    one count, and K' to a multiple of ``block``: a grouped 1x1 Conv needs equal counts per group,
    and ONNX Runtime runs a Conv in its blocked NCHWc layout only when its channel count is a
    multiple of 8 (with K' = 1151 the one-hot Conv ran 6x slower, in plain NCHW).
    """
    group = rows.shape[0]
    kept = [np.argwhere(rows[gi]) for gi in range(group)]
    step = block // np.gcd(group, block)
    k_g = -(-max(len(k) for k in kept) // step) * step
    table = np.full((group, k_g, 3), -1, np.int64)
    for gi, k in enumerate(kept):
        table[gi, :len(k)] = k
    return table


def emit_tap_gather(em: Emitter, x, y, weight: np.ndarray, table: np.ndarray, bias, geometry: ConvGeometry) -> None:
    """Im2col of the kept rows as a Gather and a one-hot depthwise Conv, then one (grouped) 1x1 Conv.

    The Gather copies channel plane c once for each kept tap (i, j) of c; a depthwise Conv with the
    layer's padding, stride and dilation and a kernel that is 1 at (i, j) and 0 elsewhere shifts
    each copy to its tap, so its output is the im2col matrix of the kept rows, [K', Ho, Wo] (the
    paper's transposition, section 4.2: skipped columns become skipped contiguous rows). Both Convs
    run in ONNX Runtime's NCHWc layout with no reorder between them; on the VGG-16 conv this beat a
    Pad, a Gather and a Slice per tap and a Concat by 15-25%, and on every ResNet-18/VGG-16 layer.
    ``table`` comes from :func:`tap_rows`; its padding rows get a zero kernel and zero weights.
    """
    c_out, c_in_g, kh, kw = weight.shape
    group, k_g, _ = table.shape
    co_g = c_out // group
    valid = table[..., 0] >= 0
    c, i, j = (np.where(valid, table[..., a], 0) for a in range(3))  # padding rows read (0, 0, 0)
    channels = (np.arange(group)[:, None] * c_in_g + c).ravel()
    onehot = np.zeros((group * k_g, 1, kh, kw), weight.dtype)
    onehot[np.flatnonzero(valid), 0, i[valid], j[valid]] = 1.0
    small = np.zeros((c_out, k_g, 1, 1), weight.dtype)
    for gi in range(group):
        out = slice(gi * co_g, (gi + 1) * co_g)
        small[out, :, 0, 0] = np.where(valid[gi], weight[out, c[gi], i[gi], j[gi]], 0.0)
    planes = emit_gather(em, x, channels, 1, "tap_planes")
    im2col = em.var("im2col")
    em.node("Conv", [planes, em.const("onehot", onehot)], [im2col], "taps", group=group * k_g,
            kernel_shape=[kh, kw], pads=list(geometry.pads), strides=list(geometry.strides),
            dilations=list(geometry.dilations))
    inputs = [im2col, em.const("weight", small)] + ([em.own(bias)] if bias is not None else [])
    em.node("Conv", inputs, [y], "gemm_1x1", group=group, kernel_shape=[1, 1])


# Calibrated on ONNX Runtime 1.31 CPU, 2 threads (Xeon 2.5 GHz; tools/bench_groupwise.py profiles):
# a 3x3 Conv runs ~20 ps per MAC, a 1x1 NCHWc Conv ~17 ps. A tap-gather counts its one-hot
# depthwise Conv (kh x kw MACs per im2col element) as MACs.
CHANNEL_GATHER = register_lowering(Lowering(
    "channel-gather", FAMILY, frozenset({"Conv", "Gemm", "MatMul"}), _channel_gather, 20e-12,
    "Gather of the kept input channels/features + the same layer, smaller"))
TAP_GATHER = register_lowering(Lowering(
    "tap-gather", FAMILY, frozenset({"Conv"}), _tap_gather, 17e-12,
    "Gather of kept (channel, tap) planes + one-hot depthwise Conv (im2col) + 1x1 Conv"))

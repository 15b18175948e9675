"""2:4 structured sparsity in TensorRT's layout: masks, the check, eligibility (pure numpy).

Sparse tensor cores need, in every 4 consecutive weights along the reduction
dimension, at least 2 zeros. In the ONNX initializers TensorRT reads:

- Conv weight [K, C, R, S]: every 4 consecutive input channels C, for each
  (k, r, s) (axis 1);
- Gemm B: along K, i.e. axis 0 of [K, N] (transB=0) or axis 1 of [N, K] (transB=1);
- MatMul B [K, N]: axis 0.

This is exactly the rule of ``polygraphy inspect sparsity``
(``polygraphy/tools/sparse.py``), which :func:`check_two_four` reproduces.
The paper's original layout (``kernel-width``) groups 4 consecutive weights
of each conv filter in memory order (C, R, S), so a group runs along the
kernel width; it is kept for comparison and for the filter metrics, but
TensorRT does not read it as 2:4.

Masks are boolean arrays shaped like the ONNX initializer, True = kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparsecc.errors import OptionError, ShapeError

__all__ = ["LAYOUTS", "check_layout", "reduction_axis", "to_rows", "top2_sum", "kept_per_group", "two_four_mask",
           "check_two_four", "kept_magnitude", "Eligibility", "eligibility", "SPARSE_WIN_CHANNELS"]

LAYOUTS = ("input-channel", "kernel-width")

SPARSE_WIN_CHANNELS = 256
"""TensorRT's sparse conv kernels tend to beat dense ones only when C_in and C_out are about this or more."""

# polygraphy prunes/checks only these initializer types (FLOAT, FLOAT16, BFLOAT16)
_SPARSE_DTYPES = ("float32", "float16", "bfloat16")


def reduction_axis(op: str, trans_b: bool = False) -> int:
    """The axis of the ONNX weight that TensorRT's 2:4 groups run along (polygraphy's convention)."""
    if op == "Conv":
        return 1
    if op == "Gemm":
        return 1 if trans_b else 0
    if op == "MatMul":
        return 0
    raise OptionError(f"2:4 sparsity applies to Conv, Gemm and MatMul weights, not {op}", where=f"op {op}")


def check_layout(layout: str, where: str = "layout option") -> None:
    """Refuse a 2:4 layout other than those of :data:`LAYOUTS`.

    Args:
        layout: The layout asked for.
        where: The option named in the error. Defaults to "layout option".

    Raises:
        OptionError: ``layout`` is unknown.
    """
    if layout not in LAYOUTS:
        raise OptionError(f"unknown 2:4 layout {layout!r}", where=where,
                          fix=f"use one of {', '.join(LAYOUTS)} (input-channel is TensorRT's)")


def to_rows(weight: np.ndarray, op: str = "Conv", trans_b: bool = False, layout: str = "input-channel"
            ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The weight as [rows, L], 2:4 groups being 4 consecutive elements along L, and the inverse mapping.

    Rows keep the order of the weight's leading axis: for a Conv weight [K, C, R, S] the rows of
    filter k come together (input-channel: one row per (r, s); kernel-width: the whole filter).
    """
    if op == "Conv" and layout == "kernel-width":
        return weight.reshape(weight.shape[0], -1), lambda rows: rows.reshape(weight.shape)
    axis = reduction_axis(op, trans_b)
    moved = np.moveaxis(weight, axis, -1)
    return moved.reshape(-1, weight.shape[axis]), lambda rows: np.moveaxis(rows.reshape(moved.shape), -1, axis)


def top2_sum(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Elementwise sum of the 2 largest of four arrays: the magnitude 2:4 keeps of groups (a, b, c, d).

    A small sorting network (no sort), so the permutation search can call it in its inner loop.
    """
    hi1, lo1, hi2, lo2 = np.maximum(a, b), np.minimum(a, b), np.maximum(c, d), np.minimum(c, d)
    return np.maximum(hi1, hi2) + np.maximum(np.minimum(hi1, hi2), np.maximum(lo1, lo2))


def kept_per_group(magnitudes: np.ndarray) -> np.ndarray:
    """Per group of 4 consecutive elements along the last axis of ``magnitudes`` (|w|, length % 4 == 0):
    the sum of its 2 largest, shaped [..., L / 4]."""
    return top2_sum(*(magnitudes[..., i::4] for i in range(4)))


def _where(op: str, weight_name: str | None) -> str:
    return f"{op} weight '{weight_name}'" if weight_name else f"{op} weight"


def two_four_mask(weight: np.ndarray, op: str = "Conv", trans_b: bool = False, *,
                  layout: str = "input-channel", weight_name: str | None = None) -> np.ndarray:
    """Keep the 2 largest |w| of every 4 consecutive weights along the 2:4 axis.

    Ties keep the earlier element, so the mask is deterministic.

    Args:
        weight: The ONNX initializer values.
        op: "Conv", "Gemm" or "MatMul". Defaults to "Conv".
        trans_b: Gemm's transB. Defaults to False.
        layout: "input-channel" (TensorRT's; for Gemm/MatMul, the reduction K) or
            "kernel-width" (Conv only: the filter in memory order). Defaults to "input-channel".
        weight_name: Named in errors. Defaults to none.

    Returns:
        A boolean mask shaped like ``weight``, True = kept, exactly 2 of every 4.

    Raises:
        ShapeError: The group length is not a multiple of 4.
    """
    check_layout(layout)
    weight = np.asarray(weight)
    rows, back = to_rows(weight, op, trans_b, layout)
    n_rows, length = rows.shape
    if length % 4:
        raise ShapeError(f"the 2:4 groups run along a length of {length}, not a multiple of 4",
                         where=_where(op, weight_name), fix="leave this layer dense (it is not 2:4-eligible)")
    groups = np.abs(rows.astype(np.float64)).reshape(n_rows, length // 4, 4)
    # stable sort: among equal magnitudes the later elements are pruned first
    order = np.argsort(-groups, axis=2, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :2], True, axis=2)
    return np.ascontiguousarray(back(keep.reshape(n_rows, length)))


def check_two_four(weight: np.ndarray, op: str = "Conv", trans_b: bool = False) -> bool:
    """True if ``polygraphy inspect sparsity`` would call this weight sparse.

    Polygraphy's rule: along the axis of :func:`reduction_axis`, every 4
    consecutive elements (for every position of the other axes) have their
    two smallest |w| equal to 0. A weight whose axis length is not a multiple
    of 4, or whose type is not float32/float16/bfloat16, is skipped by
    polygraphy and so is not reported sparse: False here.
    """
    weight = np.asarray(weight)
    if weight.dtype.name not in _SPARSE_DTYPES:
        return False
    axis = reduction_axis(op, trans_b)
    length = weight.shape[axis]
    if length % 4:
        return False
    groups = np.moveaxis(weight, axis, -1).reshape(-1, length // 4, 4)
    return bool(np.all(np.count_nonzero(groups, axis=2) <= 2))


def kept_magnitude(weight: np.ndarray, op: str = "Conv", trans_b: bool = False, *,
                   layout: str = "input-channel") -> float:
    """Sum of |w| that 2:4 pruning keeps (the 2 largest of each 4); the whole sum if not prunable."""
    check_layout(layout)
    rows, _ = to_rows(np.asarray(weight), op, trans_b, layout)
    magnitudes = np.abs(rows.astype(np.float64))
    if magnitudes.shape[1] % 4:
        return float(magnitudes.sum())
    return float(kept_per_group(magnitudes).sum())


@dataclass
class Eligibility:
    """Whether TensorRT can run a layer with 2:4 sparse weights, and why not.

    Attributes:
        eligible: True if the weight can be 2:4 in the chosen layout and TensorRT can use it.
        reason: Why not (empty when eligible).
        note: A caveat for an eligible layer (small channel counts rarely win).
    """

    eligible: bool
    reason: str = ""
    note: str = ""


def eligibility(layer, dtype: np.dtype | str = "float32", layout: str = "input-channel") -> Eligibility:
    """Can this :class:`sparsecc.layers.WeightLayer` be 2:4-pruned for TensorRT?

    Grouped and depthwise convs never run sparse; the 2:4 axis must have a
    length that is a multiple of 4; only floating-point weights are pruned
    (the ONNX graph is cast to FP16/BF16 for the engine).
    """
    check_layout(layout)
    if layer.op == "Conv" and layer.kind in ("depthwise", "grouped"):
        return Eligibility(False, f"{layer.kind} conv (group={layer.group}): TensorRT never runs grouped or "
                                  "depthwise convolutions with sparse weights")
    if np.dtype(dtype).name not in _SPARSE_DTYPES:
        return Eligibility(False, f"weight type {np.dtype(dtype).name}: only float32/float16/bfloat16 "
                                  "initializers are 2:4-pruned")
    if layer.op == "Conv" and layout == "kernel-width":
        length, what = int(np.prod(layer.weight_shape[1:])), "C_in*kh*kw"
    elif layer.op == "Conv":
        length, what = layer.weight_shape[1], "C_in"
    else:
        length, what = layer.k, "the reduction K"
    if length % 4:
        return Eligibility(False, f"{what} = {length} is not a multiple of 4 (2:4 needs whole groups of 4 along "
                                  f"{'the filter' if layout == 'kernel-width' and layer.op == 'Conv' else what})")
    c_in = layer.weight_shape[1] if layer.op == "Conv" else layer.k
    c_out = layer.weight_shape[0] if layer.op == "Conv" else layer.n
    note = ""
    if min(c_in, c_out) < SPARSE_WIN_CHANNELS:
        note = (f"C_in={c_in}, C_out={c_out}: sparse kernels tend to win only with both around "
                f"{SPARSE_WIN_CHANNELS} or more; TensorRT may keep this layer dense")
    return Eligibility(True, note=note)

"""Numpy references of the three plugin operators, registered by op name in sparsecc.plugins.references.

They define what each plugin computes (see :mod:`sparsecc.plugins.ops` for the layouts): the Triton
kernels are tested against them, and verification runs a graph with plugin nodes through them on
the CPU. They compute in float64 and return the input's dtype, so they are the exact answer the
kernels are compared with.
"""

from __future__ import annotations

import numpy as np

from sparsecc.plugins.ops import (DEPTHWISE_SUBGEMM, DW_GROUP, GROUPWISE_CONV, GROUPWISE_LINEAR, SIGNATURES,
                                  ConvGeometry, PluginAttributeError, _check_kept, conv_geometry)
from sparsecc.plugins.references import register_reference

__all__ = ["groupwise_conv", "groupwise_linear", "depthwise_subgemm", "im2col"]


def im2col(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """[N, C * kh * kw, OH * OW] in float64; row c * kh * kw + i * kw + j is tap (i, j) of channel c."""
    top, left, bottom, right = g.pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    cols = np.empty((g.n, g.c, g.kh, g.kw, g.oh, g.ow), dtype=np.float64)
    for i in range(g.kh):
        for j in range(g.kw):
            r0, c0 = i * g.dh, j * g.dw
            cols[:, :, i, j] = xp[:, :, r0:r0 + g.sh * (g.oh - 1) + 1:g.sh, c0:c0 + g.sw * (g.ow - 1) + 1:g.sw]
    return cols.reshape(g.n, g.c * g.kh * g.kw, g.oh * g.ow)


def _kept_array(kept, where: str) -> np.ndarray:
    kept = np.asarray(kept)
    if not np.issubdtype(kept.dtype, np.integer):
        raise PluginAttributeError(f"kept positions must be integers, got {kept.dtype}", where=where,
                                   fix="store the kept list as an int32 initializer")
    return kept.astype(np.int64)


@register_reference(GROUPWISE_CONV, SIGNATURES[GROUPWISE_CONV])
def groupwise_conv(X, Wk, kept, B, kernel_shape, strides, pads, dilations, plugin_namespace=None, aot=None):
    """Y = sum over kept im2col rows k of Wk[:, k] x im2col(X)[k] + B: a Conv with the removed groups' weights 0."""
    where = f"sparsecc::{GROUPWISE_CONV}"
    g = conv_geometry(X.shape, kernel_shape, strides, pads, dilations, where)
    kept = _kept_array(kept, where)
    Wk, B = np.asarray(Wk), np.asarray(B)
    if kept.ndim != 1 or Wk.ndim != 2 or Wk.shape[1] != kept.size or B.shape != (Wk.shape[0],):
        raise PluginAttributeError(f"shapes Wk {Wk.shape}, kept {kept.shape}, B {B.shape} do not fit "
                                   "Wk [Cout, K'], kept [K'], B [Cout]", where=where,
                                   fix="Wk holds one column per kept position")
    _check_kept(kept, g.c * g.kh * g.kw, "kept", where)
    cols = im2col(X, g)[:, kept]                                    # [N, K', P]
    y = np.einsum("ok,nkp->nop", Wk.astype(np.float64), cols) + B.astype(np.float64)[None, :, None]
    return y.reshape(g.n, Wk.shape[0], g.oh, g.ow).astype(X.dtype)


@register_reference(GROUPWISE_LINEAR, SIGNATURES[GROUPWISE_LINEAR])
def groupwise_linear(X, kept, Wk, B, plugin_namespace=None, aot=None):
    """Y = X[..., kept] @ Wk + B: a MatMul whose removed input features have zero weight rows."""
    where = f"sparsecc::{GROUPWISE_LINEAR}"
    kept = _kept_array(kept, where)
    Wk, B = np.asarray(Wk), np.asarray(B)
    if X.ndim < 1 or kept.ndim != 1 or Wk.ndim != 2 or Wk.shape[0] != kept.size or B.shape != (Wk.shape[1],):
        raise PluginAttributeError(f"shapes X {X.shape}, kept {kept.shape}, Wk {Wk.shape}, B {B.shape} do not fit "
                                   "X [..., Kin], kept [K'], Wk [K', Nout], B [Nout]", where=where,
                                   fix="Wk holds one row per kept input feature")
    _check_kept(kept, X.shape[-1], "kept", where)
    y = X.astype(np.float64)[..., kept] @ Wk.astype(np.float64) + B.astype(np.float64)
    return y.astype(X.dtype)


@register_reference(DEPTHWISE_SUBGEMM, SIGNATURES[DEPTHWISE_SUBGEMM])
def depthwise_subgemm(X, Wg, kept, B, kernel_shape, strides, pads, dilations, plugin_namespace=None, aot=None):
    """DEPrune's DR depthwise conv: per group g of 32 channels, Y_g = Wg[g] @ im2col_g(X)[kept[g]] + B_g."""
    where = f"sparsecc::{DEPTHWISE_SUBGEMM}"
    g = conv_geometry(X.shape, kernel_shape, strides, pads, dilations, where)
    kept = _kept_array(kept, where)
    Wg, B = np.asarray(Wg), np.asarray(B)
    groups = -(-g.c // DW_GROUP)
    if (Wg.ndim != 3 or Wg.shape[:2] != (groups, DW_GROUP) or kept.shape != (groups, Wg.shape[2])
            or B.shape != (g.c,)):
        raise PluginAttributeError(f"shapes Wg {Wg.shape}, kept {kept.shape}, B {B.shape} do not fit "
                                   f"Wg [G, {DW_GROUP}, K'], kept [G, K'], B [C] with C = {g.c}, "
                                   f"G = ceil(C / {DW_GROUP}) = {groups}", where=where,
                                   fix="every group has the same K' (BWT); pad short groups with zero-weight columns")
    taps = g.kh * g.kw
    _check_kept(kept, DW_GROUP * taps, "kept", where)
    padded = np.zeros((g.n, groups * DW_GROUP, g.h, g.w), dtype=X.dtype)
    padded[:, :g.c] = X
    cols = im2col(padded, ConvGeometry(g.n, groups * DW_GROUP, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.pads, g.dh, g.dw))
    cols = cols.reshape(g.n, groups, DW_GROUP * taps, g.oh * g.ow)
    gathered = np.take_along_axis(cols, kept[None, :, :, None], axis=2)        # [N, G, K', P]
    y = np.einsum("grk,ngkp->ngrp", Wg.astype(np.float64), gathered).reshape(g.n, groups * DW_GROUP, -1)[:, :g.c]
    y = y + B.astype(np.float64)[None, :, None]
    return y.reshape(g.n, g.c, g.oh, g.ow).astype(X.dtype)

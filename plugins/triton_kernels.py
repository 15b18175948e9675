"""Triton kernels of the sparsecc plugins, and Python launchers for them.

Two kernels serve the three plugins:

* ``kept_k_conv_kernel`` - a convolution as an implicit GEMM over a list of kept K positions. Each
  kept position ``k`` names one (input channel, kernel row, kernel column) of the im2col matrix; the
  kernel gathers that row of the virtual im2col matrix straight from the input while it runs the
  GEMM, so the im2col matrix is never materialised and removed rows cost nothing. The grid's third
  axis runs over channel groups: one group is the group-wise convolution (every output channel
  reads every kept position), ``ceil(C / 32)`` groups of 32 channels is DEPrune's diagonal-wise
  refactored depthwise convolution (each group a 32 x K sub-GEMM, the same K in every group after
  balancing).
* ``kept_k_linear_kernel`` - ``Y = X[:, kept] @ W_kept + B``: the gather of kept input features
  fused into the GEMM's loads.

Kernel parameters are ordered as TensorRT's AOT plugin launch passes them: input pointers, then
int32 scalars, then the output pointer; block sizes are compile-time constants. Every run-time
value is an int32 scalar (an AOT plugin's attributes are not serialised into the engine).

The kernels are plain Python functions wrapped twice: a ``JITFunction`` (compiled for a GPU, or to
PTX for a TensorRT engine) and an ``InterpretedFunction`` (Triton's CPU interpreter, used for CPU
tensors, so the kernels are tested against their numpy references on machines without a GPU).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

__all__ = ["CONV_KERNEL", "LINEAR_KERNEL", "conv_signature", "linear_signature", "launch_kept_k_conv",
           "launch_kept_k_linear", "conv_blocks", "linear_blocks", "CONV_SCALARS", "LINEAR_SCALARS"]

# The int32 scalar arguments, in kernel order (shared with the AOT implementations and the PTX check).
CONV_SCALARS = ("N", "C", "H", "W", "COUT", "COUT_G", "CIN_G", "OH", "OW", "K",
                "KH", "KW", "SH", "SW", "PH", "PW", "DH", "DW")
LINEAR_SCALARS = ("M", "KIN", "K", "NOUT")


def _kept_k_conv(X, Wt, Idx, B,
                 N, C, H, W, COUT, COUT_G, CIN_G, OH, OW, K, KH, KW, SH, SW, PH, PW, DH, DW,
                 Y,
                 BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, ALLOW_TF32: tl.constexpr):
    # grid: (cdiv(COUT_G, BLOCK_M), cdiv(N * OH * OW, BLOCK_P), groups)
    pid_m = tl.program_id(0)
    pid_p = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # output channel within the group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)          # output pixel over (n, oh, ow)
    co = g * COUT_G + offs_m                                   # output channel
    mask_m = (offs_m < COUT_G) & (co < COUT)
    npix = N * OH * OW
    mask_p = offs_p < npix
    n = offs_p // (OH * OW)
    q = offs_p % (OH * OW)
    oh = q // OW
    ow = q % OW
    taps = KH * KW
    acc = tl.full((BLOCK_M, BLOCK_P), 0.0, tl.float32)  # tl.zeros is a @jit helper: not usable by both wrappers
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        kept = tl.load(Idx + g * K + offs_k, mask=mask_k, other=0)   # position in the group's im2col rows
        cin = g * CIN_G + kept // taps
        r = kept % taps
        ki = r // KW
        kj = r % KW
        ih = oh[None, :] * SH - PH + ki[:, None] * DH
        iw = ow[None, :] * SW - PW + kj[:, None] * DW
        inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & (cin[:, None] < C)
        x_off = ((n[None, :].to(tl.int64) * C + cin[:, None]) * H + ih) * W + iw
        x = tl.load(X + x_off, mask=inside & mask_k[:, None] & mask_p[None, :], other=0.0)
        w_off = (g * COUT_G + offs_m[:, None]).to(tl.int64) * K + offs_k[None, :]
        w = tl.load(Wt + w_off, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if ALLOW_TF32:
            acc += tl.dot(w, x.to(w.dtype))
        else:
            acc += tl.dot(w, x.to(w.dtype), input_precision="ieee")
    bias = tl.load(B + co, mask=mask_m, other=0.0).to(tl.float32)
    acc += bias[:, None]
    y_off = ((n[None, :].to(tl.int64) * COUT + co[:, None]) * OH + oh[None, :]) * OW + ow[None, :]
    tl.store(Y + y_off, acc.to(Y.dtype.element_ty), mask=mask_m[:, None] & mask_p[None, :])


def _kept_k_linear(X, Idx, Wt, B,
                   M, KIN, K, NOUT,
                   Y,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ALLOW_TF32: tl.constexpr):
    # grid: (cdiv(M, BLOCK_M), cdiv(NOUT, BLOCK_N))
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < NOUT
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        kept = tl.load(Idx + offs_k, mask=mask_k, other=0)             # kept input feature
        x = tl.load(X + offs_m[:, None].to(tl.int64) * KIN + kept[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(Wt + offs_k[:, None].to(tl.int64) * NOUT + offs_n[None, :],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if ALLOW_TF32:
            acc += tl.dot(x.to(w.dtype), w)
        else:
            acc += tl.dot(x.to(w.dtype), w, input_precision="ieee")
    bias = tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    acc += bias[None, :]
    tl.store(Y + offs_m[:, None].to(tl.int64) * NOUT + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


CONV_KERNEL = JITFunction(_kept_k_conv)
LINEAR_KERNEL = JITFunction(_kept_k_linear)
_CONV_INTERPRETED = InterpretedFunction(_kept_k_conv)
_LINEAR_INTERPRETED = InterpretedFunction(_kept_k_linear)

_TRITON_DTYPES = {"float32": "fp32", "float16": "fp16"}


def conv_signature(dtype: str) -> dict[str, str]:
    """The kernel signature for ``triton.compile(ASTSource(...))``: X, W, Idx, B, int32 scalars, Y."""
    t = _TRITON_DTYPES[dtype]
    sig = {"X": f"*{t}", "Wt": f"*{t}", "Idx": "*i32", "B": f"*{t}"}
    sig.update({name: "i32" for name in CONV_SCALARS})
    sig["Y"] = f"*{t}"
    return sig


def linear_signature(dtype: str) -> dict[str, str]:
    t = _TRITON_DTYPES[dtype]
    sig = {"X": f"*{t}", "Idx": "*i32", "Wt": f"*{t}", "B": f"*{t}"}
    sig.update({name: "i32" for name in LINEAR_SCALARS})
    sig["Y"] = f"*{t}"
    return sig


def conv_blocks(cout_g: int, interpret: bool = False) -> dict[str, int]:
    """Block sizes (tl.dot needs every dimension >= 16). Small under the interpreter, where time is per element."""
    if interpret:
        return {"BLOCK_M": 16 if cout_g <= 16 else 32, "BLOCK_P": 16, "BLOCK_K": 16}
    return {"BLOCK_M": 32 if cout_g <= 32 else 64, "BLOCK_P": 64, "BLOCK_K": 32}


def linear_blocks(interpret: bool = False) -> dict[str, int]:
    if interpret:
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}


def _is_cpu(*tensors) -> bool:
    return all(getattr(t, "device", None) is not None and t.device.type == "cpu" for t in tensors)


def launch_kept_k_conv(x, w, idx, b, y, scalars: dict[str, int], groups: int, allow_tf32: bool = False,
                       blocks: dict[str, int] | None = None) -> None:
    """Run the conv kernel on torch tensors: on the GPU, or under the interpreter for CPU tensors.

    Args:
        x, w, idx, b, y: Input [N, C, H, W], weights [groups, COUT_G, K], kept positions int32
            [groups, K], bias [COUT], output [N, COUT, OH, OW] (written).
        scalars: The int32 values named in ``CONV_SCALARS``.
        groups: Channel groups (1 for the group-wise conv).
        allow_tf32: Let FP32 products use TF32 tensor cores. Defaults to False (IEEE FP32).
        blocks: Block sizes. Defaults to :func:`conv_blocks`.
    """
    interpret = _is_cpu(x, w, idx, b, y)
    blocks = blocks or conv_blocks(scalars["COUT_G"], interpret)
    grid = (triton.cdiv(scalars["COUT_G"], blocks["BLOCK_M"]),
            triton.cdiv(scalars["N"] * scalars["OH"] * scalars["OW"], blocks["BLOCK_P"]), groups)
    kernel = _CONV_INTERPRETED if interpret else CONV_KERNEL
    kernel[grid](x, w, idx, b, *(int(scalars[name]) for name in CONV_SCALARS), y,
                 ALLOW_TF32=bool(allow_tf32), **blocks)


def launch_kept_k_linear(x, idx, w, b, y, scalars: dict[str, int], allow_tf32: bool = False,
                         blocks: dict[str, int] | None = None) -> None:
    """Run the linear kernel: x [M, KIN], idx int32 [K], w [K, NOUT], b [NOUT], y [M, NOUT] (written)."""
    interpret = _is_cpu(x, idx, w, b, y)
    blocks = blocks or linear_blocks(interpret)
    grid = (triton.cdiv(scalars["M"], blocks["BLOCK_M"]), triton.cdiv(scalars["NOUT"], blocks["BLOCK_N"]))
    kernel = _LINEAR_INTERPRETED if interpret else LINEAR_KERNEL
    kernel[grid](x, idx, w, b, *(int(scalars[name]) for name in LINEAR_SCALARS), y,
                 ALLOW_TF32=bool(allow_tf32), **blocks)

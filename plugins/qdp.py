"""TensorRT Quickly Deployable Plugin registrations of the three sparsecc plugins.

``register_plugins()`` defines, for each op ``sparsecc::<op_type>`` (see :mod:`sparsecc.plugins.ops`):

* ``@trtp.register``: the output descriptor (shape expressions from the input shapes and int attributes);
* ``@trtp.autotune``: FP32 or FP16 data tensors (one type per node), int32 kept positions;
* ``@trtp.impl``: the JIT implementation - the Triton kernel launched from Python on TensorRT's stream;
* ``@trtp.aot_impl``: the AOT implementation - the kernel compiled to PTX (hidden Triton parameters
  checked and removed or refused, PTX ISA capped, :mod:`sparsecc.plugins.ptx`), its launch grid as
  ``KernelLaunchParams`` and every run-time value as an int32 ``SymInt32`` in ``SymIntExprs``: AOT
  attributes are not serialised into the engine, so the kernel must get them as arguments. The
  engine then carries the kernel and runs without Python (trtexec, C++).

In ONNX, a node maps to the plugin when its op_type is the plugin name and it has the string attribute
``plugin_namespace`` = "sparsecc"; ``aot`` = 1 selects the AOT implementation. Attributes come from
TensorRT as numpy arrays (int32 for ints lists; an int can be a 1-element array with NumPy 2), so every
value is converted with :func:`sparsecc.plugins.ops.as_ints`.

Importing this module imports tensorrt; import it only where TensorRT is installed.
"""

from __future__ import annotations

import threading
from typing import Tuple, Union

import numpy as np
import numpy.typing as npt
import tensorrt as trt
import tensorrt.plugin as trtp

from sparsecc.plugins import ops
from sparsecc.plugins.ptx import DEFAULT_MAX_PTX, plugin_kernel_ptx

__all__ = ["register_plugins", "registered"]

_LOCK = threading.Lock()
_REGISTERED: dict | None = None
_PTX_CACHE: dict = {}
_I32 = npt.NDArray[np.int32]
_TYPES = "FP32|FP16"


def registered() -> dict | None:
    """The settings the plugins were registered with, or None before :func:`register_plugins`."""
    return _REGISTERED


def _dtype_name(desc) -> str:
    if desc.dtype == trt.float32:
        return "float32"
    if desc.dtype == trt.float16:
        return "float16"
    raise TypeError(f"sparsecc plugins take float32 or float16 data, got {desc.dtype}")


def _arch() -> int:
    """Compute capability of the current device (the engine is built for it), via torch or Polygraphy's CUDA wrapper."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return major * 10 + minor
    except ImportError:
        pass
    import ctypes

    from polygraphy import cuda

    lib = cuda.wrapper().handle
    device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    lib.cudaGetDevice(ctypes.byref(device))
    lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device)  # cudaDevAttrComputeCapabilityMajor
    lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device)  # cudaDevAttrComputeCapabilityMinor
    return major.value * 10 + minor.value


def _ptx(op_type: str, dtype: str, cout_g: int):
    key = (op_type, dtype, cout_g, _REGISTERED["arch"], _REGISTERED["max_ptx_version"], _REGISTERED["hidden"])
    if key not in _PTX_CACHE:
        _PTX_CACHE[key] = plugin_kernel_ptx(op_type, dtype, _REGISTERED["arch"], _REGISTERED["max_ptx_version"],
                                            _REGISTERED["hidden"], cout_g=cout_g)
    return _PTX_CACHE[key]


def _conv_out(desc_x, kernel_shape, strides, pads, dilations):
    """Output spatial shape expressions of a plugin convolution."""
    kh, kw = ops.as_ints(kernel_shape, "kernel_shape", 2)
    sh, sw = ops.as_ints(strides, "strides", 2)
    top, left, bottom, right = ops.as_ints(pads, "pads", 4)
    dh, dw = ops.as_ints(dilations, "dilations", 2)
    oh = (desc_x.shape_expr[2] + (top + bottom - dh * (kh - 1) - 1)) // sh + 1
    ow = (desc_x.shape_expr[3] + (left + right - dw * (kw - 1) - 1)) // sw + 1
    return oh, ow


def _conv_scalars_static(x_shape, cout, cout_g, cin_g, k, kernel_shape, strides, pads, dilations) -> dict:
    g = ops.conv_geometry(x_shape, kernel_shape, strides, pads, dilations)
    return {"N": g.n, "C": g.c, "H": g.h, "W": g.w, "COUT": cout, "COUT_G": cout_g, "CIN_G": cin_g, "OH": g.oh,
            "OW": g.ow, "K": k, "KH": g.kh, "KW": g.kw, "SH": g.sh, "SW": g.sw, "PH": g.pads[0], "PW": g.pads[1],
            "DH": g.dh, "DW": g.dw}


def _conv_aot(op_type, X, W, kept, outputs, kernel_shape, strides, pads, dilations, depthwise: bool):
    from sparsecc.plugins.triton_kernels import CONV_SCALARS, conv_blocks

    kh, kw = ops.as_ints(kernel_shape, "kernel_shape", 2)
    sh, sw = ops.as_ints(strides, "strides", 2)
    top, left, _, _ = ops.as_ints(pads, "pads", 4)
    dh, dw = ops.as_ints(dilations, "dilations", 2)
    y = outputs[0].shape_expr
    x = X.shape_expr
    if depthwise:
        cout, cout_g, cin_g, groups, k = x[1], ops.DW_GROUP, ops.DW_GROUP, W.shape_expr[0], W.shape_expr[2]
    else:
        cout, cout_g, cin_g, groups, k = W.shape_expr[0], W.shape_expr[0], x[1], 1, W.shape_expr[1]
    # cout_g picks the block height at compile time; weights are initializers, so their shape is constant
    cout_g_value = cout_g if isinstance(cout_g, int) else (int(cout_g.constant_value()) if cout_g.is_constant else 64)
    kernel = _ptx(op_type, _dtype_name(X), cout_g_value)
    blocks = conv_blocks(cout_g_value)
    values = {"N": x[0], "C": x[1], "H": x[2], "W": x[3], "COUT": cout, "COUT_G": cout_g, "CIN_G": cin_g,
              "OH": y[2], "OW": y[3], "K": k, "KH": kh, "KW": kw, "SH": sh, "SW": sw, "PH": top, "PW": left,
              "DH": dh, "DW": dw}
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(values[name]) for name in CONV_SCALARS])
    launch = trtp.KernelLaunchParams()
    launch.grid_x = -(-cout_g_value // blocks["BLOCK_M"]) if isinstance(cout_g, int) or cout_g.is_constant \
        else trtp.cdiv(cout_g, blocks["BLOCK_M"])
    launch.grid_y = trtp.cdiv(y[0] * y[2] * y[3], blocks["BLOCK_P"])
    launch.grid_z = groups
    launch.block_x = kernel.block_x
    launch.shared_mem = kernel.shared
    return kernel.name.encode(), kernel.ptx.encode(), launch, extra


def _launch_conv_jit(X, W, kept, B, outputs, stream, kernel_shape, strides, pads, dilations, depthwise: bool):
    import torch

    from sparsecc.plugins.triton_kernels import launch_kept_k_conv

    x_shape = tuple(X.shape)
    if depthwise:
        groups, cout_g, cin_g, k, cout = int(W.shape[0]), ops.DW_GROUP, ops.DW_GROUP, int(W.shape[2]), x_shape[1]
    else:
        groups, cout_g, cin_g, k, cout = 1, int(W.shape[0]), x_shape[1], int(W.shape[1]), int(W.shape[0])
    scalars = _conv_scalars_static(x_shape, cout, cout_g, cin_g, k, kernel_shape, strides, pads, dilations)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        t = [torch.as_tensor(v, device="cuda") for v in (X, W, kept, B, outputs[0])]
        launch_kept_k_conv(t[0], t[1], t[2], t[3], t[4], scalars, groups)


def _register_all() -> None:
    # ---------------------------------------------------------------- GroupwiseConv
    @trtp.register(f"{ops.NAMESPACE}::{ops.GROUPWISE_CONV}")
    def groupwise_conv_desc(X: trtp.TensorDesc, Wk: trtp.TensorDesc, kept: trtp.TensorDesc, B: trtp.TensorDesc,
                            kernel_shape: _I32, strides: _I32, pads: _I32, dilations: _I32) -> trtp.TensorDesc:
        out = X.like()
        oh, ow = _conv_out(X, kernel_shape, strides, pads, dilations)
        out.shape_expr[1] = Wk.shape_expr[0]
        out.shape_expr[2] = oh
        out.shape_expr[3] = ow
        return out

    @trtp.autotune(f"{ops.NAMESPACE}::{ops.GROUPWISE_CONV}")
    def groupwise_conv_autotune(X, Wk, kept, B, outputs):
        return [trtp.AutoTuneCombination(f"{_TYPES}, {_TYPES}, INT32, {_TYPES}, {_TYPES}")]

    @trtp.impl(f"{ops.NAMESPACE}::{ops.GROUPWISE_CONV}")
    def groupwise_conv_impl(X: trtp.Tensor, Wk: trtp.Tensor, kept: trtp.Tensor, B: trtp.Tensor, kernel_shape: _I32,
                            strides: _I32, pads: _I32, dilations: _I32, outputs: Tuple[trtp.Tensor],
                            stream: int) -> None:
        _launch_conv_jit(X, Wk, kept, B, outputs, stream, kernel_shape, strides, pads, dilations, depthwise=False)

    @trtp.aot_impl(f"{ops.NAMESPACE}::{ops.GROUPWISE_CONV}")
    def groupwise_conv_aot(X: trtp.TensorDesc, Wk: trtp.TensorDesc, kept: trtp.TensorDesc, B: trtp.TensorDesc,
                           kernel_shape: _I32, strides: _I32, pads: _I32, dilations: _I32,
                           outputs: Tuple[trtp.TensorDesc], tactic: int
                           ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        return _conv_aot(ops.GROUPWISE_CONV, X, Wk, kept, outputs, kernel_shape, strides, pads, dilations,
                         depthwise=False)

    # ---------------------------------------------------------------- DepthwiseSubGemm
    @trtp.register(f"{ops.NAMESPACE}::{ops.DEPTHWISE_SUBGEMM}")
    def depthwise_subgemm_desc(X: trtp.TensorDesc, Wg: trtp.TensorDesc, kept: trtp.TensorDesc, B: trtp.TensorDesc,
                               kernel_shape: _I32, strides: _I32, pads: _I32, dilations: _I32) -> trtp.TensorDesc:
        out = X.like()
        oh, ow = _conv_out(X, kernel_shape, strides, pads, dilations)
        out.shape_expr[2] = oh
        out.shape_expr[3] = ow
        return out

    @trtp.autotune(f"{ops.NAMESPACE}::{ops.DEPTHWISE_SUBGEMM}")
    def depthwise_subgemm_autotune(X, Wg, kept, B, outputs):
        return [trtp.AutoTuneCombination(f"{_TYPES}, {_TYPES}, INT32, {_TYPES}, {_TYPES}")]

    @trtp.impl(f"{ops.NAMESPACE}::{ops.DEPTHWISE_SUBGEMM}")
    def depthwise_subgemm_impl(X: trtp.Tensor, Wg: trtp.Tensor, kept: trtp.Tensor, B: trtp.Tensor,
                               kernel_shape: _I32, strides: _I32, pads: _I32, dilations: _I32,
                               outputs: Tuple[trtp.Tensor], stream: int) -> None:
        _launch_conv_jit(X, Wg, kept, B, outputs, stream, kernel_shape, strides, pads, dilations, depthwise=True)

    @trtp.aot_impl(f"{ops.NAMESPACE}::{ops.DEPTHWISE_SUBGEMM}")
    def depthwise_subgemm_aot(X: trtp.TensorDesc, Wg: trtp.TensorDesc, kept: trtp.TensorDesc, B: trtp.TensorDesc,
                              kernel_shape: _I32, strides: _I32, pads: _I32, dilations: _I32,
                              outputs: Tuple[trtp.TensorDesc], tactic: int
                              ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        return _conv_aot(ops.DEPTHWISE_SUBGEMM, X, Wg, kept, outputs, kernel_shape, strides, pads, dilations,
                         depthwise=True)

    # ---------------------------------------------------------------- GroupwiseLinear
    @trtp.register(f"{ops.NAMESPACE}::{ops.GROUPWISE_LINEAR}")
    def groupwise_linear_desc(X: trtp.TensorDesc, kept: trtp.TensorDesc, Wk: trtp.TensorDesc,
                              B: trtp.TensorDesc) -> trtp.TensorDesc:
        out = X.like()
        out.shape_expr[X.ndim - 1] = Wk.shape_expr[1]
        return out

    @trtp.autotune(f"{ops.NAMESPACE}::{ops.GROUPWISE_LINEAR}")
    def groupwise_linear_autotune(X, kept, Wk, B, outputs):
        return [trtp.AutoTuneCombination(f"{_TYPES}, INT32, {_TYPES}, {_TYPES}, {_TYPES}")]

    @trtp.impl(f"{ops.NAMESPACE}::{ops.GROUPWISE_LINEAR}")
    def groupwise_linear_impl(X: trtp.Tensor, kept: trtp.Tensor, Wk: trtp.Tensor, B: trtp.Tensor,
                              outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from sparsecc.plugins.triton_kernels import launch_kept_k_linear

        shape = tuple(X.shape)
        m = int(np.prod(shape[:-1], dtype=np.int64))
        scalars = {"M": m, "KIN": shape[-1], "K": int(kept.shape[0]), "NOUT": int(Wk.shape[1])}
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            t = [torch.as_tensor(v, device="cuda") for v in (X, kept, Wk, B, outputs[0])]
            launch_kept_k_linear(t[0].reshape(m, -1), t[1], t[2], t[3], t[4].reshape(m, -1), scalars)

    @trtp.aot_impl(f"{ops.NAMESPACE}::{ops.GROUPWISE_LINEAR}")
    def groupwise_linear_aot(X: trtp.TensorDesc, kept: trtp.TensorDesc, Wk: trtp.TensorDesc, B: trtp.TensorDesc,
                             outputs: Tuple[trtp.TensorDesc], tactic: int
                             ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        from sparsecc.plugins.triton_kernels import LINEAR_SCALARS, linear_blocks

        x = X.shape_expr
        m = x[0]
        for i in range(1, X.ndim - 1):
            m = m * x[i]
        values = {"M": m, "KIN": x[X.ndim - 1], "K": kept.shape_expr[0], "NOUT": Wk.shape_expr[1]}
        kernel = _ptx(ops.GROUPWISE_LINEAR, _dtype_name(X), 0)
        blocks = linear_blocks()
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(values[name]) for name in LINEAR_SCALARS])
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(m, blocks["BLOCK_M"])
        launch.grid_y = trtp.cdiv(Wk.shape_expr[1], blocks["BLOCK_N"])
        launch.block_x = kernel.block_x
        launch.shared_mem = kernel.shared
        return kernel.name.encode(), kernel.ptx.encode(), launch, extra


def register_plugins(arch: int | None = None, max_ptx_version: int = DEFAULT_MAX_PTX, hidden: str = "strip") -> dict:
    """Register the sparsecc plugins with TensorRT (once per process; later calls return the first settings).

    Args:
        arch: Compute capability the AOT kernels are compiled for. Defaults to the current device's.
        max_ptx_version: PTX ISA cap for the AOT kernels (84 = 8.4). Defaults to DEFAULT_MAX_PTX.
        hidden: Triton's hidden kernel parameters: "strip" unused ones or "refuse" any. Defaults to "strip".
    """
    global _REGISTERED
    with _LOCK:
        if _REGISTERED is None:
            _REGISTERED = {"arch": int(arch) if arch else _arch(), "max_ptx_version": int(max_ptx_version),
                           "hidden": hidden, "plugins": [f"{ops.NAMESPACE}::{op}" for op in ops.PLUGIN_OPS],
                           "tensorrt": trt.__version__}
            _register_all()
        return dict(_REGISTERED)

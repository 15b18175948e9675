"""TensorRT Quickly Deployable Plugin registrations of the three sparsecc plugins.

``register_plugins()`` defines, for each op ``sparsecc::<op_type>`` (see :mod:`sparsecc.plugins.ops`):

* ``@trtp.register``: the output descriptor (shape expressions from the input shapes and int attributes,
  with no negative constant: a dimension expression describes a size);
* ``@trtp.autotune``: FP32 or FP16 data tensors (one type per node), int32 kept positions;
* ``@trtp.impl``: the JIT implementation - the Triton kernel launched from Python on TensorRT's stream;
* ``@trtp.aot_impl``: the AOT implementation - the kernel compiled to PTX under its own entry name
  (hidden Triton parameters checked and removed or refused, PTX ISA capped, :mod:`sparsecc.plugins.ptx`),
  its launch grid as ``KernelLaunchParams`` and every run-time value as an int32 ``SymInt32`` in
  ``SymIntExprs``: AOT attributes are not serialised into the engine, so the kernel must get them as
  arguments. The engine then carries the kernel and runs without Python (trtexec, C++). Values that are
  build-time constants and multiples of 16 (the kept count, the output width) are compiled in as
  divisibility hints; FP32 kernels use TF32 tensor cores when the build allows TF32.

TensorRT's plugin layer reads these functions' signatures with ``inspect`` and compares the annotations
with its own classes, so this module must not use ``from __future__ import annotations`` (that would make
every annotation a string). In ONNX, a node maps to the plugin when its op_type is the plugin name and it
has the string attribute ``plugin_namespace`` = "sparsecc"; ``aot`` = 1 selects the AOT implementation.
TensorRT's ONNX parser passes INT and INTS attributes as int32 arrays; every value is converted with
:func:`sparsecc.plugins.ops.as_ints`.

Importing this module imports tensorrt; import it only where TensorRT (or its plugin layer, see
:mod:`sparsecc.plugins.trt_offline`) is installed. Needs TensorRT >= 10.9 (AOT Python plugins).
"""

import re
import threading
from typing import Tuple, Union

import numpy as np
import numpy.typing as npt
import tensorrt as trt
import tensorrt.plugin as trtp

from sparsecc.plugins import ops
from sparsecc.plugins.ops import PluginRegistrationError
from sparsecc.plugins.ptx import DEFAULT_MAX_PTX, plugin_kernel_ptx

__all__ = ["register_plugins", "registered", "MIN_TENSORRT", "conv_output_size"]

MIN_TENSORRT = (10, 9)  # trtp.aot_impl and the ONNX parser's `aot` attribute
_LOCK = threading.Lock()
_STATE = {"registered": False, "error": None}
_SETTINGS: dict = {}
_PTX_CACHE: dict = {}
_I32 = npt.NDArray[np.int32]
_TYPES = "FP32|FP16"
_AotResult = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]
HINT = 16  # the divisibility Triton's hints state


def registered() -> dict | None:
    """The settings in force for AOT builds, or None before a successful :func:`register_plugins`."""
    return dict(_SETTINGS) if _STATE["registered"] else None


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


def _constant(expr) -> int | None:
    """The value of a build-time constant (an int or a constant shape expression), else None."""
    if isinstance(expr, int):
        return expr
    return int(expr.constant_value()) if expr.is_constant else None


def _hints(values: dict, names) -> tuple:
    """The names among ``names`` whose value is a build-time constant multiple of 16."""
    return tuple(n for n in names if (_constant(values[n]) or 0) > 0 and _constant(values[n]) % HINT == 0)


def _ptx(op_type: str, dtype: str, cout_g: int, divisible: tuple):
    s = _SETTINGS
    key = (op_type, dtype, cout_g, divisible, s["arch"], s["max_ptx_version"], s["hidden"], s["tf32"])
    if key not in _PTX_CACHE:
        _PTX_CACHE[key] = plugin_kernel_ptx(op_type, dtype, s["arch"], s["max_ptx_version"], s["hidden"],
                                            cout_g=cout_g, tf32=s["tf32"], divisible=divisible)
    return _PTX_CACHE[key]


def conv_output_size(size, before: int, after: int, kernel: int, stride: int, dilation: int):
    """(size + before + after - dilation * (kernel - 1) - 1) // stride + 1, with no negative constant.

    ``size`` is an int or a shape expression; the padding minus the kernel's span is added when it is
    non-negative and subtracted as a positive constant otherwise.
    """
    grow = before + after - (dilation * (kernel - 1) + 1)
    padded = size + grow if grow >= 0 else size - (-grow)
    return padded // stride + 1


def _conv_out(desc_x, kernel_shape, strides, pads, dilations):
    """Output spatial shape expressions of a plugin convolution."""
    kh, kw = ops.as_ints(kernel_shape, "kernel_shape", 2)
    sh, sw = ops.as_ints(strides, "strides", 2)
    top, left, bottom, right = ops.as_ints(pads, "pads", 4)
    dh, dw = ops.as_ints(dilations, "dilations", 2)
    return (conv_output_size(desc_x.shape_expr[2], top, bottom, kh, sh, dh),
            conv_output_size(desc_x.shape_expr[3], left, right, kw, sw, dw))


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
    cout_g_value = _constant(cout_g) or 64
    values = {"N": x[0], "C": x[1], "H": x[2], "W": x[3], "COUT": cout, "COUT_G": cout_g, "CIN_G": cin_g,
              "OH": y[2], "OW": y[3], "K": k, "KH": kh, "KW": kw, "SH": sh, "SW": sw, "PH": top, "PW": left,
              "DH": dh, "DW": dw}
    kernel = _ptx(op_type, _dtype_name(X), cout_g_value, _hints(values, ("K",)))
    blocks = conv_blocks(cout_g_value)
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(values[name]) for name in CONV_SCALARS])
    launch = trtp.KernelLaunchParams()
    launch.grid_x = -(-_constant(cout_g) // blocks["BLOCK_M"]) if _constant(cout_g) else \
        trtp.cdiv(cout_g, blocks["BLOCK_M"])
    launch.grid_y = trtp.cdiv(y[0] * y[2] * y[3], blocks["BLOCK_P"])
    launch.grid_z = groups
    launch.block_x = kernel.block_x
    launch.shared_mem = kernel.shared
    return kernel.name.encode(), kernel.ptx.encode(), launch, extra


def _linear_aot(X, kept, Wk, outputs):
    from sparsecc.plugins.triton_kernels import LINEAR_SCALARS, linear_blocks

    x = X.shape_expr
    m = x[0]
    for i in range(1, X.ndim - 1):
        m = m * x[i]
    values = {"M": m, "KIN": x[X.ndim - 1], "K": kept.shape_expr[0], "NOUT": Wk.shape_expr[1]}
    kernel = _ptx(ops.GROUPWISE_LINEAR, _dtype_name(X), 0, _hints(values, ("K", "NOUT")))
    blocks = linear_blocks()
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(values[name]) for name in LINEAR_SCALARS])
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(m, blocks["BLOCK_M"])
    launch.grid_y = trtp.cdiv(Wk.shape_expr[1], blocks["BLOCK_N"])
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
        launch_kept_k_conv(t[0], t[1], t[2], t[3], t[4], scalars, groups, allow_tf32=_SETTINGS.get("tf32", False))


def _launch_linear_jit(X, kept, Wk, B, outputs, stream):
    import torch

    from sparsecc.plugins.triton_kernels import launch_kept_k_linear

    shape = tuple(X.shape)
    m = int(np.prod(shape[:-1], dtype=np.int64))
    scalars = {"M": m, "KIN": shape[-1], "K": int(kept.shape[0]), "NOUT": int(Wk.shape[1])}
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        t = [torch.as_tensor(v, device="cuda") for v in (X, kept, Wk, B, outputs[0])]
        launch_kept_k_linear(t[0].reshape(m, -1), t[1], t[2], t[3], t[4].reshape(m, -1), scalars,
                             allow_tf32=_SETTINGS.get("tf32", False))


def _register_conv(op_type: str, depthwise: bool) -> None:
    plugin_id = f"{ops.NAMESPACE}::{op_type}"

    @trtp.register(plugin_id)
    def conv_desc(X: trtp.TensorDesc, W: trtp.TensorDesc, kept: trtp.TensorDesc, B: trtp.TensorDesc,
                  kernel_shape: _I32, strides: _I32, pads: _I32, dilations: _I32) -> trtp.TensorDesc:
        out = X.like()
        oh, ow = _conv_out(X, kernel_shape, strides, pads, dilations)
        if not depthwise:
            out.shape_expr[1] = W.shape_expr[0]
        out.shape_expr[2] = oh
        out.shape_expr[3] = ow
        return out

    @trtp.autotune(plugin_id)
    def conv_autotune(X, W, kept, B, outputs):
        return [trtp.AutoTuneCombination(f"{_TYPES}, {_TYPES}, INT32, {_TYPES}, {_TYPES}")]

    @trtp.impl(plugin_id)
    def conv_impl(X: trtp.Tensor, W: trtp.Tensor, kept: trtp.Tensor, B: trtp.Tensor, kernel_shape: _I32,
                  strides: _I32, pads: _I32, dilations: _I32, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        _launch_conv_jit(X, W, kept, B, outputs, stream, kernel_shape, strides, pads, dilations, depthwise)

    @trtp.aot_impl(plugin_id)
    def conv_aot(X: trtp.TensorDesc, W: trtp.TensorDesc, kept: trtp.TensorDesc, B: trtp.TensorDesc,
                 kernel_shape: _I32, strides: _I32, pads: _I32, dilations: _I32, outputs: Tuple[trtp.TensorDesc],
                 tactic: int) -> _AotResult:
        return _conv_aot(op_type, X, W, kept, outputs, kernel_shape, strides, pads, dilations, depthwise)


def _register_linear() -> None:
    plugin_id = f"{ops.NAMESPACE}::{ops.GROUPWISE_LINEAR}"

    @trtp.register(plugin_id)
    def linear_desc(X: trtp.TensorDesc, kept: trtp.TensorDesc, Wk: trtp.TensorDesc,
                    B: trtp.TensorDesc) -> trtp.TensorDesc:
        out = X.like()
        out.shape_expr[X.ndim - 1] = Wk.shape_expr[1]
        return out

    @trtp.autotune(plugin_id)
    def linear_autotune(X, kept, Wk, B, outputs):
        return [trtp.AutoTuneCombination(f"{_TYPES}, INT32, {_TYPES}, {_TYPES}, {_TYPES}")]

    @trtp.impl(plugin_id)
    def linear_impl(X: trtp.Tensor, kept: trtp.Tensor, Wk: trtp.Tensor, B: trtp.Tensor,
                    outputs: Tuple[trtp.Tensor], stream: int) -> None:
        _launch_linear_jit(X, kept, Wk, B, outputs, stream)

    @trtp.aot_impl(plugin_id)
    def linear_aot(X: trtp.TensorDesc, kept: trtp.TensorDesc, Wk: trtp.TensorDesc, B: trtp.TensorDesc,
                   outputs: Tuple[trtp.TensorDesc], tactic: int) -> _AotResult:
        return _linear_aot(X, kept, Wk, outputs)


def _check_tensorrt() -> None:
    version = str(getattr(trt, "__version__", "0"))
    parsed = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parsed < MIN_TENSORRT or not hasattr(trtp, "aot_impl"):
        raise PluginRegistrationError(
            f"TensorRT {version} cannot host the sparsecc plugins: their AOT implementations need TensorRT >= "
            f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} (tensorrt.plugin.aot_impl, and the ONNX parser's `aot` attribute)",
            where="tensorrt", fix=f"pip install 'tensorrt>={MIN_TENSORRT[0]}.{MIN_TENSORRT[1]}'")


def register_plugins(arch: int | None = None, max_ptx_version: int = DEFAULT_MAX_PTX, hidden: str = "strip",
                     tf32: bool = False) -> dict:
    """Register the sparsecc plugins with TensorRT once per process, and set how later builds compile them.

    A failed registration is never marked done: the error is raised, and raised again by every later
    call (TensorRT's plugin layer cannot take a second definition of a plugin it half registered).

    Args:
        arch: Compute capability the AOT kernels are compiled for. Defaults to the current device's.
        max_ptx_version: PTX ISA cap for the AOT kernels (84 = 8.4). Defaults to DEFAULT_MAX_PTX.
        hidden: Triton's hidden kernel parameters: "strip" unused ones or "refuse" any. Defaults to "strip".
        tf32: FP32 kernels may use TF32 tensor cores (as TensorRT's own layers do with the TF32 builder
            flag). Defaults to False.

    Returns:
        The settings in force (arch, max_ptx_version, hidden, tf32, plugins, tensorrt).

    Raises:
        PluginRegistrationError: TensorRT is too old, or its plugin layer refused a registration.
    """
    if hidden not in ("strip", "refuse"):
        raise ValueError(f"hidden must be 'strip' or 'refuse', got {hidden!r}")
    with _LOCK:
        if _STATE["error"] is not None:
            raise PluginRegistrationError(f"registering the sparsecc plugins failed earlier in this process: "
                                          f"{_STATE['error']}", where="tensorrt.plugin",
                                          fix="fix the first error (above), then start a new process")
        if not _STATE["registered"]:
            try:
                _check_tensorrt()
                _register_conv(ops.GROUPWISE_CONV, depthwise=False)
                _register_linear()
                _register_conv(ops.DEPTHWISE_SUBGEMM, depthwise=True)
            except PluginRegistrationError as err:
                _STATE["error"] = err.what
                raise
            except Exception as err:  # noqa: BLE001 - the plugin layer's own errors, reported with their text
                _STATE["error"] = f"{type(err).__name__}: {err}"
                raise PluginRegistrationError(f"TensorRT {trt.__version__}'s plugin layer refused a sparsecc plugin "
                                              f"({_STATE['error']})", where="tensorrt.plugin",
                                              fix="report this with the TensorRT version; meanwhile build without "
                                                  "the plugin lowerings (--disable-pass lower-tensorrt)") from err
            _STATE["registered"] = True
        _SETTINGS.update({"arch": int(arch) if arch else _SETTINGS.get("arch") or _arch(),
                          "max_ptx_version": int(max_ptx_version), "hidden": hidden, "tf32": bool(tf32),
                          "plugins": [f"{ops.NAMESPACE}::{op}" for op in ops.PLUGIN_OPS],
                          "tensorrt": trt.__version__})
        return dict(_SETTINGS)

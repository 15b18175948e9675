"""Float types by name, and which of several is the lowest precision (what tolerances and engines follow)."""

from __future__ import annotations

import numpy as np

_PRECISION_ORDER = ("bfloat16", "float16", "float32", "float64")  # lowest first
BFLOAT16_EPSILON = 2.0**-7  # bfloat16 is no numpy dtype: 8 bits of significand


def epsilon(name) -> float:
    """Machine epsilon (one unit in the last place at 1.0) of a float type by numpy name or dtype;
    float32's for a name that is no float type."""
    if str(name) == "bfloat16":
        return BFLOAT16_EPSILON
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = np.dtype(np.float32)
    return float(np.finfo(dtype if np.issubdtype(dtype, np.floating) else np.float32).eps)


def lowest_precision(dtypes) -> str:
    """The lowest-precision float type among numpy/ONNX dtype names ("float32" when none is a float)."""
    names = {_dtype_name(d) for d in dtypes}
    return next((name for name in _PRECISION_ORDER if name in names), "float32")


def _dtype_name(dtype) -> str:
    """The numpy name of a numpy dtype or an ONNX element type ("" when it has none)."""
    if dtype is None:
        return ""
    try:
        import onnx

        if isinstance(dtype, int):
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).name
    except (ImportError, KeyError, TypeError):
        return ""
    name = getattr(dtype, "name", None) or str(dtype)
    return "bfloat16" if "bfloat16" in name else name

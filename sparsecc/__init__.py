"""sparsecc: an offline compiler for pruned neural networks.

Turns *where the zeros are* in an ONNX model into *a graph that does less
work*, verifies that the new graph computes what the pruned model computes,
and benchmarks it. ``import sparsecc`` is cheap: it never imports torch or
tensorrt.
"""

from __future__ import annotations

__version__ = "0.1.0"

from sparsecc.errors import SparseccError

__all__ = ["SparseccError", "__version__", "load_model", "inspect_model", "compile_model"]


def __getattr__(name):  # lazy public API keeps `import sparsecc` cheap
    if name == "load_model":
        from sparsecc.model import load_model

        return load_model
    if name == "inspect_model":
        from sparsecc.inspection import inspect_model

        return inspect_model
    if name == "compile_model":
        from sparsecc.compiler import compile_model

        return compile_model
    raise AttributeError(f"module 'sparsecc' has no attribute {name!r}")

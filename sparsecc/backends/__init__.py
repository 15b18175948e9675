"""Backends: ONNX Runtime (default, CPU) and TensorRT (where installed)."""

from __future__ import annotations

from sparsecc.backends.base import Backend, Session, TensorSpec
from sparsecc.errors import BackendUnavailableError, OptionError

__all__ = ["Backend", "Session", "TensorSpec", "get_backend", "BACKENDS"]

# name -> "module:Class", imported lazily so `import sparsecc` never imports tensorrt
BACKENDS = {
    "ort": "sparsecc.backends.ort:OrtBackend",
    "tensorrt": "sparsecc.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type[Backend]:
    import importlib

    if name not in BACKENDS:
        raise OptionError(f"unknown backend '{name}'", fix=f"choose one of: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str = "ort", **options) -> Backend:
    """A ready backend, or BackendUnavailableError saying why it cannot run here."""
    cls = backend_class(name)
    reason = cls.unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"the {name} backend cannot run here: {reason}",
                                      fix="use --backend ort (ONNX Runtime on the CPU), or install what is missing")
    return cls(**options)

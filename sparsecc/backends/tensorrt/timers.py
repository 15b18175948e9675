"""Device time of one engine execution: CUDA events on the runner's stream, via libcudart or torch."""

from __future__ import annotations

import ctypes

__all__ = ["time_with_cudart", "time_with_torch"]


def time_with_cudart(fn, stream_ptr: int) -> float | None:
    """Milliseconds between CUDA events recorded on ``stream_ptr`` around ``fn()``, via libcudart.

    Polygraphy's ``polygraphy.cuda`` has a Stream but no Event; its wrapper's ctypes handle to the
    CUDA runtime (the one TensorRT runs on) provides the five event calls.
    """
    from polygraphy import cuda

    lib = cuda.wrapper().handle
    start, end = ctypes.c_void_p(), ctypes.c_void_p()
    if lib.cudaEventCreate(ctypes.byref(start)) != 0:
        return None
    try:
        if lib.cudaEventCreate(ctypes.byref(end)) != 0:
            return None
        try:
            stream = ctypes.c_void_p(stream_ptr)
            lib.cudaEventRecord(start, stream)
            fn()
            lib.cudaEventRecord(end, stream)
            if lib.cudaEventSynchronize(end) != 0:
                return None
            ms = ctypes.c_float()
            if lib.cudaEventElapsedTime(ctypes.byref(ms), start, end) != 0:
                return None
            return float(ms.value)
        finally:
            lib.cudaEventDestroy(end)
    finally:
        lib.cudaEventDestroy(start)


def time_with_torch(fn, stream_ptr: int) -> float | None:
    """The same measurement with torch.cuda events on the same stream, where torch has CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    stream = torch.cuda.ExternalStream(stream_ptr)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return float(start.elapsed_time(end))


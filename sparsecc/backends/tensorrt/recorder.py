"""The process-wide TensorRT logger that records build and deserialization messages for sparsecc."""

from __future__ import annotations

import contextlib
import threading

__all__ = ["recording_logger"]

_RECORDER = None
_RECORDER_LOCK = threading.Lock()


def recording_logger():
    """The process-wide trt.ILogger that records messages and forwards them to Polygraphy's logger.

    TensorRT treats the first logger it is given as process-global, and Polygraphy's loaders create
    every Builder, OnnxParser and Runtime with ``polygraphy.backend.trt.util.get_trt_logger()``.
    So this one logger is installed once as that logger (wrapping the one Polygraphy had) and
    captures are switched on around each build.
    """
    global _RECORDER
    with _RECORDER_LOCK:
        if _RECORDER is not None:
            return _RECORDER
        import tensorrt as trt
        from polygraphy.backend.trt import util as trt_util

        forward = trt_util.get_trt_logger()

        class RecordingTrtLogger(trt.ILogger):
            def __init__(self, forward_to):
                trt.ILogger.__init__(self)
                self._forward = forward_to
                self._captures: list[list[tuple[int, str]]] = []
                self._lock = threading.Lock()

            def log(self, severity, msg):
                # Called by TensorRT and must not raise.
                try:
                    level = int(severity)
                    if level <= int(trt.ILogger.Severity.INFO) or "(Sparsity)" in msg:
                        with self._lock:
                            for capture in self._captures:
                                capture.append((level, msg))
                    self._forward.log(severity, msg)
                except Exception:  # noqa: BLE001 - a logger must never throw into TensorRT
                    pass

            @contextlib.contextmanager
            def capture(self):
                records: list[tuple[int, str]] = []
                with self._lock:
                    self._captures.append(records)
                try:
                    yield records
                finally:
                    with self._lock:
                        self._captures.remove(records)

        _RECORDER = RecordingTrtLogger(forward)
        trt_util.TRT_LOGGER = _RECORDER
        return _RECORDER


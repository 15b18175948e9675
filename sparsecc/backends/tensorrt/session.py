"""A built TensorRT engine behind an active Polygraphy ``TrtRunner``."""

from __future__ import annotations

import numpy as np

from sparsecc.backends.base import Session, TensorSpec
from sparsecc.backends.tensorrt.errors import TensorRTBuildError
from sparsecc.backends.tensorrt.timers import time_with_cudart, time_with_torch
from sparsecc.errors import ShapeError

__all__ = ["TensorRTSession"]


class TensorRTSession(Session):
    """A built engine behind an active Polygraphy ``TrtRunner`` (activated once, deactivated on close)."""

    def __init__(self, runner, inputs: list[TensorSpec], settings: dict):
        self._runner = runner
        self._inputs = inputs
        self._settings = settings

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def _check_active(self):
        if self._runner is None:
            raise TensorRTBuildError("this TensorRT session is closed", fix="load the model again")

    def _infer(self, feeds, **kwargs):
        from polygraphy.exception import PolygraphyException

        self._check_active()
        try:
            return self._runner.infer(feed_dict=feeds, **kwargs)
        except PolygraphyException as err:
            expected = ", ".join(f"{s.name}: {s.dtype} {s.shape}" for s in self._inputs)
            raise ShapeError(f"the feeds do not fit the engine ({str(err).strip().splitlines()[-1]})",
                             where="tensorrt session",
                             fix=f"feed exactly these inputs: {expected}") from err

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; every engine output, copied to host numpy arrays (Polygraphy reuses its buffers)."""
        outputs = self._infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: np.array(value, copy=True) for name, value in outputs.items()}

    def device_time_ms(self, feeds: dict[str, np.ndarray]) -> float | None:
        """Device time of one engine execution, measured with CUDA events on the runner's stream.

        The inputs are copied to the device first and the outputs stay there, so the time excludes
        host-device copies and host overhead. No warm-up: callers run it several times. None where
        no CUDA event API can be reached.
        """
        from polygraphy import cuda
        from polygraphy.datatype import DataType

        self._check_active()
        stream = self._runner.stream
        device_feeds = {}
        try:
            for name, value in feeds.items():
                value = np.ascontiguousarray(value)
                array = cuda.DeviceArray(shape=value.shape, dtype=DataType.from_dtype(value.dtype))
                array.copy_from(value, stream=stream)
                device_feeds[name] = array
            stream.synchronize()

            def once():
                self._infer(device_feeds, copy_outputs_to_host=False)

            for timer in (time_with_cudart, time_with_torch):
                try:
                    ms = timer(once, stream.ptr)
                except (OSError, AttributeError):
                    ms = None
                if ms is not None:
                    return ms
            return None
        finally:
            for array in device_feeds.values():
                array.free()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> dict:
        return dict(self._settings)


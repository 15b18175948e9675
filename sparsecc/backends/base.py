"""The interface every backend implements.

A backend turns an ONNX model (bytes or a path) into a :class:`Session` that
runs it. ``unavailable_reason()`` says, without raising, why a backend cannot
run here (TensorRT missing, no GPU), so commands and tests can skip with the
precise reason.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # may hold None or strings for dynamic dimensions
    dtype: np.dtype


class Session(abc.ABC):
    """A loaded model ready to run."""

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; return every graph output by name."""

    def device_time_ms(self, feeds: dict[str, np.ndarray]) -> float | None:
        """Device time of one run (CUDA events), or None where the backend has no device clock."""
        return None

    def close(self) -> None:
        """Release resources. Defaults to doing nothing."""

    def describe(self) -> dict:
        """Settings that affect timing, for reports."""
        return {}


class Backend(abc.ABC):
    """Builds sessions for one runtime."""

    name: ClassVar[str] = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None where the backend can run here, else why not (and how to fix it)."""
        return None

    @abc.abstractmethod
    def load(self, model: bytes | str | Path) -> Session:
        """Build a session for a model (serialized ONNX bytes or a path)."""

    def describe(self) -> dict:
        """Backend name, versions and settings, for reports."""
        return {"backend": self.name}

"""The machine and library versions a measurement was taken with (for reports)."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """CPU, core count, Python and the versions of the libraries that affect results."""
    import sys

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    for package in ("sparsecc", "numpy", "onnx", "onnxruntime", "onnx-graphsurgeon", "polygraphy", "torch",
                    "tensorrt"):
        version = _version(package)
        if version:
            info[package] = version
    if "torch" in sys.modules:  # report a GPU only if torch is already loaded (never import it for this)
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info

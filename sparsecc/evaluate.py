"""Top-1 accuracy of an ONNX classifier on a labelled data set, on ONNX Runtime (no torch)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

__all__ = ["accuracy", "evaluate_onnx"]


def accuracy(session, inputs: np.ndarray, labels: np.ndarray,
             report: Callable[[str], None] | None = None) -> float:
    """Top-1 accuracy of a session on (inputs, labels), in batches the model accepts.

    A model with a fixed batch dimension (compiled models are fixed at their compile
    shape) runs in chunks of that size, the last one padded; a dynamic batch runs 64 at a
    time. ``report`` gets a progress line about every 10 seconds on long runs.
    """
    spec = session.inputs[0]
    fixed = isinstance(spec.shape[0], int) and spec.shape[0] > 0
    batch = spec.shape[0] if fixed else 64
    correct, started, last = 0, time.perf_counter(), time.perf_counter()
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        if len(chunk) < batch and fixed:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        logits = next(iter(session.run({spec.name: chunk}).values()))
        predicted = np.argmax(logits[: len(inputs[start:start + batch])], axis=-1)
        correct += int(np.sum(predicted == labels[start:start + batch]))
        if report is not None and time.perf_counter() - last > 10:
            last = time.perf_counter()
            done = min(start + batch, len(inputs))
            report(f"scored {done}/{len(inputs)} images ({last - started:.0f} s)")
    return correct / len(inputs)


def evaluate_onnx(model_path: str | os.PathLike, data: str, threads: int = 2,
                  report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Scores an ONNX classifier on the test split of a data set of :mod:`sparsecc.data`.

    Returns:
        ``{"top1": float, "n": test images, "correct": int, "data": name, "model": path}``.

    Raises:
        OptionError: Unknown data set.
        ModelLoadError: The file is not a model ONNX Runtime can load.
        ShapeError: The model's input does not fit the data set.
    """
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.data import check_input_shape, load_dataset
    from sparsecc.model import load_model

    split = load_dataset(data)
    load_model(model_path)  # one clear error for a missing or broken file
    session = OrtBackend(threads=threads).load(str(model_path))
    check_input_shape(split, session.inputs[0].shape, str(model_path))
    top1 = accuracy(session, split.x_test, split.y_test, report)
    n = int(len(split.y_test))
    return {"top1": top1, "n": n, "correct": int(round(top1 * n)), "data": data, "model": str(model_path)}

"""Top-1 accuracy of an ONNX classifier on a labelled data set, on ONNX Runtime (no torch)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

__all__ = ["accuracy", "evaluate_onnx", "output_fidelity"]


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


def output_fidelity(reference, candidate, inputs: np.ndarray) -> dict[str, Any]:
    """How closely ``candidate`` reproduces ``reference`` on real inputs (e.g. photographs).

    Both are sessions (:class:`~sparsecc.backends.base.Session`) with one input; every
    image runs alone (batch 1, the shape compiled models are fixed at). Top-1 agreement is
    over the last axis of the first output: per image for a classifier [1, classes], per
    position for a sequence [1, T, classes]; a dense map with one channel (a detector's
    probability map) agrees where both sides are on the same side of 0.5.

    Returns:
        ``{"n", "top1_agreement", "positions", "max_abs_error", "max_rel_error",
        "mean_abs_error", "positive_iou"}``; the relative error is max |diff| / max |reference|.
        ``positive_iou`` (probability maps only, else None) is |both above 0.5| / |either above
        0.5| over all images: agreement alone is dominated by the background a map mostly is.
    """
    name_ref, name_cand = reference.inputs[0].name, candidate.inputs[0].name
    agree = positions = both = either = 0
    is_map = False
    worst = scale = total = 0.0
    count = 0
    for image in inputs:
        batch = image[None].astype(np.float32)
        expected = next(iter(reference.run({name_ref: batch}).values()))
        got = next(iter(candidate.run({name_cand: batch}).values()))
        if expected.ndim == 4 and expected.shape[1] == 1:  # probability map
            is_map = True
            same = (expected > 0.5) == (got > 0.5)
            both += int(((expected > 0.5) & (got > 0.5)).sum())
            either += int(((expected > 0.5) | (got > 0.5)).sum())
        else:
            same = np.argmax(expected, axis=-1) == np.argmax(got, axis=-1)
        agree += int(same.sum())
        positions += int(same.size)
        diff = np.abs(got.astype(np.float64) - expected)
        worst = max(worst, float(diff.max()))
        scale = max(scale, float(np.abs(expected).max()))
        total += float(diff.sum())
        count += diff.size
    return {"n": int(len(inputs)), "top1_agreement": agree / positions if positions else None,
            "positions": positions, "max_abs_error": worst, "max_rel_error": worst / scale if scale else worst,
            "mean_abs_error": total / count if count else 0.0,
            "positive_iou": (both / either if either else 1.0) if is_map else None}

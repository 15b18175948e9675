"""ONNX Runtime sessions set up for timing, and whole models or graphs measured against each other.

Timing sessions have a fixed, stated number of intra-op threads, ``session.force_spinning_stop``
and ``session.intra_op.allow_spinning = 0``: with spinning off, an idle worker thread sleeps
instead of burning a core, so the CPU time of the process is the work the run did, and two
sessions in one process do not steal cores from each other.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.measure.runner import MeasureSettings, Measurement, combine, measure, measure_in_blocks

# two whole-model sessions alive at once hold two prepacked copies of the weights: above this,
# the sessions are timed one at a time
ONE_AT_A_TIME_BYTES = 256 * 2**20


def timing_backend(threads: int = 1):
    """An ONNX Runtime CPU backend for timing: ``threads`` intra-op threads, spinning off."""
    from sparsecc.backends.ort import OrtBackend

    return OrtBackend(threads=threads, allow_spinning=False)


def _weight_bytes(item: Any) -> int:
    if isinstance(item, (str, os.PathLike)):
        return os.path.getsize(item)
    graph = item if isinstance(item, gs.Graph) else item.graph
    return sum(t.values.nbytes for t in graph.tensors().values() if isinstance(t, gs.Constant))


def _default_feed(item: Any) -> dict[str, np.ndarray]:
    from sparsecc.model import Model, load_model
    from sparsecc.verify import input_specs, random_feeds

    if isinstance(item, gs.Graph):
        raise ValueError("a gs.Graph has no input shapes to make a feed from: pass feed=")
    model = item if isinstance(item, Model) else load_model(item)
    return random_feeds(input_specs(model), seed=0)[0]


def measure_models(models: Mapping[str, Any], baseline: str, threshold: float | None = None, threads: int = 1,
                   settings: MeasureSettings | None = None, feed: dict[str, np.ndarray] | None = None,
                   one_at_a_time: bool | None = None, replications: int = 1) -> Measurement:
    """Paired timing of ONNX models on ONNX Runtime CPU (spinning off), each against ``baseline``.

    Args:
        models: label -> a :class:`~sparsecc.model.Model`, a ``gs.Graph`` or a path to an .onnx file.
            Graphs are loaded by path from a temporary weight file, with their own arrays given
            to ONNX Runtime (no serialised copy).
        baseline: The label the others are compared with.
        threshold: The speedup each candidate is judged against; None times a fixed
            ``settings.min_pairs`` pairs. Defaults to None.
        threads: Intra-op threads. Defaults to 1 (CPU time is then steady under load).
        settings: See :class:`MeasureSettings`. Defaults to ``MeasureSettings()``.
        feed: The input feed of every model. Defaults to seeded random inputs of the baseline.
        one_at_a_time: Keep one session alive at a time (:func:`measure_in_blocks`). Defaults to
            doing so when the models' weights add up to more than 256 MB.
        replications: Independent measurements, each with new sessions, combined so that the
            interval takes in how much they differ (:func:`~sparsecc.measure.runner.combine`);
            each gets ``settings.budget_s / replications``. Defaults to 1.
    """
    if replications > 1:
        from dataclasses import replace

        settings = settings or MeasureSettings()
        each = replace(settings, budget_s=settings.budget_s / replications)
        return combine([measure_models(models, baseline, threshold, threads, each, feed, one_at_a_time)
                        for _ in range(replications)], settings)
    from sparsecc.session_files import SessionFiles

    backend = timing_backend(threads)
    feed = feed if feed is not None else _default_feed(models[baseline])
    if one_at_a_time is None:
        one_at_a_time = sum(_weight_bytes(m) for m in models.values()) > ONE_AT_A_TIME_BYTES
    with SessionFiles() as files:
        sources = {}
        for label, item in models.items():
            if isinstance(item, (str, os.PathLike)):
                sources[label] = (Path(item), None)
            else:
                path = files.write(item if isinstance(item, gs.Graph) else item.graph)
                sources[label] = (path, files.initializers(path))
        common = {"baseline": baseline, "threshold": threshold, "threads": threads, "spinning": False,
                  "settings": settings}
        if one_at_a_time:
            @contextmanager
            def opened(path, arrays):
                session = backend.load(path, arrays)
                try:
                    yield lambda: session.run(feed)
                finally:
                    session.close()
                    del session

            openers = {label: (lambda p=path, a=arrays: opened(p, a)) for label, (path, arrays) in sources.items()}
            return measure_in_blocks(openers, **common)
        sessions = {label: backend.load(path, arrays) for label, (path, arrays) in sources.items()}
        try:
            return measure({label: (lambda s=s: s.run(feed)) for label, s in sessions.items()}, **common)
        finally:
            for session in sessions.values():
                session.close()
            sessions.clear()

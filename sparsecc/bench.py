"""Latency measurement per BENCHMARKS.md.

``bench_models`` times a baseline and a candidate paired and interleaved in one process
(:mod:`sparsecc.measure`: ONNX Runtime's spinning off, wall clock and CPU time per run), and
reports the speedup as the paired median with its 90% interval by wall clock (what users see)
and by CPU time (work done, steady under load), the load average before and after, and plain
words when the machine was too busy to trust a figure. ``ideal`` (the MAC ratio) is printed
beside it so the efficiency of a rewrite can be read off. ``time_interleaved`` is the plain
wall-clock timer some tools still use.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sparsecc.backends.base import Session

DEFAULT_RUNS = 20
DEFAULT_WARMUP = 5
# a pair on ONNX Runtime: the rounds split over up to this many sets of new sessions, at least this many each
BENCH_REPLICATIONS = 3
MIN_RUNS_PER_REPLICATION = 10


@dataclass
class Timing:
    label: str
    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "median_ms": round(self.median_ms, 4), "min_ms": round(self.min_ms, 4),
                "runs": len(self.times_ms)}


def time_interleaved(sessions: dict[str, Session], feeds: dict[str, dict], warmup: int = DEFAULT_WARMUP,
                     runs: int = DEFAULT_RUNS, progress: Callable[[int, int], None] | None = None
                     ) -> dict[str, Timing]:
    """Time several sessions interleaved, one run each per round.

    Args:
        sessions: label -> session.
        feeds: label -> input feed for that session.
        warmup: Untimed rounds first. Defaults to 5.
        runs: Timed rounds. Defaults to 20.
        progress: Called with (round, runs) after each timed round. Defaults to none.
    """
    for _ in range(warmup):
        for label, session in sessions.items():
            session.run(feeds[label])
    timings = {label: Timing(label) for label in sessions}
    for index in range(runs):
        # alternate the order each round so neither variant always runs right after the other
        order = list(sessions) if index % 2 == 0 else list(reversed(list(sessions)))
        for label in order:
            start = time.perf_counter()
            sessions[label].run(feeds[label])
            timings[label].times_ms.append((time.perf_counter() - start) * 1e3)
        if progress:
            progress(index + 1, runs)
    return timings


def _weights_as_initializers(model):
    """A copy whose Constant-node weights are initializers, so that they are counted as a compile sees
    them (its canonicalisation does the same); the timed session runs the file itself."""
    from sparsecc.graphutil import constants_to_initializers

    copy = model.copy()
    constants_to_initializers(copy.graph)
    return copy


def bench_models(paths: list[str | Path], backend: str = "ort", threads: int = 2,
                 shapes: dict[str, tuple[int, ...]] | None = None, runs: int = DEFAULT_RUNS,
                 warmup: int = DEFAULT_WARMUP, progress: Callable[[str], None] | None = None,
                 options: dict[str, Any] | None = None, inputs=None) -> dict[str, Any]:
    """Benchmark one model, or pair two (the first is the baseline) interleaved.

    Args:
        paths: One model, or the baseline and the candidate.
        backend: A backend serving ``bench`` (:func:`sparsecc.backends.backend_names`). Defaults to "ort".
        threads: Intra-op threads, for backends that take them. Defaults to 2.
        shapes: Concrete shapes of dynamic inputs. Defaults to none.
        runs: Timed rounds. Defaults to 20.
        warmup: Untimed rounds first. Defaults to 5.
        progress: Called with a progress line now and then. Defaults to none.
        options: The backend's options (:func:`sparsecc.backends.backend_options`). Defaults to
            ``threads`` (and ``shapes``) where the backend declares them.
        inputs: The data and value ranges to feed (:class:`sparsecc.feeds.FeedOptions`); given data
            fixes the shape of its input. Defaults to seeded random values (realistic ones for
            integer inputs).

    Returns a dict with per-model timing (wall-clock median and minimum, CPU-time median), MACs
    and parameters, the load, and for a pair the speedup with its interval by wall clock and by
    CPU time, the ideal (MAC ratio), the efficiency, and notes on how far to trust them.
    """
    from sparsecc.backends import backend_options, get_backend
    from sparsecc.counting import count_work
    from sparsecc.environment import environment
    from sparsecc.measure import MeasureSettings, measure
    from sparsecc.measure.runner import combine
    from sparsecc.measure.readout import readout
    from sparsecc.model import load_model
    from sparsecc.verify import input_specs, random_feeds

    if inputs is not None:
        shapes = {**{name: tuple(a.shape) for name, a in inputs.data.items()}, **(shapes or {})}
    if options is None:
        options = backend_options(backend, {"threads": threads}, "bench", shapes=shapes)
    if backend == "ort":
        # spinning off: idle worker threads sleep, so CPU time is work done and two sessions share the cores
        options = {**options, "allow_spinning": False}
        threads = int(options.get("threads") or threads)
    else:
        threads = 1  # what the trust rule reads: the host thread that waits on the device
    engine = get_backend(backend, **options)
    labels = ["baseline", "candidate"][: len(paths)] if len(paths) == 2 else ["model"]
    models, feeds, info = {}, {}, {}
    for label, path in zip(labels, paths):
        model = load_model(path, shapes)
        model.feeds = inputs
        models[label] = model
    if len(paths) == 2:
        check_same_interface(models["baseline"], models["candidate"])
    for label in labels:
        info[label] = count_work(_weights_as_initializers(models[label]))
        feeds[label] = random_feeds(input_specs(models[label]), seed=0)[0]
    # a pair on ONNX Runtime is timed in replications, each with new sessions, combined by a two-level
    # bootstrap: one pair of sessions agrees with itself more closely than two benches minutes apart do
    replications = 1
    if backend == "ort" and len(paths) == 2:
        replications = min(BENCH_REPLICATIONS, max(1, runs // MIN_RUNS_PER_REPLICATION))
    each = -(-runs // replications)
    if progress:
        progress(f"timing {each * replications} paired rounds ({replications} x {each} with new sessions) after "
                 f"{warmup} warm-up" if replications > 1 else f"timing {runs} paired rounds after {warmup} warm-up")
    measurements, device_ms = [], {}
    for replication in range(replications):
        sessions = {label: engine.load(Path(path)) for label, path in zip(labels, paths)}
        try:
            runners = {label: (lambda s=sessions[label], f=feeds[label]: s.run(f)) for label in labels}
            measurements.append(measure(runners, labels[0], None, threads, spinning=False,
                                        settings=MeasureSettings.fixed(each, warmup)))
            if replication == replications - 1:
                device_ms = _device_times(sessions, feeds, each)
        finally:
            for session in sessions.values():
                session.close()
    measured = combine(measurements)  # a single replication comes back unchanged
    result: dict[str, Any] = {
        "backend": engine.describe(), "environment": environment(), "runs": each * replications,
        "replications": replications, "warmup": warmup,
        "clock": "host wall clock and process CPU time around each run; baseline and candidate paired and "
                 "interleaved (order alternating), speedup = median of per-pair ratios with a 90% bootstrap interval"
                 + (f" over {replications} replications with new sessions (two-level bootstrap)" if replications > 1
                    else ""),
        "load": measured.load.to_dict(),
        "models": {label: {"path": str(path), "macs": info[label].macs, "params": info[label].weight_params,
                           **_timing(label, measured)} for label, path in zip(labels, paths)},
    }
    for label, ms in device_ms.items():
        result["models"][label]["device_median_ms"] = ms
    if device_ms:
        result["device_clock"] = "CUDA events around one engine execution (inputs already on the device), median of runs"
    if len(paths) == 2:
        base, cand = result["models"]["baseline"], result["models"]["candidate"]
        ideal = base["macs"] / cand["macs"] if cand["macs"] else float("inf")
        figures = readout(measured.evidence["candidate"], ideal)
        result.update(figures, ideal=round(ideal, 4), efficiency=round(figures["speedup"] / ideal, 4),
                      ratio_of_medians=round(base["median_ms"] / cand["median_ms"], 4))
    return result


def _device_times(sessions, feeds, runs: int) -> dict[str, float]:
    """Device time (CUDA events) where the backend has a device clock, beside the host wall-clock."""
    device_ms = {}
    for label, session in sessions.items():
        samples = [session.device_time_ms(feeds[label]) for _ in range(runs)]
        if all(s is not None for s in samples):
            device_ms[label] = round(statistics.median(samples), 4)
    return device_ms


def _timing(label: str, measured) -> dict[str, Any]:
    wall, cpu = measured.wall_ms[label], measured.cpu_ms[label]
    return {"label": label, "median_ms": round(statistics.median(wall), 4), "min_ms": round(min(wall), 4),
            "cpu_median_ms": round(statistics.median(cpu), 4), "runs": len(wall)}


def interface(model) -> dict[str, list[tuple[str, tuple | None, str]]]:
    """Names, shapes (concrete for inputs; None or "?" where unknown) and dtypes of the inputs and outputs."""
    import numpy as np

    shapes = model.static_input_shapes()
    inputs = [(t.name, tuple(shapes[t.name]), np.dtype(t.dtype).name) for t in model.graph.inputs]
    outputs = [(t.name, None if t.shape is None else tuple(d if isinstance(d, int) and d > 0 else "?" for d in t.shape),
                np.dtype(t.dtype).name if t.dtype is not None else "?") for t in model.graph.outputs]
    return {"inputs": inputs, "outputs": outputs}


def check_same_interface(baseline, candidate) -> None:
    """Refuse to pair two models that do not take and give the same tensors: their speedup means nothing.

    Dimensions one model leaves dynamic match any size (a compiled model may have fixed them).

    Raises:
        OptionError: the inputs or outputs differ in name, count, rank, a known size, or dtype.
    """
    from sparsecc.errors import OptionError

    a, b = interface(baseline), interface(candidate)
    for side in ("inputs", "outputs"):
        differences = _differences(a[side], b[side])
        if differences:
            raise OptionError(
                f"the two models have different {side}, so they do not compute the same thing and a speedup "
                f"between them means nothing: {differences}", where=f"{baseline.source} vs {candidate.source}",
                fix="bench a model against its own compiled version: sparsecc bench MODEL.onnx OUT/model.onnx "
                    "(time unrelated models one at a time: sparsecc bench MODEL.onnx)")


def _differences(first: list, second: list) -> str:
    by_name_a, by_name_b = {t[0]: t for t in first}, {t[0]: t for t in second}
    notes = []
    for name in sorted(set(by_name_a) | set(by_name_b)):
        if name not in by_name_b:
            notes.append(f"'{name}' only in the first")
        elif name not in by_name_a:
            notes.append(f"'{name}' only in the second")
        else:
            (_, shape_a, dtype_a), (_, shape_b, dtype_b) = by_name_a[name], by_name_b[name]
            if not (_same_shape(shape_a, shape_b) and (dtype_a == dtype_b or "?" in (dtype_a, dtype_b))):
                notes.append(f"'{name}' is {dtype_a} {_shape(shape_a)} in the first, {dtype_b} {_shape(shape_b)} "
                             "in the second")
    if not notes and [t[0] for t in first] != [t[0] for t in second]:
        notes.append("the same tensors in another order")
    return "; ".join(notes[:4]) + (f"; and {len(notes) - 4} more" if len(notes) > 4 else "")


def _same_shape(a, b) -> bool:
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x == y or "?" in (x, y) for x, y in zip(a, b))


def _shape(shape) -> str:
    return "[unknown]" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"

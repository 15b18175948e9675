"""Latency measurement per BENCHMARKS.md.

Variants are timed interleaved (A B A B ...) in one process, after warm-up,
with host wall-clock around each run; medians and minima are reported, and
the ratio of medians is the speedup. ``ideal`` (the MAC ratio) is printed
beside it so the efficiency of a rewrite can be read off.
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


def bench_models(paths: list[str | Path], backend: str = "ort", threads: int = 2,
                 shapes: dict[str, tuple[int, ...]] | None = None, runs: int = DEFAULT_RUNS,
                 warmup: int = DEFAULT_WARMUP, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark one model, or pair two (the first is the baseline) interleaved.

    Returns a dict with per-model timing, MACs and parameters, and for a pair the
    measured speedup, the ideal (MAC ratio) and the efficiency.
    """
    from sparsecc.backends import get_backend
    from sparsecc.environment import environment
    from sparsecc.inspect import inspect_model
    from sparsecc.model import load_model
    from sparsecc.verify import input_specs, random_feeds

    options = {"threads": threads} if backend == "ort" else {"shapes": shapes}
    engine = get_backend(backend, **options)
    labels = ["baseline", "candidate"][: len(paths)] if len(paths) == 2 else ["model"]
    models, sessions, feeds, info = {}, {}, {}, {}
    for label, path in zip(labels, paths):
        model = load_model(path, shapes)
        models[label] = model
        info[label] = inspect_model(model)["totals"]
        sessions[label] = engine.load(Path(path))
        feeds[label] = random_feeds(input_specs(model), seed=0)[0]
    report_every = max(1, runs // 4)

    def tick(done: int, total: int) -> None:
        if progress and (done % report_every == 0 or done == total):
            progress(f"timed {done}/{total} rounds")

    timings = time_interleaved(sessions, feeds, warmup, runs, tick)
    # Device time (CUDA events) where the backend has a device clock, beside the host wall-clock.
    device_ms = {}
    for label, session in sessions.items():
        samples = [session.device_time_ms(feeds[label]) for _ in range(runs)]
        if all(s is not None for s in samples):
            device_ms[label] = round(statistics.median(samples), 4)
    result: dict[str, Any] = {
        "backend": engine.describe(), "environment": environment(), "runs": runs, "warmup": warmup,
        "clock": "host wall-clock around each session.run, interleaved",
        "models": {label: {"path": str(path), "macs": info[label]["macs"], "params": info[label]["weight_params"],
                           **timings[label].to_dict()} for label, path in zip(labels, paths)},
    }
    for label, ms in device_ms.items():
        result["models"][label]["device_median_ms"] = ms
    if device_ms:
        result["device_clock"] = "CUDA events around one engine execution (inputs already on the device), median of runs"
    if len(paths) == 2:
        base, cand = result["models"]["baseline"], result["models"]["candidate"]
        speedup = timings["baseline"].median_ms / timings["candidate"].median_ms
        ideal = base["macs"] / cand["macs"] if cand["macs"] else float("inf")
        result.update(speedup=round(speedup, 4), ideal=round(ideal, 4), efficiency=round(speedup / ideal, 4))
    for session in sessions.values():
        session.close()
    return result

"""Timing the variants (host clock interleaved, CUDA events on a GPU) and the machine they ran on."""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from sparsecc.study.config import Measurement, StudyConfig
from sparsecc.study.shapes import GemmShape
from sparsecc.study.variants import Variant


def time_cuda(variants: list[Variant], warmup: int, runs: int) -> dict[str, list[float]]:
    """Device time of each variant with CUDA events, interleaved like the CPU timing."""
    import torch

    for _ in range(warmup):
        for variant in variants:
            variant.call()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for index in range(runs):
        for variant in (variants if index % 2 == 0 else variants[::-1]):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            variant.call()
            end.record()
            end.synchronize()
            times[variant.label].append(start.elapsed_time(end))
    return times


def time_cpu(variants: list[Variant], warmup: int, runs: int) -> dict[str, list[float]]:
    from sparsecc.bench import time_interleaved

    sessions = {v.label: v for v in variants}
    timings = time_interleaved(sessions, dict.fromkeys(sessions), warmup=warmup, runs=runs)
    return {label: t.times_ms for label, t in timings.items()}


def measurements(shape: GemmShape, keep: float, variants: list[Variant], times: dict[str, list[float]],
                  device: str, baseline: Variant) -> list[Measurement]:
    base = statistics.median(times[baseline.label])
    out = []
    for v in variants:
        median = statistics.median(times[v.label])
        out.append(Measurement(shape.model, shape.layer, shape.m, shape.k, shape.n, keep, v.pattern, v.library,
                               device, baseline.label, round(median, 5), round(min(times[v.label]), 5),
                               len(times[v.label]), round(median / base, 5), v.nnz, v.macs,
                               round(v.macs / baseline.macs, 5), v.k_kept, v.note))
    return out


def study_environment(config: StudyConfig) -> dict[str, Any]:
    """Machine, versions and thread settings of the study."""
    import scipy
    import torch

    from sparsecc.environment import environment

    env = environment()
    env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), ort_threads=config.threads,
               scipy=scipy.__version__, cuda=torch.cuda.is_available(),
               # Other work on a shared machine steals the cores a 2-thread GEMM waits for: say how busy it was.
               load_average_start=[round(v, 2) for v in os.getloadavg()])
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def gpu_status() -> dict[str, Any]:
    """Whether the cuSPARSE / cuBLAS part runs, and if not, why."""
    import torch

    if torch.cuda.is_available():
        return {"available": True, "device": torch.cuda.get_device_name(0),
                "clock": "CUDA events around each call, interleaved"}
    cuda = torch.version.cuda
    reason = ("torch.cuda.is_available() is False: " + (f"torch {torch.__version__} is a CPU-only build"
                                                        if cuda is None else "no CUDA device is visible"))
    return {"available": False, "reason": reason + "; the cuBLAS / cuSPARSE timings were skipped"}


def passive_openmp() -> str:
    """Make torch's OpenMP workers sleep, not spin, between calls (if torch is not loaded yet); say which.

    The same reason as ONNX Runtime's ``session.force_spinning_stop`` (BENCHMARKS.md): on a busy
    2-core machine, libgomp's spinning workers are preempted and a 0.3 ms GEMM measured 8 ms with
    2 threads; with ``OMP_WAIT_POLICY=PASSIVE`` it measured 0.5 ms. libgomp reads the variable
    when torch loads it, so an explicit setting in the environment is respected and a torch
    already imported keeps the policy it started with.
    """
    if "torch" in sys.modules:
        return f"{os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')} (torch was loaded before the study)"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"]

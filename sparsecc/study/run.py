"""The study: every layer of the shape set, at every share kept, every variant timed interleaved."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Callable

import numpy as np

from sparsecc.log import progress as default_progress
from sparsecc.study.config import PATTERNS, StudyConfig, StudyResult
from sparsecc.study.onnx_rewrite import one_layer_model, ort_variants
from sparsecc.study.shapes import SHAPE_SETS
from sparsecc.study.timing import gpu_status, measurements, passive_openmp, study_environment, time_cpu, time_cuda
from sparsecc.study.variants import groupwise_rows, layer_weight, pattern_masks, torch_variants, weight_kn


def run_study(config: StudyConfig | None = None, progress: Callable[[str], None] | None = None) -> StudyResult:
    """Run the characterisation study and return every measurement.

    Args:
        config: What to measure. Defaults to StudyConfig() (the default shape set).
        progress: Called with a line per layer and share. Defaults to sparsecc's stderr progress log.
    """
    config = config or StudyConfig()
    config.validate()
    progress = progress or default_progress
    omp_policy = passive_openmp()
    import torch

    torch.set_num_threads(config.threads)
    shapes = SHAPE_SETS[config.shapes]
    gpu = gpu_status()
    result = StudyResult(
        config={**asdict(config), "patterns": list(PATTERNS)},
        environment={**study_environment(config), "omp_wait_policy": omp_policy},
        shapes=[{**asdict(s), "macs": s.macs} for s in shapes], gpu=gpu,
        clock={"cpu": f"host wall-clock (time.perf_counter) around each call, {config.warmup} warm-up + "
                      f"{config.runs} timed rounds, variants interleaved in one process (order alternating)",
               "cuda": "CUDA events around each call (device time)"})
    rng = np.random.default_rng(config.seed)
    for number, shape in enumerate(shapes, 1):
        weight = layer_weight(shape, rng)
        w_kn = weight_kn(shape, weight)
        x_t = rng.standard_normal((shape.k, shape.m), dtype=np.float32)
        dense_bytes = one_layer_model(shape, weight).to_bytes() if config.ort else b""
        for keep in config.keeps:
            progress(f"[{number}/{len(shapes)}] {shape.label} (M={shape.m} K={shape.k} N={shape.n}) "
                     f"at {keep:.0%} kept")
            masks, skipped = pattern_masks(shape, w_kn, keep, config)
            result.skipped += skipped
            rows = groupwise_rows(shape, weight, keep, config.criterion)
            variants = torch_variants(shape, w_kn, x_t, masks, rows, config.block, config.libraries)
            times = time_cpu(variants, config.warmup, config.runs)
            result.measurements += measurements(shape, keep, variants, times, "cpu", variants[0])
            if gpu["available"]:
                cuda_variants = torch_variants(shape, w_kn, x_t, masks, rows, config.block, ("torch",), "cuda")
                times = time_cuda(cuda_variants, config.warmup, config.runs)
                result.measurements += measurements(shape, keep, cuda_variants, times, "cuda", cuda_variants[0])
            if config.ort:
                on_ort = ort_variants(shape, weight, keep, config, dense_bytes, rng)
                times = time_cpu(on_ort, config.warmup, config.runs)
                result.measurements += measurements(shape, keep, on_ort, times, "cpu", on_ort[0])
    result.environment["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return result

"""Load-robust timing: paired runs, CPU time beside wall clock, an interval on the ratio, the load.

What a timing must survive here is a shared machine: other jobs take cores at any moment, so a
wall-clock time of one run says as much about them as about the model. This package measures so
that a decision holds on a busy machine (the method and its evidence are in BENCHMARKS.md):

- Runs are **paired and interleaved**: each round runs the baseline and every candidate once
  (order alternating), and a candidate's speedup is taken pair by pair (baseline / candidate).
- Each run is timed by **wall clock and by the CPU time of the process**. With ONNX Runtime's
  spinning off (:func:`timing_backend`), CPU time is the work done; with one thread it equals
  wall clock on a quiet machine and stays steady under load, when wall clock does not.
- The median pair ratio gets a **seeded bootstrap interval** (90% by default): the same samples
  give the same interval, so stored evidence is judged the same way every time.
- **More runs only while an interval straddles the threshold**, within a time budget and a cap.
- **The load average** (before and after) goes with every measurement; a timing taken when the
  machine was too busy for its measure (:func:`too_busy`: one thread, 7 or more per core; several
  threads, any load past quiet) is not trusted as a decision.
- A **verdict** at a threshold: "faster", "slower" or "inconclusive", and which measure decided
  (CPU time with one thread; wall clock with several, on a quiet machine only).

Measuring two ONNX models (``models`` values may be paths, :class:`~sparsecc.model.Model` or
``gs.Graph``)::

    from sparsecc.measure import MeasureSettings, measure_models

    m = measure_models({"dense": "dense.onnx", "pruned": "out/model.onnx"}, baseline="dense",
                       threshold=1.0, threads=1, settings=MeasureSettings(budget_s=20))
    verdict = m.verdict("pruned", 1.0)       # Verdict(outcome="faster", measure="cpu", ...)
    print(verdict.reason)                     # "CPU time speedup 1.27 [1.26, 1.28] (90% CI, ...) above 1"
    evidence = m.evidence["pruned"]          # RatioEvidence: wall and cpu intervals, medians, load
    cached = evidence.to_dict()              # what a timing cache stores; RatioEvidence.from_dict reads it

Measuring anything else (any function that does one run)::

    from sparsecc.measure import measure

    m = measure({"a": lambda: sess_a.run(feed), "b": lambda: sess_b.run(feed)}, baseline="a", threshold=1.05)

A latency table over N variants is one call with N + 1 labels: every candidate gets its own
evidence against the baseline from the same rounds (``m.evidence[label]``, ``m.to_dict()``).
Without a threshold (``threshold=None``) exactly ``settings.min_pairs`` pairs are taken
(``MeasureSettings.fixed(n)``), for a benchmark that reports rather than decides.
"""

from sparsecc.measure.evidence import (MEASURE_NAMES, ONE_THREAD_LIMIT_PER_CORE, RatioEvidence, Verdict,
                                      deciding_measure, judge, too_busy)
from sparsecc.measure.machine import HEAVY_PER_CORE, LOADED_PER_CORE, LoadReading, load_level, read_load, usable_cores
from sparsecc.measure.runner import Clocks, MeasureSettings, Measurement, measure, measure_in_blocks
from sparsecc.measure.sessions import ONE_AT_A_TIME_BYTES, measure_models, timing_backend
from sparsecc.measure.stats import Interval, bootstrap_median, paired_ratios, ratio_interval

__all__ = [
    "Clocks", "HEAVY_PER_CORE", "Interval", "LOADED_PER_CORE", "LoadReading", "MEASURE_NAMES", "MeasureSettings",
    "Measurement", "ONE_AT_A_TIME_BYTES", "ONE_THREAD_LIMIT_PER_CORE", "RatioEvidence", "Verdict", "bootstrap_median",
    "deciding_measure", "judge", "load_level", "measure", "measure_in_blocks", "measure_models", "paired_ratios",
    "ratio_interval", "read_load", "timing_backend", "too_busy", "usable_cores",
]

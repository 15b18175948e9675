"""Pruning to a speed target: latency tables on the target backend and a latency-aware allocation.

- :mod:`~sparsecc.latency.network`: which weight layers' latencies depend on which channel groups.
- :mod:`~sparsecc.latency.timers`: how a layer is timed at a channel count (ONNX Runtime CPU, measured;
  analytic; the GPU roofline of ``lower-tensorrt``).
- :mod:`~sparsecc.latency.tables` and :mod:`~sparsecc.latency.sampling`: latency tables from sparse
  samples, with the kernels' preferred multiples found by probing.
- :mod:`~sparsecc.latency.allocate`: the knapsack that keeps the most importance per unit of latency
  (pure numpy, tested on hand-made tables).
- :mod:`~sparsecc.latency.target`: tables, allocation, removal on a copy, measurement and correction, as
  ``plan-filters`` runs them with ``target_speedup`` / ``target_latency``.

Nothing here is imported by ``import sparsecc``.
"""

__all__ = ["allocate", "describe", "network", "sampling", "tables", "target", "timers"]

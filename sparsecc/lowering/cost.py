"""Cost models: how a candidate lowering compares with its baseline, and which candidate to take.

- :class:`AnalyticCost`: MACs, moved elements and nodes with fixed constants (deterministic: the
  same answer on every machine; it reads no timing and no cache).
- :class:`MeasuredCost`: each candidate timed as a one-layer model against the baseline layer on
  ONNX Runtime CPU, paired (:mod:`sparsecc.measure`), through the timing cache, which keeps the
  evidence. Where the evidence is inconclusive, the analytic model decides, calibrated on this
  machine (:mod:`sparsecc.lowering.calibration`).
- :func:`choose_lowering`: the policy's choice (:func:`sparsecc.policy.choose`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsecc.lowering.calibration import Calibration, build_calibration, calibration_fields, layer_geometry
from sparsecc.lowering.layer_model import analytic_seconds, layer_graph
from sparsecc.lowering.registry import Candidate
from sparsecc.lowering.timing_cache import TimingCache, graph_signature
from sparsecc.measure import MeasureSettings, judge
from sparsecc.measure.cached import FROM_CACHE, compare_through_cache, load_now
from sparsecc.measure.evidence import MARGIN, too_busy
from sparsecc.policy import ANALYTIC, Decision, Option, choose, needs_estimates

# one layer: at least 20 pairs (a bootstrap interval of a median needs them), more while an interval
# straddles the threshold, for 3 s at most; twice, with new sessions each time: a layer's speedup
# moved by up to 9% between compiles here while one run's interval was 2-4% wide, so the interval
# must take in the replications (sparsecc.measure.combine)
LAYER_SETTINGS = MeasureSettings(min_pairs=20, max_pairs=200, batch=10, budget_s=3.0)
LAYER_REPLICATIONS = 2


def timing_environment(threads: int) -> dict[str, Any]:
    """What a timing depends on besides the graphs: backend, threads, spinning, CPU (cache key fields)."""
    import onnxruntime as ort

    from sparsecc.environment import cpu_model

    return {"backend": f"onnxruntime {ort.__version__} CPU", "threads": threads, "spinning": False,
            "cpu": cpu_model()}


class AnalyticCost:
    """Estimates from MACs, moved data and nodes.

    Args:
        calibration: Per-lowering factors measured on this machine. Defaults to none: the fixed
            constants, the same on every machine (what ``--cost-model analytic`` uses).
    """

    name = "analytic"

    def __init__(self, calibration: Calibration | None = None):
        self.calibration = calibration

    @property
    def label(self) -> str:
        return f"{ANALYTIC} ({self.calibration.describe()})" if self.calibration else ANALYTIC

    def time(self, candidates: list[Candidate], op: str, in_shape, out_shape, dtype=np.float32,
             threshold: float = 1.0) -> None:
        """Estimates stand in for times (``threshold`` is not needed: estimates carry no noise)."""
        self.estimate(candidates)
        for candidate in candidates:
            candidate.seconds = candidate.estimate_s
            candidate.source = "analytic"

    def fallback(self) -> "AnalyticCost":
        """The model that decides where a timing cannot: this one."""
        return self

    def estimate(self, candidates: list[Candidate]) -> None:
        for candidate in candidates:
            factor = self.calibration.factor(candidate.name, candidate.geometry) if self.calibration else 1.0
            candidate.estimate_s = analytic_seconds(candidate) * factor


class MeasuredCost:
    """Times candidates against the baseline on ONNX Runtime CPU, through the timing cache.

    Args:
        threads: ONNX Runtime intra-op threads. Defaults to 1 (CPU time then holds under load).
        cache: The timing cache. Defaults to one kept in memory for this compile only.
        min_pairs: Paired runs before an interval is looked at. Defaults to 20.
    """

    name = "measured"

    def __init__(self, threads: int = 1, cache: TimingCache | None = None, min_pairs: int = 20):
        self.threads = threads
        self.cache = cache if cache is not None else TimingCache(None)
        self.settings = MeasureSettings(min_pairs=min_pairs, max_pairs=max(min_pairs, LAYER_SETTINGS.max_pairs),
                                        batch=LAYER_SETTINGS.batch, budget_s=LAYER_SETTINGS.budget_s)
        self.environment = timing_environment(threads)
        self._analytic: AnalyticCost | None = None

    def time(self, candidates: list[Candidate], op: str, in_shape, out_shape, dtype=np.float32,
             threshold: float = 1.0) -> None:
        """Evidence for each candidate but the first (the baseline) against it, from the cache or measured
        (more pairs while an interval straddles ``threshold``)."""
        from sparsecc.measure import measure_models

        graphs = {c.name: layer_graph(c, in_shape, out_shape, dtype) for c in candidates}
        base = candidates[0]
        signature = {name: graph_signature(g) for name, g in graphs.items()}
        keys, what = {}, {}
        for candidate in candidates[1:]:
            what[candidate.name] = {"op": op, "lowering": candidate.name, "baseline": base.name,
                                    "in": list(in_shape), "out": list(out_shape), "dtype": np.dtype(dtype).name}
            keys[candidate.name] = TimingCache.key({"what": "layer-pair", **what[candidate.name],
                                                    "baseline_graph": signature[base.name],
                                                    "graph": signature[candidate.name], **self.environment})
        feed = {"x": np.random.default_rng(0).standard_normal(in_shape).astype(dtype)}

        def measure_missing(labels: list[str]):
            chosen = {base.name: graphs[base.name], **{label: graphs[label] for label in labels}}
            return measure_models(chosen, base.name, threshold, self.threads, self.settings, feed,
                                  replications=LAYER_REPLICATIONS)

        found = compare_through_cache(self.cache, keys, what, measure_missing)
        for candidate in candidates[1:]:
            sourced = found[candidate.name]
            candidate.evidence = sourced.evidence
            candidate.source = sourced.source
            candidate.seconds = sourced.evidence.cpu_ms[1] / 1e3
            base.seconds = sourced.evidence.cpu_ms[0] / 1e3
        base.source = "timing cache" if all(f.source == FROM_CACHE for f in found.values()) else "measured"

    def estimate(self, candidates: list[Candidate]) -> None:
        """The analytic fallback, calibrated on this machine (built and cached the first time it is needed)."""
        self.fallback().estimate(candidates)

    def fallback(self) -> AnalyticCost:
        if self._analytic is None:
            self._analytic = AnalyticCost(machine_calibration(self.cache, self.threads, self.environment))
        return self._analytic


def machine_calibration(cache: TimingCache, threads: int, environment: dict[str, Any]) -> Calibration | None:
    """This machine's calibration from ``cache``; measured and stored when missing, unless the machine
    is too busy to trust it (then None: the fixed constants are used, and the report says so)."""
    key = TimingCache.key(calibration_fields(environment))
    found = Calibration.from_entry(cache.entries.get(key))  # not counted as a timing hit or miss
    if found is not None:
        return found  # only calibrations taken when the machine was calm enough to trust them are stored
    if too_busy(threads, load_now()):
        return None
    calibration = build_calibration(threads)
    if too_busy(threads, calibration.load.per_core):
        return None
    cache.put(key, calibration.to_entry())
    return calibration


def choose_lowering(candidates: list[Candidate], min_gain: float, cost, op: str, in_shape, out_shape,
                    dtype=np.float32) -> tuple[Candidate, Decision]:
    """Time (or estimate) the candidates and take one (``candidates[0]`` is the baseline).

    A lowering must beat the baseline by ``min_gain``: by a conclusive timing where there is one,
    else (no timing, or an interval that straddles the threshold) by the analytic estimate, which
    the decision then names (:func:`sparsecc.policy.choose`). An estimate standing in for an
    inconclusive timing must clear the threshold by the timing's margin (the calibration behind it
    is measured too, and a layer at the threshold flipped between compiles on it).
    """
    threshold = 1.0 + min_gain
    for candidate in candidates:
        candidate.geometry = layer_geometry(in_shape, out_shape)
    cost.time(candidates, op, in_shape, out_shape, dtype, threshold)
    base, options = candidates[0], candidates[1:]
    verdicts = {c.name: judge(c.evidence, threshold) if c.evidence is not None else None for c in options}
    choices = [Option(c.name, verdicts[c.name]) for c in options]
    label = ANALYTIC
    if needs_estimates(choices):
        cost.estimate(candidates)
        label = cost.fallback().label
        choices = [Option(c.name, verdicts[c.name], fallback_speedup(base, c)) for c in options]
    decision = choose(base.name, choices, threshold, label, estimate_margin=MARGIN)
    return next(c for c in candidates if c.name == decision.choice), decision


def fallback_speedup(base: Candidate, candidate: Candidate) -> float:
    """The analytic speedup a layer choice reads: the calibrated estimate, never above the fixed model's.

    A calibration is measured in one process, and in another the same reference layer measured up to
    10% apart (ResNet-18's 64-channel 56x56 tap gather: factors giving 0.98-1.22x over 11 compiles),
    which flipped a layer at the threshold from compile to compile. The machine-independent model
    cannot flip; the calibration may veto a lowering it takes, never take one it does not.
    """
    calibrated = base.estimate_s / candidate.estimate_s
    return min(calibrated, analytic_seconds(base) / analytic_seconds(candidate))


def describe_candidates(candidates: list[Candidate], decision: Decision | None = None) -> dict[str, Any]:
    """What a pass records of its candidates for one layer: times, MACs, the evidence, what decided."""
    described: dict[str, Any] = {
        "candidates_ms": {c.name: round(c.seconds * 1e3, 4) for c in candidates if c.seconds is not None},
        "macs": {c.name: c.macs for c in candidates}}
    sources = {c.source for c in candidates if c.source}
    if sources:
        described["timing"] = " + ".join(sorted(sources))
    evidence = {c.name: c.evidence.summary() for c in candidates if c.evidence is not None}
    if evidence:
        described["speedup_vs_" + candidates[0].name] = evidence
    estimates = {c.name: round(candidates[0].estimate_s / c.estimate_s, 4) for c in candidates[1:]
                 if c.estimate_s and candidates[0].estimate_s}
    if estimates:
        described["estimated_speedup"] = estimates
        fixed = {c.name: round(analytic_seconds(candidates[0]) / analytic_seconds(c), 4) for c in candidates[1:]}
        if fixed != estimates:
            described["uncalibrated_speedup"] = fixed
    if decision is not None:
        described["decided_by"] = decision.by + (" (timing inconclusive)" if decision.fallback else "")
    return described

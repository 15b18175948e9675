"""Statistics of paired timings: a seeded bootstrap interval on a ratio, and where it lies against a threshold.

Pure numpy, no clocks: the same samples always give the same interval (the resampling is seeded),
so a decision read back from stored evidence is the decision the evidence gave when it was taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

CONFIDENCE = 0.9
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval.

    Attributes:
        estimate: The median of the values.
        low: Lower end of the interval.
        high: Upper end of the interval.
        confidence: Coverage of the interval (0.9 = 90%).
    """

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def side(self, threshold: float, margin: float = 0.0) -> str:
        """Where the interval lies against the band ``[threshold / (1 + margin), threshold * (1 + margin)]``:
        "above" it, "below" it, "within" it (too close to ``threshold`` to call either way), or
        "straddles" an edge of it (more samples could still tell). With no margin: "above", "below"
        or "straddles" ``threshold``."""
        high_edge, low_edge = threshold * (1.0 + margin), threshold / (1.0 + margin)
        if self.low > high_edge:
            return "above"
        if self.high < low_edge:
            return "below"
        if margin > 0 and self.low >= low_edge and self.high <= high_edge:
            return "within"
        return "straddles"

    @property
    def width(self) -> float:
        """(high - low) / estimate: how wide the interval is, relative to the estimate."""
        return (self.high - self.low) / self.estimate if self.estimate else float("inf")

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, float]:
        return {"estimate": round(self.estimate, 5), "low": round(self.low, 5), "high": round(self.high, 5),
                "confidence": self.confidence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Interval":
        return cls(float(data["estimate"]), float(data["low"]), float(data["high"]),
                   float(data.get("confidence", CONFIDENCE)))


def paired_ratios(baseline: Sequence[float], candidate: Sequence[float]) -> np.ndarray:
    """baseline[i] / candidate[i] for each pair (a speedup: above 1 when the candidate is faster).

    Raises:
        ValueError: the two lists differ in length, are empty, or hold a time that is not positive.
    """
    base = np.asarray(baseline, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if base.shape != cand.shape or base.ndim != 1 or not base.size:
        raise ValueError(f"paired timings need two equal, non-empty lists; got {base.shape} and {cand.shape}")
    if np.any(base <= 0) or np.any(cand <= 0):
        raise ValueError("a timed run took no time: the clock is too coarse for this run")
    return base / cand


def bootstrap_median(values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                     seed: int = SEED) -> Interval:
    """The median of ``values`` with a percentile-bootstrap interval (resampling seeded: reproducible).

    Args:
        values: Per-pair ratios (one value per pair, so resampling pairs keeps each pair together).
        confidence: Coverage of the interval. Defaults to 0.9.
        resamples: Bootstrap resamples. Defaults to 2000.
        seed: Seed of the resampling. Defaults to 0.
    """
    data = np.asarray(values, dtype=np.float64)
    if not data.size:
        raise ValueError("no values to take an interval of")
    estimate = float(np.median(data))
    if data.size == 1:
        return Interval(estimate, estimate, estimate, confidence)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    medians = np.median(data[picks], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high), confidence)


def ratio_interval(baseline: Sequence[float], candidate: Sequence[float], confidence: float = CONFIDENCE,
                   resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The paired median speedup (baseline / candidate, pair by pair) with its bootstrap interval."""
    return bootstrap_median(paired_ratios(baseline, candidate), confidence, resamples, seed)


def grouped_ratio_interval(groups: Sequence[tuple[Sequence[float], Sequence[float]]], confidence: float = CONFIDENCE,
                           resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The paired median speedup over several replications (each its own sessions), with an interval
    that takes in how much the replications differ: each resample draws the replications, then
    the pairs within each (a two-level bootstrap). One replication is :func:`ratio_interval`.

    Args:
        groups: Per replication, (baseline times, candidate times), paired.
    """
    ratios = [paired_ratios(base, cand) for base, cand in groups]
    if len(ratios) == 1:
        return bootstrap_median(ratios[0], confidence, resamples, seed)
    rng = np.random.default_rng(seed)
    medians = np.empty(resamples)
    for index in range(resamples):
        chosen = rng.integers(0, len(ratios), len(ratios))
        medians[index] = np.median(np.concatenate([ratios[i][rng.integers(0, ratios[i].size, ratios[i].size)]
                                                   for i in chosen]))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return Interval(float(np.median(np.concatenate(ratios))), float(low), float(high), confidence)

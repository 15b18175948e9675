"""Latency tables: a layer's latency as a function of its channel counts, from a few samples (pure numpy).

A layer's latency is sampled along one channel dimension at a time (output channels with the
input full, input channels with the output full; a depthwise conv's one channel count), as a
ratio to the full layer, and the two are multiplied: ``T(c_in, c_out) = T_full * r_in(c_in) *
r_out(c_out)``, which holds for a GEMM whose work is the product of the two.

Kernels prefer channel counts that are multiples of a block (ONNX Runtime's NCHWc block is 8 on
AVX2 and 16 on AVX-512; tensor cores want multiples of 8): between two multiples, the time stays
where the next multiple puts it, or jumps higher when the kernel falls back to a slower path.
That step is *found*, not assumed: :func:`probe_counts` lists counts just above a multiple of a
power of two, and :func:`detect_step` picks the step whose staircase explains their times best
(:class:`AxisTable`). The rest of the axis is sampled on a coarse grid of multiples of that step
(:func:`grid_counts`) and interpolated linearly between them; a count that is not a multiple is
priced at the next multiple up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["AxisTable", "LayerTable", "probe_counts", "detect_step", "grid_counts", "PROBE_SPAN"]

PROBE_SPAN = 64
"""The largest step looked for; probes run from one multiple of it to the next."""


def probe_counts(full: int) -> tuple[int, list[int]]:
    """Where to look for the step of an axis of ``full`` channels: (base, [base + 1, base + 2, ..., 2 base]).

    The base is the largest power of two up to :data:`PROBE_SPAN` that fits twice in ``full``;
    low on the axis a step is the largest share of the time, so it shows best above the noise.
    An axis under 4 channels has no probes.
    """
    if full < 4:
        return full, []
    span = 1 << int(np.floor(np.log2(full / 2)))
    span = min(span, PROBE_SPAN)
    offsets = [1 << i for i in range(int(np.log2(span)) + 1)]
    return span, [span + j for j in offsets]


def detect_step(base: int, base_time: float, probes: Mapping[int, float]) -> tuple[int, dict[int, float]]:
    """The kernel's preferred multiple, from times at ``base`` and at ``base + j`` (j = 1, 2, 4, ..., base).

    For each power-of-two step q, a staircase model prices a count at the next multiple of q:
    ``t(base + j) = t(base) + ceil(j / q) * q * slope``, with the slope from the widest probe.
    The measured times are scored against it: at multiples of q the squared miss counts whole; at
    other counts only a time *below* the staircase counts against q (a count above it is a kernel
    falling back to a slower path between multiples, which a step of q also explains). The step
    with the least miss wins; a tie goes to the smaller step.

    Returns:
        (step, {q: miss}) — the miss of every step tried, for the report.
    """
    if not probes:
        return 1, {}
    offsets = sorted(j - base for j in probes)
    widest = offsets[-1]
    slope = (probes[base + widest] - base_time) / widest
    if slope <= 0:
        return 1, {}  # no growth over the widest probe: nothing to find a step in
    misses = {}
    for q in offsets:
        miss = 0.0
        for j in offsets:
            predicted = base_time + np.ceil(j / q) * q * slope
            error = probes[base + j] - predicted
            if j % q == 0:
                miss += error ** 2
            elif error < 0:
                miss += error ** 2
        misses[q] = miss / (slope * widest) ** 2
    best = min(offsets, key=lambda q: (round(misses[q], 9), q))
    return int(best), {q: round(m, 6) for q, m in misses.items()}


def grid_counts(full: int, step: int, points: int = 8) -> list[int]:
    """Counts sampled along an axis: ``points`` fractions of ``full`` rounded up to the step, and ``full``."""
    counts = {full}
    for i in range(1, points + 1):
        count = int(np.ceil(full * i / points / step)) * step
        counts.add(min(full, max(step, count)))
    return sorted(counts)


@dataclass
class AxisTable:
    """Latency ratio to the full layer along one channel axis.

    Attributes:
        full: Channels of the axis in the unpruned layer.
        step: The multiple the kernel prefers (found by :func:`detect_step`; 1 when none was found).
        counts: Sampled counts, multiples of ``step`` (and ``full``), ascending.
        ratios: Time at each count over the time at ``full``.
        probe: What step detection measured ({count: ratio}) and the miss of each step, for reports.
    """

    full: int
    step: int
    counts: np.ndarray
    ratios: np.ndarray
    probe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.ratios = np.asarray(self.ratios, dtype=np.float64)
        order = np.argsort(self.counts)
        self.counts, self.ratios = self.counts[order], self.ratios[order]
        if self.counts.size == 0 or self.counts[-1] != self.full:
            raise ValueError(f"an axis table of {self.full} channels needs a sample at {self.full}")

    def ratio(self, count) -> np.ndarray:
        """Time over full time at ``count`` channels (vectorised): the next multiple of the step up,
        interpolated between samples; below the first sample, straight down towards zero channels."""
        count = np.asarray(count, dtype=np.float64)
        padded = np.minimum(np.ceil(count / self.step) * self.step, self.full)
        padded = np.where(count >= self.full, count, padded)  # a count above full (not pruned) is kept as is
        low_count, low_ratio = float(self.counts[0]), float(self.ratios[0])
        inside = np.interp(padded, self.counts.astype(np.float64), self.ratios)
        below = low_ratio * np.clip(padded, 0.0, None) / low_count if low_count > 0 else inside
        above = self.ratios[-1] * padded / self.full
        return np.where(padded < low_count, below, np.where(padded > self.full, above, inside))

    def to_dict(self) -> dict[str, Any]:
        return {"full": self.full, "step": self.step, "counts": self.counts.tolist(),
                "ratios": [round(float(r), 5) for r in self.ratios], "probe": self.probe}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AxisTable":
        return cls(int(data["full"]), int(data["step"]), data["counts"], data["ratios"], dict(data.get("probe", {})))


@dataclass
class LayerTable:
    """One layer's latency over its channel counts: ``full_seconds * r_in(c_in) * r_out(c_out)``.

    Attributes:
        name: The layer.
        full_seconds: Time of the unpruned layer.
        inputs: The input-channel axis, or None when it is not pruned.
        outputs: The output-channel axis, or None. A depthwise conv has one axis, ``outputs``, and
            ``depthwise`` True (its input and output counts are one count).
        depthwise: See ``outputs``.
        source: How the samples were taken (the timer's description).
    """

    name: str
    full_seconds: float
    inputs: AxisTable | None = None
    outputs: AxisTable | None = None
    depthwise: bool = False
    source: str = ""

    def seconds(self, c_in, c_out) -> np.ndarray:
        """Predicted time at ``c_in`` input and ``c_out`` output channels (vectorised)."""
        factor = np.asarray(1.0)
        if self.outputs is not None:
            factor = factor * self.outputs.ratio(c_out)
        if self.inputs is not None and not self.depthwise:
            factor = factor * self.inputs.ratio(c_in)
        return self.full_seconds * factor

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "full_seconds": self.full_seconds, "depthwise": self.depthwise,
                "inputs": self.inputs.to_dict() if self.inputs else None,
                "outputs": self.outputs.to_dict() if self.outputs else None, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerTable":
        axis = lambda d: AxisTable.from_dict(d) if d else None  # noqa: E731
        return cls(str(data["name"]), float(data["full_seconds"]), axis(data.get("inputs")),
                   axis(data.get("outputs")), bool(data.get("depthwise", False)), str(data.get("source", "")))

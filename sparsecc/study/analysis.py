"""Break-even: the smallest share pruned at which a pattern beats dense, per layer and overall."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparsecc.study.config import Measurement


def crossing(points: list[tuple[float, float]], floor: float = 1.0) -> dict[str, Any]:
    """Smallest share pruned at which a ratio to dense drops below ``floor``.

    Args:
        points: (share pruned, ratio to dense) pairs.
        floor: The ratio to beat. Defaults to 1.0 (as fast as dense).

    Returns:
        ``{"pruned": share or None, "how": ...}``: linearly interpolated between the
        last measured share at or above ``floor`` and the first below it; at the
        smallest share measured if that one is already faster (the crossing may lie
        lower); None if no share measured is faster.
    """
    points = sorted(points)
    for index, (pruned, ratio) in enumerate(points):
        if ratio < floor:
            if index == 0:
                return {"pruned": round(pruned, 4), "how": "faster already at the least-pruned share measured"}
            before_pruned, before_ratio = points[index - 1]
            share = before_pruned + (before_ratio - floor) / (before_ratio - ratio) * (pruned - before_pruned)
            return {"pruned": round(share, 4), "how": "interpolated between measured shares"}
    top = f"{points[-1][0]:.0%}" if points else "any"
    return {"pruned": None, "how": f"never faster than dense up to {top} pruned"}


def break_even(measurements: list[Measurement]) -> dict[str, Any]:
    """Break-even share pruned per device, variant and layer, and overall (geometric mean of the ratios)."""
    grouped: dict[tuple[str, str], dict[str, dict[float, float]]] = {}
    for m in measurements:
        if m.pattern == "dense":
            continue
        by_shape = grouped.setdefault((m.device, f"{m.pattern}/{m.library}"), {})
        by_shape.setdefault(f"{m.model} {m.layer}", {})[m.keep] = m.ratio
    out: dict[str, Any] = {}
    for (device, label), by_shape in sorted(grouped.items()):
        keeps = sorted(set.intersection(*(set(r) for r in by_shape.values())), reverse=True)
        overall = {k: math.exp(statistics.fmean(math.log(r[k]) for r in by_shape.values())) for k in keeps}
        out.setdefault(device, {})[label] = {
            "per_shape": {name: crossing([(1 - k, r) for k, r in ratios.items()]) for name, ratios in by_shape.items()},
            "overall_ratio": {str(k): round(v, 4) for k, v in overall.items()},
            "overall": crossing([(1 - k, r) for k, r in overall.items()]),
        }
    return out

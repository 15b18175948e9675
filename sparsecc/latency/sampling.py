"""Building the latency tables of a network's prunable layers with a timer (sparse samples, found steps).

For each prunable axis of a layer (output channels, input channels, or a depthwise conv's one
count): with a measuring timer, first the probes of :func:`~sparsecc.latency.tables.probe_counts`,
from which :func:`~sparsecc.latency.tables.detect_step` finds the multiple the kernel prefers;
then a coarse grid of multiples of that step. Layers of the same geometry share one table (a
ResNet's repeated blocks are measured once), and the timer's cache keeps every sample.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from sparsecc.latency.network import LayerGeometry, PrunableLayer
from sparsecc.latency.tables import AxisTable, LayerTable, detect_step, grid_counts, probe_counts
from sparsecc.latency.timers import Timer

__all__ = ["build_tables", "layer_table"]


def _point(geometry: LayerGeometry, axis: str, count: int) -> tuple[int, int]:
    if geometry.depthwise:
        return (count, count)
    return (geometry.full_in, count) if axis == "outputs" else (count, geometry.full_out)


def _axis_table(geometry: LayerGeometry, axis: str, timer: Timer, sources: set[str]) -> tuple[AxisTable, float]:
    full = geometry.full_out if axis == "outputs" else geometry.full_in
    reference = (geometry.full_in, geometry.full_out)
    ratios: dict[int, float] = {full: 1.0}
    reference_seconds = None
    step, probe = 1, {}
    if timer.measured:
        base, probes = probe_counts(full)
        counts = [c for c in [base, *probes] if c != full]
        if counts:
            timed = timer.time_points(geometry, reference, [_point(geometry, axis, c) for c in counts])
            sources.add(timed.source)
            reference_seconds = timed.reference_seconds
            for count in counts:
                ratios[count] = timed.ratios[_point(geometry, axis, count)]
            step, misses = detect_step(base, ratios[base], {c: ratios[c] for c in probes})
            probe = {"base": base, "ratios": {str(c): round(ratios[c], 5) for c in [base, *probes]},
                     "miss_by_step": {str(q): m for q, m in misses.items()}}
    grid = [c for c in grid_counts(full, step) if c not in ratios]
    if grid:
        timed = timer.time_points(geometry, reference, [_point(geometry, axis, c) for c in grid])
        sources.add(timed.source)
        reference_seconds = reference_seconds if reference_seconds is not None else timed.reference_seconds
        for count in grid:
            ratios[count] = timed.ratios[_point(geometry, axis, count)]
    if reference_seconds is None:  # an axis with only its full count: time the reference alone
        timed = timer.time_points(geometry, reference, [reference])
        sources.add(timed.source)
        reference_seconds = timed.reference_seconds
    aligned = sorted(c for c in ratios if c % step == 0 or c == full)
    return AxisTable(full, step, aligned, [ratios[c] for c in aligned], probe), reference_seconds


def layer_table(layer: PrunableLayer, timer: Timer) -> LayerTable:
    """The latency table of one layer: one axis per side its groups vary."""
    geometry = layer.geometry
    sources: set[str] = set()
    axes, seconds = {}, []
    for axis, varies in (("outputs", layer.varies_out()), ("inputs", layer.varies_in())):
        if varies:
            axes[axis], reference_seconds = _axis_table(geometry, axis, timer, sources)
            seconds.append(reference_seconds)
    full_seconds = sorted(seconds)[len(seconds) // 2]
    return LayerTable(layer.name, full_seconds, axes.get("inputs"), axes.get("outputs"), geometry.depthwise,
                      " + ".join(sorted({s for part in sources for s in part.split(" + ")})) or timer.name)


def build_tables(layers: list[PrunableLayer], timer: Timer,
                 progress: Callable[[str], None] | None = None) -> dict[str, LayerTable]:
    """A table for every layer; layers of the same geometry and varying sides share one."""
    shared: dict[str, LayerTable] = {}
    tables = {}
    for index, layer in enumerate(layers):
        key = json.dumps([layer.geometry.key(), layer.varies_in(), layer.varies_out()], sort_keys=True)
        if key not in shared:
            shared[key] = layer_table(layer, timer)
            if progress:
                progress(f"latency table {len(shared)} ({index + 1}/{len(layers)} layers): {layer.name} "
                         f"({shared[key].source})")
        table = shared[key]
        tables[layer.name] = LayerTable(layer.name, table.full_seconds, table.inputs, table.outputs,
                                        table.depthwise, table.source)
    return tables


def describe_tables(tables: dict[str, LayerTable]) -> dict[str, Any]:
    """What a report shows of the tables: per layer, its time, the steps found and the samples."""
    return {name: table.to_dict() for name, table in tables.items()}

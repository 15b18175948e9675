"""The analytic cost model calibrated on this machine, kept in the timing cache.

The analytic model (:func:`~sparsecc.lowering.layer_model.analytic_seconds`) prices a candidate from its
MACs, the elements it moves and its nodes, with constants measured once on one machine. What a
decision reads from it is a ratio: the baseline's estimate over a candidate's. A calibration
measures, on reference layers, each lowering against its family's baseline (paired, CPU time,
spinning off: :mod:`sparsecc.measure`) and keeps, per lowering and reference layer, the factor that
makes the model's ratio match the measured one. A layer takes the factor of the reference layer
nearest to it in channels and positions (log scale): one factor per lowering mispriced whole stages
of a network (a tap gather of 64 channels at 56x56 ran at 0.93-1.04x of the dense layer where the
factor measured at 28x28 predicted 1.25-1.37x), so the references follow a CNN's stages, from
64 channels at 56x56 to 512 at 7x7. It is evidence like any timing: it carries the load it was taken
under and when; one taken when the machine was too busy to trust a timing is not kept.

It is built when a measured compile first needs the analytic fallback on this machine (or by
``sparsecc cache calibrate``). ``--cost-model analytic`` never reads it: that model is the same on
every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
from onnx import helper, numpy_helper

from sparsecc.lowering.registry import LayerToLower, get_lowering, propose_all
from sparsecc.lowering.timing_cache import CALIBRATION_FORM
from sparsecc.measure import LoadReading, MeasureSettings, read_load, usable_cores

FORM = CALIBRATION_FORM
REFERENCE_PAIRS = 30


Geometry = tuple[int, int, int]  # (rank, channels, positions) of a layer: see layer_geometry


def layer_geometry(in_shape, out_shape) -> Geometry:
    """Where a layer sits, as the calibration looks it up: its rank, input channels and output positions.

    A convolution ``[N, C, H, W] -> [N, K, P, Q]`` is ``(4, C, N*P*Q)``; a matrix product ``[M, K] -> [M, N]``
    is ``(2, K, M)``.
    """
    rank = len(in_shape)
    if rank == 4 and len(out_shape) == 4:
        return 4, int(in_shape[1]), int(out_shape[0] * out_shape[2] * out_shape[3])
    return rank, int(in_shape[-1]), int(np.prod(out_shape[:-1], dtype=np.int64))


def _distance(a: Geometry, b: Geometry) -> float:
    # layers of another rank are a last resort; channels and positions compare on a log scale
    return (0.0 if a[0] == b[0] else 1e6) + abs(np.log2(a[1] / b[1])) + abs(np.log2(a[2] / b[2]))


@dataclass(frozen=True)
class Calibration:
    """Factors on the analytic estimate, per lowering and reference layer, measured on this machine.

    Attributes:
        factors: Lowering name -> the median of its factors (a summary, and the factor of a layer
            whose geometry is unknown). Baselines are 1.
        samples: Lowering name -> ``(geometry, factor)`` per reference layer it was measured on.
        threads: ONNX Runtime threads it was measured with.
        load: Load averages around the measurement.
        taken_at: When (UTC, ISO 8601).
    """

    factors: dict[str, float]
    samples: dict[str, list[tuple[Geometry, float]]]
    threads: int
    load: LoadReading
    taken_at: str

    def factor(self, lowering: str, geometry: Geometry | None = None) -> float:
        """The factor for ``lowering`` on a layer at ``geometry``: the nearest reference layer's (ties: the
        first measured); the median without a geometry; 1 for a lowering never measured."""
        found = self.samples.get(lowering)
        if geometry is None or not found:
            return self.factors.get(lowering, 1.0)
        return min(found, key=lambda sample: _distance(geometry, sample[0]))[1]

    def describe(self) -> str:
        return (f"calibrated on this machine {self.taken_at} ({self.load}): "
                + ", ".join(f"{k} x{v:.2f}" for k, v in sorted(self.factors.items())))

    def to_entry(self) -> dict[str, Any]:
        return {"form": FORM, "factors": {k: round(v, 5) for k, v in self.factors.items()},
                "samples": {k: [[*g, round(x, 5)] for g, x in v] for k, v in self.samples.items()},
                "threads": self.threads, "load": self.load.to_dict(), "taken_at": self.taken_at}

    @classmethod
    def from_entry(cls, entry: dict[str, Any] | None) -> "Calibration | None":
        """The calibration an entry holds, or None (no entry, another form)."""
        if not isinstance(entry, dict) or entry.get("form") != FORM:
            return None
        try:
            return cls({k: float(v) for k, v in entry["factors"].items()},
                       {k: [((int(r), int(c), int(p)), float(x)) for r, c, p, x in v]
                        for k, v in entry["samples"].items()}, int(entry["threads"]),
                       LoadReading.from_dict(entry["load"]), str(entry["taken_at"]))
        except (KeyError, TypeError, ValueError):
            return None


def calibration_fields(environment: dict[str, Any]) -> dict[str, Any]:
    """The cache key fields of this machine's calibration (backend, threads, CPU)."""
    return {"what": "analytic-calibration", "form": FORM, **environment}


# ----------------------------------------------------------------------------------------------
# reference layers: what the group-wise and DEPrune lowerings are measured on
# ----------------------------------------------------------------------------------------------

def _conv(c_in: int, c_out: int, size: int, zero: Callable[[np.ndarray], None], group: int = 1):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((c_out, c_in // group, 3, 3)).astype(np.float32)
    zero(weight)
    node = helper.make_node("Conv", ["x", "W"], ["y"], name="layer", pads=[1, 1, 1, 1], group=group)
    return [node], [("x", [1, c_in, size, size])], [("y", [1, c_out, size, size])], {"W": weight}


def _matmul(rows: int, k: int, n: int):
    weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    weight[::2] = 0.0  # every other input feature pruned
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="layer")
    return [node], [("x", [rows, k])], [("y", [rows, n])], {"W": weight}


def _half_channels(weight: np.ndarray) -> None:
    weight[:, ::2] = 0.0


def _scattered_rows(weight: np.ndarray) -> None:
    flat = weight.reshape(weight.shape[0], -1)
    flat[:, np.random.default_rng(1).permutation(flat.shape[1])[: flat.shape[1] // 2]] = 0.0


def _depthwise_taps(weight: np.ndarray) -> None:
    taps = weight.reshape(weight.shape[0], -1)
    rng = np.random.default_rng(2)
    for row in taps:  # 80% of each channel's taps pruned, as DEPrune's default ratio
        row[rng.permutation(row.size)[: int(0.8 * row.size)]] = 0.0


# a CNN's stages (channels double as the resolution halves), each with half its input channels pruned
# and with half of its (channel, tap) rows pruned at random
STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))
REFERENCE_LAYERS = {
    **{f"conv3x3-channels-{c}x{s}": ("groupwise", lambda c=c, s=s: _conv(c, c, s, _half_channels)) for c, s in STAGES},
    **{f"conv3x3-taps-{c}x{s}": ("groupwise", lambda c=c, s=s: _conv(c, c, s, _scattered_rows)) for c, s in STAGES},
    "matmul": ("groupwise", lambda: _matmul(8, 512, 512)),
    "depthwise-96": ("deprune", lambda: _conv(96, 96, 28, _depthwise_taps, group=96)),
    "depthwise-192": ("deprune", lambda: _conv(192, 192, 14, _depthwise_taps, group=192)),
}


def _reference_layer(build) -> tuple[LayerToLower, tuple, tuple]:
    """The one layer of a reference model, as a lowering sees it, with its input and output shapes."""
    from sparsecc.layers import analyse_layers
    from sparsecc.model import clamp_ir_version, model_from_proto

    nodes, inputs, outputs, weights = build()
    graph = helper.make_graph(nodes, "reference", [helper.make_tensor_value_info(n, 1, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, 1, s) for n, s in outputs],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(proto)
    model = model_from_proto(proto, "<calibration reference layer>")
    layer = analyse_layers(model)[0][0]
    node = next(n for n in model.graph.nodes if n.outputs[0].name == layer.output)
    view = LayerToLower(node, layer, node.inputs[1].values, None, layer.input_shape, layer.output_shape)
    return view, layer.input_shape, layer.output_shape


def build_calibration(threads: int = 1, pairs: int = REFERENCE_PAIRS) -> Calibration:
    """Measure every registered group-wise and DEPrune lowering against its baseline on the reference layers."""
    from sparsecc.lowering.layer_model import analytic_seconds, layer_graph
    from sparsecc.lowering.gather import dense_candidate
    from sparsecc.measure import measure_models

    samples: dict[str, list[float]] = {}
    before = read_load()
    for family, build in REFERENCE_LAYERS.values():
        view, in_shape, out_shape = _reference_layer(build)
        base = dense_candidate(view) if family == "groupwise" else get_lowering("depthwise").candidate(view)
        candidates = propose_all(view, base, family).candidates
        if len(candidates) < 2:
            continue
        graphs = {c.name: layer_graph(c, in_shape, out_shape) for c in candidates}
        feed = {"x": np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)}
        measured = measure_models(graphs, base.name, None, threads, MeasureSettings.fixed(pairs), feed=feed)
        geometry = layer_geometry(in_shape, out_shape)
        for candidate in candidates[1:]:
            speedup = measured.evidence[candidate.name].cpu.estimate
            # the factor that makes estimate(base) / (factor * estimate(candidate)) the measured speedup
            samples.setdefault(candidate.name, []).append(
                (geometry, analytic_seconds(base) / (analytic_seconds(candidate) * speedup)))
    load = LoadReading(before, read_load(), usable_cores())
    return Calibration({k: float(np.median([x for _, x in v])) for k, v in samples.items()}, samples, threads, load,
                       datetime.now(timezone.utc).isoformat(timespec="seconds"))

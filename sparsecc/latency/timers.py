"""Timers for latency tables: one layer at several channel counts, as a ratio to the full layer.

A timer answers one question: for a layer (:class:`~sparsecc.latency.network.LayerGeometry`) at a
reference count (its full size) and at other counts, what is the reference's time and each
count's time relative to it. Three are built in:

- :class:`OrtTimer` (``measured``): each count as a one-layer ONNX model on ONNX Runtime CPU, all
  timed in one paired, interleaved run against the reference (:mod:`sparsecc.measure`: spinning
  off, CPU time and wall clock per run, an interval on each ratio, the load), through the timing
  cache, which stores that evidence per sample. The ratio read is CPU time at one thread: steady
  under load, where wall clock is not (BENCHMARKS.md).
- :class:`AnalyticTimer` (``analytic``): MACs and moved data at the CPU cost model's constants;
  deterministic, no steps to find.
- :class:`GpuRooflineTimer` (``gpu-roofline``): the roofline ``lower-tensorrt`` prices a GPU layer
  with (:class:`~sparsecc.lowering.plugins.GpuAnalyticCost`'s assumed H100-class constants), until
  a GPU is lent to measure on; analytic, so no steps are found either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.latency.network import LayerGeometry

__all__ = ["Timer", "TimedPoints", "OrtTimer", "AnalyticTimer", "GpuRooflineTimer", "layer_graph", "make_timer",
           "TIMERS"]

Point = tuple[int, int]  # (input channels, output channels)

WRAP_CHANNELS = 16
"""Channels of the 1x1 Convs around a timed Conv (a multiple of ONNX Runtime's NCHWc block, 8 or 16)."""


@dataclass
class TimedPoints:
    """What a timer found for one layer: the reference's seconds and each point's time relative to it.

    Attributes:
        reference_seconds: Time of the layer at the reference counts.
        ratios: Point -> its time over the reference's.
        source: "measured", "timing cache", "analytic" or "gpu-roofline" (several joined by " + ").
        evidence: Per point, what the measurement showed (interval, pairs, load), for the report.
    """

    reference_seconds: float
    ratios: dict[Point, float]
    source: str
    evidence: dict[Point, dict[str, Any]] = field(default_factory=dict)


class Timer(Protocol):
    name: str
    measured: bool  # True: its samples are timings, so kernel steps are looked for

    def time_points(self, geometry: LayerGeometry, reference: Point, points: list[Point]) -> TimedPoints:
        ...

    def describe(self) -> dict[str, Any]:
        ...


def layer_graph(geometry: LayerGeometry, c_in: int, c_out: int, seed: int = 0) -> tuple[gs.Graph, dict]:
    """A one-layer model of ``geometry`` at ``c_in`` input and ``c_out`` output channels, and its feed.

    A Conv sits between two 1x1 Convs from and to :data:`WRAP_CHANNELS` channels: in a network its
    neighbours are Convs that make and read the same channel count, and ONNX Runtime's handling of
    a count that is not a multiple of its block (padding it in the blocked layout, or leaving the
    blocked layout with reorders around the layer) shows only between such neighbours. (1x1
    depthwise wrappers, as the lowering cost model uses, fall out of the blocked layout themselves
    at such counts, and hide the cost.)
    """
    from sparsecc.lowering.emitter import Emitter

    dtype = np.dtype(geometry.dtype)
    rng = np.random.default_rng(seed)
    graph = gs.Graph(opset=17)
    em = Emitter(graph, "layer", "latency-table", dtype)
    attrs = dict(geometry.attrs)
    if geometry.op == "Conv":
        c_in = c_out if geometry.depthwise else c_in
        in_shape = [geometry.in_shape[0], WRAP_CHANNELS, *geometry.in_shape[2:]]
        kernel = list(geometry.weight_shape[2:])
        weight = rng.standard_normal((c_out, 1 if geometry.depthwise else c_in, *kernel)) * 0.05
        if geometry.depthwise:
            attrs["group"] = c_out
        x = gs.Variable("x", dtype=dtype, shape=in_shape)
        y = gs.Variable("y", dtype=dtype, shape=None)
        inner_x, inner_y = em.var("in"), em.var("out")
        em.node("Conv", [x, em.const("w_in", rng.standard_normal((c_in, WRAP_CHANNELS, 1, 1)) * 0.1)], [inner_x],
                "wrap_in")
        inputs = [inner_x, em.const("weight", weight)] + ([em.const("bias", np.zeros(c_out))] if geometry.bias else [])
        em.node("Conv", inputs, [inner_y], "conv", **{k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in attrs.items()})
        em.node("Conv", [inner_y, em.const("w_out", rng.standard_normal((WRAP_CHANNELS, c_out, 1, 1)) * 0.1)], [y],
                "wrap_out")
    else:
        in_shape = [*geometry.in_shape[:-1], c_in]
        trans_b = geometry.op == "Gemm" and bool(attrs.get("transB", 0))
        shape = (c_out, c_in) if trans_b else (c_in, c_out)
        x = gs.Variable("x", dtype=dtype, shape=in_shape)
        y = gs.Variable("y", dtype=dtype, shape=None)
        inputs = [x, em.const("weight", rng.standard_normal(shape) * 0.05)]
        if geometry.op == "Gemm" and geometry.bias:
            inputs.append(em.const("bias", np.zeros(c_out)))
        gemm_attrs = {k: v for k, v in attrs.items() if k in ("transB", "alpha", "beta")}
        em.node(geometry.op, inputs, [y], geometry.op.lower(), **(gemm_attrs if geometry.op == "Gemm" else {}))
    graph.inputs, graph.outputs = [x], [y]
    feed = {"x": rng.standard_normal(in_shape).astype(dtype)}
    return graph, feed


def _points_in(geometry: LayerGeometry, point: Point) -> Point:
    return (point[1], point[1]) if geometry.depthwise else point


class AnalyticTimer:
    """Estimates from MACs and moved activations at the CPU cost model's constants (no timing)."""

    name = "analytic"
    measured = False

    def seconds(self, geometry: LayerGeometry, c_in: int, c_out: int) -> float:
        from sparsecc.lowering.layer_model import S_PER_COPY, S_PER_NODE
        from sparsecc.lowering.registry import DEFAULT_S_PER_MAC

        c_in, c_out = _points_in(geometry, (c_in, c_out))
        moved = _elements(geometry, c_in, c_out)
        return geometry.macs(c_in, c_out) * DEFAULT_S_PER_MAC + moved * S_PER_COPY + S_PER_NODE

    def time_points(self, geometry: LayerGeometry, reference: Point, points: list[Point]) -> TimedPoints:
        base = self.seconds(geometry, *reference)
        return TimedPoints(base, {p: self.seconds(geometry, *p) / base for p in points}, self.name)

    def describe(self) -> dict[str, Any]:
        return {"timer": self.name, "what": "MACs and moved activations at the CPU cost model's constants"}


class GpuRooflineTimer(AnalyticTimer):
    """The GPU roofline ``lower-tensorrt`` uses: max(MACs at a tensor-core rate, bytes at HBM bandwidth)
    plus a launch; assumed H100-class constants, not measurements.

    Args:
        precision: "fp16" or "fp32", the engine's precision. Defaults to "fp16".
    """

    name = "gpu-roofline"

    def __init__(self, precision: str = "fp16"):
        from sparsecc.lowering.plugins import PRECISION_FACTOR

        if precision not in PRECISION_FACTOR:
            from sparsecc.errors import OptionError

            raise OptionError(f"unknown precision {precision!r}", where="latency tables (gpu-roofline)",
                              fix=f"use one of {', '.join(sorted(PRECISION_FACTOR))}")
        self.precision = precision

    def seconds(self, geometry: LayerGeometry, c_in: int, c_out: int) -> float:
        from sparsecc.lowering.plugins import (BYTES_PER_ELEMENT, BYTES_PER_S, DEPTHWISE_FACTOR, FP16_S_PER_MAC,
                                               PRECISION_FACTOR, S_PER_KERNEL)

        c_in, c_out = _points_in(geometry, (c_in, c_out))
        per_mac = FP16_S_PER_MAC * PRECISION_FACTOR[self.precision] * (DEPTHWISE_FACTOR if geometry.depthwise else 1)
        compute = geometry.macs(c_in, c_out) * per_mac
        weights = c_out * (1 if geometry.depthwise else c_in) * int(np.prod(geometry.weight_shape[2:] or (1,)))
        memory = (_elements(geometry, c_in, c_out) + weights) * BYTES_PER_ELEMENT[self.precision] / BYTES_PER_S
        return max(compute, memory) + S_PER_KERNEL

    def describe(self) -> dict[str, Any]:
        return {"timer": self.name, "precision": self.precision,
                "what": "GPU roofline of lower-tensorrt (assumed H100-class constants, not measured)"}


def _elements(geometry: LayerGeometry, c_in: int, c_out: int) -> int:
    """Activation elements read and written."""
    if geometry.op == "Conv":
        spatial = int(np.prod(geometry.in_shape[2:]))
        out_spatial = spatial // int(np.prod(geometry.strides()))
        return int(geometry.in_shape[0]) * (c_in * spatial + c_out * out_spatial)
    rows = int(np.prod(geometry.in_shape[:-1]))
    return rows * (c_in + c_out)


class OrtTimer:
    """Times counts as one-layer models on ONNX Runtime CPU, paired against the reference, through a cache.

    A one-layer model's run also pays ONNX Runtime's per-run overhead and, for a Conv, the two 1x1
    Convs around it (:func:`layer_graph`): in the network these belong to no layer (the overhead is
    paid once per run) or to the neighbours' own tables. So the wrappers alone are timed too, at
    the smallest and the full count of each side (:func:`wrapper_graph`, linear between), and
    subtracted; for a Gemm/MatMul, a model that does nothing (the overhead) is. The ratio read is
    CPU time per run: steady under load at one thread.

    Args:
        threads: Intra-op threads. Defaults to 1 (CPU time is then steady under load).
        pairs: Paired rounds per measurement. Defaults to 12.
        cache: The :class:`~sparsecc.lowering.TimingCache`. Defaults to one kept in memory.
        session_bytes: Most weight bytes of sessions alive at once (larger layers are measured a few
            counts at a time). Defaults to 256 MB.
    """

    name = "measured"
    measured = True

    def __init__(self, threads: int = 1, pairs: int = 12, cache=None, session_bytes: int = 256 * 2 ** 20):
        import onnxruntime as ort

        from sparsecc.environment import cpu_model
        from sparsecc.lowering.timing_cache import TimingCache

        self.threads, self.pairs, self.session_bytes = threads, pairs, session_bytes
        self.cache = cache if cache is not None else TimingCache(None)
        self._env = {"backend": f"onnxruntime {ort.__version__} CPU", "threads": threads, "cpu": cpu_model()}

    def describe(self) -> dict[str, Any]:
        return {"timer": self.name, **self._env, "pairs": self.pairs,
                "measure": "CPU time per run, paired with the full layer, interleaved, ONNX Runtime spinning off; "
                           "the wrapper Convs and the per-run overhead measured alongside and subtracted"}

    def _key(self, geometry: LayerGeometry, reference: Point, sample: tuple) -> str:
        from sparsecc.lowering.timing_cache import TimingCache

        return TimingCache.key({"what": "latency-table sample", "layer": geometry.key(), "reference": list(reference),
                                "sample": list(sample), **self._env})

    def _overheads(self, geometry: LayerGeometry) -> list[tuple]:
        """The samples of what is subtracted: wrappers at two counts per side, or the empty model."""
        if geometry.op != "Conv":
            return [("empty",)]
        sides = {("in", geometry.full_out if geometry.depthwise else geometry.full_in), ("out", geometry.full_out)}
        return [("wrappers", side, count) for side, full in sorted(sides) for count in sorted({min(16, full), full})]

    def time_points(self, geometry: LayerGeometry, reference: Point, points: list[Point]) -> TimedPoints:
        from sparsecc.measure.cached import compare_through_cache

        samples = [("layer", *reference)] + [("layer", *p) for p in points] + self._overheads(geometry)
        samples = list(dict.fromkeys(samples))
        timed = {_label(s): s for s in samples if s != ("layer", *reference)}
        keys = {label: self._key(geometry, reference, s) for label, s in timed.items()}
        what = {label: {"what": "latency-table sample", "layer": f"{geometry.op} {geometry.kind} "
                        f"{list(geometry.weight_shape)} at {list(geometry.in_shape)}", "sample": label}
                for label in timed}

        def measure_missing(labels: list[str]) -> "_Measured":
            found = {}
            for chunk in self._chunks(geometry, reference, [timed[label] for label in labels]):
                found.update(self._measure(geometry, reference, chunk))
            return _Measured(found)

        sourced = compare_through_cache(self.cache, keys, what, measure_missing)
        evidence = {timed[label]: found.evidence for label, found in sourced.items()}
        sources = {found.source for found in sourced.values()}
        base_ms = float(np.median([e.cpu_ms[0] for e in evidence.values()]))
        ms = {s: base_ms / e.cpu.estimate for s, e in evidence.items()}
        ms[("layer", *reference)] = base_ms
        layer_ms = {p: self._layer_only(geometry, p, ms) for p in [reference, *points]}
        floor = 1e-3 * layer_ms[reference]
        reference_ms = max(layer_ms[reference], floor)
        ratios = {p: max(layer_ms[p], floor) / reference_ms for p in points}
        shown = {p: {"cpu": evidence[("layer", *p)].cpu.to_dict(), "wall": evidence[("layer", *p)].wall.to_dict(),
                     "pairs": evidence[("layer", *p)].pairs, "load": evidence[("layer", *p)].load.to_dict(),
                     "graph_ms": round(ms[("layer", *p)], 5), "layer_ms": round(layer_ms[p], 5)}
                 for p in points if p != reference}
        return TimedPoints(reference_ms / 1e3, ratios, " + ".join(sorted(sources)), shown)

    @staticmethod
    def _layer_only(geometry: LayerGeometry, point: Point, ms: dict) -> float:
        """The layer's own time: its model's time less the per-run overhead and half of each side's wrappers."""
        total = ms[("layer", *point)]
        if geometry.op != "Conv":
            return total - ms[("empty",)]
        c_in, c_out = _points_in(geometry, point)

        def wrappers(side: str, count: int) -> float:
            known = sorted((s[2], value) for s, value in ms.items() if s[0] == "wrappers" and s[1] == side)
            counts, values = [c for c, _ in known], [v for _, v in known]
            if len(counts) == 1:
                return values[0]
            slope = (values[-1] - values[0]) / (counts[-1] - counts[0])
            return values[0] + slope * (count - counts[0])

        return total - 0.5 * (wrappers("in", c_in) + wrappers("out", c_out))

    def _chunks(self, geometry: LayerGeometry, reference: Point, samples: list[tuple]) -> list[list[tuple]]:
        per_channel = int(np.prod(geometry.weight_shape)) / max(1, geometry.full_in * geometry.full_out)
        size = np.dtype(geometry.dtype).itemsize
        full = per_channel * reference[0] * reference[1] * size
        room = max(1, int((self.session_bytes - full) // max(full, 1)))
        return [samples[i:i + room] for i in range(0, len(samples), room)]

    def _measure(self, geometry: LayerGeometry, reference: Point, samples: list[tuple]) -> dict[str, Any]:
        """Evidence of each sample against the reference layer, from one paired, interleaved run."""
        from sparsecc.measure import MeasureSettings, measure, timing_backend
        from sparsecc.session_files import SessionFiles

        backend = timing_backend(self.threads)
        labels = {"reference": ("layer", *reference), **{_label(s): s for s in samples}}
        with SessionFiles(prefix="sparsecc-latency-") as files:
            runners, keep = {}, []
            for label, sample in labels.items():
                graph, feed = sample_graph(geometry, sample)
                path = files.write(graph)
                session = backend.load(path, files.initializers(path))
                keep.append((session, graph))
                runners[label] = (lambda s=session, f=feed: s.run(f))
            result = measure(runners, "reference", threshold=None, threads=self.threads, spinning=False,
                             settings=MeasureSettings.fixed(self.pairs))
            del runners, keep
        return dict(result.evidence)


@dataclass
class _Measured:
    """What ``compare_through_cache`` reads of a measurement: evidence by label."""

    evidence: dict[str, Any]


def _label(sample: tuple) -> str:
    return "-".join(map(str, sample))


def sample_graph(geometry: LayerGeometry, sample: tuple) -> tuple[gs.Graph, dict]:
    """The model a sample times: ("layer", c_in, c_out), ("wrappers", side, count) or ("empty",)."""
    if sample[0] == "layer":
        return layer_graph(geometry, sample[1], sample[2])
    if sample[0] == "wrappers":
        return wrapper_graph(geometry, sample[1], sample[2])
    return empty_graph(np.dtype(geometry.dtype))


def wrapper_graph(geometry: LayerGeometry, side: str, count: int) -> tuple[gs.Graph, dict]:
    """The two wrapper Convs of :func:`layer_graph` alone, at ``count`` channels and one side's spatial size."""
    from sparsecc.lowering.emitter import Emitter

    dtype = np.dtype(geometry.dtype)
    rng = np.random.default_rng(0)
    spatial = list(geometry.in_shape[2:])
    if side == "out":
        spatial = [-(-d // s) for d, s in zip(spatial, geometry.strides())]
    graph = gs.Graph(opset=17)
    em = Emitter(graph, "wrappers", "latency-table", dtype)
    x = gs.Variable("x", dtype=dtype, shape=[geometry.in_shape[0], WRAP_CHANNELS, *spatial])
    y = gs.Variable("y", dtype=dtype, shape=None)
    middle = em.var("middle")
    em.node("Conv", [x, em.const("w_in", rng.standard_normal((count, WRAP_CHANNELS, 1, 1)) * 0.1)], [middle], "wrap_in")
    em.node("Conv", [middle, em.const("w_out", rng.standard_normal((WRAP_CHANNELS, count, 1, 1)) * 0.1)], [y],
            "wrap_out")
    graph.inputs, graph.outputs = [x], [y]
    return graph, {"x": rng.standard_normal(x.shape).astype(dtype)}


def empty_graph(dtype) -> tuple[gs.Graph, dict]:
    """A model that does almost nothing: what a run costs whatever it computes."""
    graph = gs.Graph(opset=17)
    x = gs.Variable("x", dtype=dtype, shape=[1, WRAP_CHANNELS])
    y = gs.Variable("y", dtype=dtype, shape=None)
    graph.nodes.append(gs.Node("Relu", "relu", inputs=[x], outputs=[y]))
    graph.inputs, graph.outputs = [x], [y]
    return graph, {"x": np.ones((1, WRAP_CHANNELS), dtype)}


TIMERS = ("measured", "analytic", "gpu-roofline")


def make_timer(name: str, cache=None, threads: int = 1, precision: str = "fp16") -> Timer:
    """The timer called ``name`` (one of :data:`TIMERS`)."""
    if name == "measured":
        return OrtTimer(threads=threads, cache=cache)
    if name == "analytic":
        return AnalyticTimer()
    if name == "gpu-roofline":
        return GpuRooflineTimer(precision)
    from sparsecc.errors import OptionError

    raise OptionError(f"unknown latency timer {name!r}", where="latency tables", fix=f"use one of {', '.join(TIMERS)}")

"""Which weight layers' latencies depend on which channel groups, and the shapes they run at (analysis only).

Each Conv/Gemm/MatMul whose input or output channels belong to a prunable channel group
(:mod:`sparsecc.dependency`) becomes a :class:`PrunableLayer`: its geometry at the compile
shapes (what a latency table is measured on) and how the kept counts of the groups make its
channel counts (:class:`~sparsecc.latency.allocate.Term`). A depthwise conv has its group on both
sides. Layers that touch no prunable group take the same time whatever is pruned and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency import ChannelGroup
from sparsecc.latency.allocate import LayerCost, Term
from sparsecc.latency.tables import LayerTable
from sparsecc.layers import WeightLayer, find_weight_layers
from sparsecc.model import Model

__all__ = ["LayerGeometry", "PrunableLayer", "prunable_layers", "layer_costs"]

_TIMING_ATTRS = ("strides", "pads", "dilations", "kernel_shape", "auto_pad", "transB", "alpha", "beta")


@dataclass(frozen=True)
class LayerGeometry:
    """What a layer's time depends on besides its channel counts.

    Attributes:
        op: "Conv", "Gemm" or "MatMul".
        kind: The layer kind (conv, pointwise, depthwise, gemm, matmul).
        in_shape: Input shape at the compile shapes (channels on axis 1 for Conv, last for a GEMM).
        weight_shape: The unpruned weight's shape.
        attrs: The node attributes that shape the computation, sorted.
        bias: Whether the layer adds a bias.
        dtype: The weight's dtype name.
    """

    op: str
    kind: str
    in_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    attrs: tuple[tuple[str, Any], ...]
    bias: bool
    dtype: str

    @property
    def full_in(self) -> int:
        if self.op == "Conv":
            return int(self.in_shape[1])
        return int(self.in_shape[-1])

    @property
    def full_out(self) -> int:
        if self.op == "Conv":
            return int(self.weight_shape[0])
        trans_b = dict(self.attrs).get("transB", 0)
        return int(self.weight_shape[0] if self.op == "Gemm" and trans_b else self.weight_shape[1])

    @property
    def depthwise(self) -> bool:
        return self.kind == "depthwise"

    def macs(self, c_in: int, c_out: int) -> int:
        """Multiply-accumulates at ``c_in`` input and ``c_out`` output channels (analytic timers)."""
        if self.op == "Conv":
            kernel = int(np.prod(self.weight_shape[2:]))
            spatial = int(np.prod(self.in_shape[2:])) // int(np.prod(self.strides()))
            per_out = kernel if self.depthwise else c_in * kernel
            return int(self.in_shape[0]) * c_out * spatial * per_out
        rows = int(np.prod(self.in_shape[:-1]))
        return rows * c_in * c_out

    def strides(self) -> tuple[int, ...]:
        return tuple(dict(self.attrs).get("strides", (1,) * (len(self.in_shape) - 2)))

    def key(self) -> dict[str, Any]:
        """JSON-ready, for timing-cache keys."""
        return {"op": self.op, "kind": self.kind, "in": list(self.in_shape), "weight": list(self.weight_shape),
                "attrs": [[k, list(v) if isinstance(v, (list, tuple)) else v] for k, v in self.attrs],
                "bias": self.bias, "dtype": self.dtype}


@dataclass
class PrunableLayer:
    """A weight layer whose latency depends on prunable groups.

    Attributes:
        name: The layer's node.
        geometry: Its shapes and attributes at the compile shapes.
        inputs: The groups its input channels are made of.
        outputs: The groups its output channels are made of (a depthwise conv: the same as ``inputs``).
        fixed_in: Input channels outside any prunable group.
        fixed_out: Output channels outside any prunable group.
    """

    name: str
    geometry: LayerGeometry
    inputs: tuple[Term, ...]
    outputs: tuple[Term, ...]
    fixed_in: int
    fixed_out: int

    def varies_in(self) -> bool:
        return bool(self.inputs) and not self.geometry.depthwise

    def varies_out(self) -> bool:
        return bool(self.outputs)


def _attrs(node: gs.Node) -> tuple[tuple[str, Any], ...]:
    picked = []
    for name in _TIMING_ATTRS:
        if name in node.attrs:
            value = node.attrs[name]
            picked.append((name, tuple(value) if isinstance(value, (list, tuple)) else value))
    return tuple(sorted(picked))


def _terms(uses: list[tuple[str, Any]], sizes: Mapping[str, int]) -> tuple[tuple[Term, ...], float]:
    """The terms of one side of a layer, and the elements of that side they cover."""
    terms, covered = [], 0.0
    for label, use in uses:
        count = use.covered(sizes[label])
        per_channel = use.stride * count / sizes[label]  # a use covering part of a group: its share
        terms.append(Term(label, per_channel))
        covered += use.stride * count
    return tuple(terms), covered


def prunable_layers(model: Model, candidates: Mapping[str, ChannelGroup],
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[PrunableLayer]:
    """Every weight layer whose channels depend on one of ``candidates`` (label -> group), in graph order."""
    from sparsecc.shapes import infer_shapes

    layers, _ = find_weight_layers(model)
    if shapes is None:
        shapes = infer_shapes(model, {layer.input for layer in layers} | {layer.output for layer in layers})
    layers, _ = find_weight_layers(model, dict(shapes))
    sizes = {label: group.size for label, group in candidates.items()}
    made: dict[str, list] = {}
    read: dict[str, list] = {}
    for label, group in candidates.items():
        for use in group.producers:
            if use.kind == "weight":
                made.setdefault(use.node, []).append((label, use))
        for use in group.consumers:
            read.setdefault(use.node, []).append((label, use))
    nodes = {node.name: node for node in model.graph.nodes}
    found = []
    for layer in layers:
        if layer.node not in made and layer.node not in read:
            continue
        if layer.input_shape is None:
            continue  # no shape, no table: the layer is priced as fixed (listed by the caller)
        geometry = _geometry(layer, nodes.get(layer.node), model)
        outputs, out_covered = _terms(made.get(layer.node, []), sizes)
        if geometry.depthwise:
            inputs, in_covered = outputs, out_covered
        else:
            inputs, in_covered = _terms(read.get(layer.node, []), sizes)
        found.append(PrunableLayer(layer.node, geometry, inputs, outputs, int(round(geometry.full_in - in_covered)),
                                   int(round(geometry.full_out - out_covered))))
    return found


def _geometry(layer: WeightLayer, node: gs.Node | None, model: Model) -> LayerGeometry:
    tensors = model.graph.tensors()
    dtype = np.dtype(tensors[layer.weight].values.dtype).name
    attrs = _attrs(node) if node is not None else ()
    if layer.op == "Conv":
        attrs = tuple(sorted(attrs + (("group", layer.group),))) if layer.group > 1 else attrs
    return LayerGeometry(layer.op, layer.kind, tuple(int(d) for d in layer.input_shape),
                         tuple(int(d) for d in layer.weight_shape), attrs, layer.bias is not None, dtype)


def layer_costs(layers: list[PrunableLayer], tables: Mapping[str, LayerTable]) -> list[LayerCost]:
    """The allocator's view of the layers: each layer's table with the terms that feed it."""
    return [LayerCost(layer.name, tables[layer.name].seconds, layer.inputs, layer.outputs, layer.fixed_in,
                      layer.fixed_out) for layer in layers if layer.name in tables]

"""How much work a model does: the MACs of its weight layers and of its sparsecc plugin nodes.

Inspection (per layer), the compile report and ``sparsecc bench`` (the ideal speedup) count the
same way: a weight layer's MACs from its shapes (:mod:`sparsecc.layers`), and a plugin node's from
its kept list, since a layer lowered to a plugin node is no weight layer any more but its work
did not vanish.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.layers import analyse_layers
from sparsecc.model import Model
from sparsecc.plugins.ops import DEPTHWISE_SUBGEMM, INDEX_INPUTS, NAMESPACE, PLUGIN_OPS
from sparsecc.shapes import infer_shapes


@dataclass(frozen=True)
class WorkCount:
    """A model's work: MACs (weight layers and plugin nodes together) and weight-layer parameters."""

    macs: int
    weight_params: int
    plugin_macs: int = 0
    plugin_nodes: int = 0


def count_work(model: Model) -> WorkCount:
    """The MACs and weight-layer parameters of a model at its input shapes."""
    layers, _ = analyse_layers(model)
    plugin = plugin_node_macs(model)
    return WorkCount(sum(layer.macs or 0 for layer in layers) + sum(plugin.values()),
                     sum(layer.params for layer in layers), sum(plugin.values()), len(plugin))


def plugin_node_macs(model) -> dict[str, int]:
    """MACs of every sparsecc plugin node of a model, by node name (what inspection, the report and bench count).

    A plugin node is no weight layer (Conv/Gemm/MatMul), but it is where the layer's work went:
    Y elements x K' for GroupwiseConv/GroupwiseLinear, and for DepthwiseSubGemm N x G x 32 x K' x Ho x Wo
    (each group of 32 channels is one dense 32 x K' sub-GEMM, partial groups included).
    """
    nodes = [n for n in model.graph.nodes if n.domain == NAMESPACE and n.op in PLUGIN_OPS]
    if not nodes:
        return {}
    shapes = infer_shapes(model, {n.outputs[0].name for n in nodes})
    macs = {}
    for node in nodes:
        kept = node.inputs[INDEX_INPUTS[node.op]]
        out = shapes.get(node.outputs[0].name)
        if out is None or not isinstance(kept, gs.Constant):
            continue
        k = int(kept.values.shape[-1])
        if node.op == DEPTHWISE_SUBGEMM:
            groups = int(kept.values.shape[0])
            macs[node.name] = int(out[0]) * groups * 32 * k * int(np.prod(out[2:]))
        else:
            macs[node.name] = int(np.prod(out)) * k
    return macs

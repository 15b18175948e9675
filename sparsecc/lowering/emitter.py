"""The node emitter every lowering writes through, and the small building blocks lowerings share.

Constants take the dtype of the tensors they meet: an emitter is made for one float dtype (the
dtype of the layer it lowers), floating constants are cast to it, and integer constants (Gather
indices) stay int64. So a lowering written once works on FP32 and FP16 graphs alike.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.graphutil import constant, mark_provenance, unique_name


class Emitter:
    """Adds nodes with provenance to a graph, naming them after the layer they lower.

    Args:
        graph: The graph nodes are added to.
        prefix: Name prefix of everything emitted (the layer's name).
        provenance: The pass that makes the nodes (recorded on each node).
        dtype: Float dtype of the activations and floating constants. Defaults to float32.
    """

    def __init__(self, graph: gs.Graph, prefix: str, provenance: str, dtype=np.float32):
        self.graph = graph
        self.prefix = prefix
        self.provenance = provenance
        self.dtype = np.dtype(dtype)

    def const(self, base: str, values: np.ndarray) -> gs.Constant:
        """A new constant; floating values are cast to the emitter's dtype."""
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.floating) and values.dtype != self.dtype:
            values = values.astype(self.dtype)
        return constant(self.graph, f"{self.prefix}/{base}", values)

    def ints(self, base: str, values) -> gs.Constant:
        """An int64 constant (indices, shapes)."""
        return constant(self.graph, f"{self.prefix}/{base}", np.asarray(values, dtype=np.int64))

    def var(self, base: str, dtype=None, shape=None) -> gs.Variable:
        """A new activation, in the emitter's dtype unless told."""
        return gs.Variable(unique_name(self.graph, f"{self.prefix}/{base}"),
                           dtype=self.dtype if dtype is None else dtype, shape=shape)

    def node(self, op: str, inputs, outputs, base: str, **attrs) -> gs.Node:
        node = gs.Node(op, unique_name(self.graph, f"{self.prefix}/{base}"), attrs=attrs, inputs=list(inputs),
                       outputs=list(outputs))
        mark_provenance(node, self.provenance)
        self.graph.nodes.append(node)
        return node

    def own(self, tensor: gs.Tensor) -> gs.Tensor:
        """A fresh copy of a constant, so nodes of a cost-model graph never share the model's tensors."""
        return self.const(tensor.name.split("/")[-1], tensor.values) if isinstance(tensor, gs.Constant) else tensor


def emit_gather(em: Emitter, x: gs.Tensor, indices: np.ndarray, axis: int, base: str) -> gs.Tensor:
    """``Gather(x, indices, axis)``; returns the gathered tensor."""
    out = em.var(base)
    em.node("Gather", [x, em.ints(f"{base}_idx", indices)], [out], f"gather_{base}", axis=axis)
    return out


def emit_gather_features(em: Emitter, x: gs.Tensor, features: np.ndarray, rank: int | None) -> gs.Tensor:
    """The kept input features (last axis) of a Gemm/MatMul input, gathered with the features first.

    ONNX Runtime's Gather on the last axis copies one element per index (1.65 ms for 64 x 2048
    features, about 12 ns an element); with the features moved first (Transpose, Gather on axis 0,
    Transpose back) each index copies a contiguous row: 0.45 ms there, and ONNX Runtime fuses the
    Transpose back into a following Gemm. A MatMul input of unknown rank is gathered on its last axis.
    """
    if rank is None or rank == 1:
        return emit_gather(em, x, features, -1, "features")
    first = em.var("features_first")
    em.node("Transpose", [x], [first], "features_first", perm=[rank - 1] + list(range(rank - 1)))
    gathered = emit_gather(em, first, features, 0, "features")
    out = em.var("features_last")
    em.node("Transpose", [gathered], [out], "features_last", perm=list(range(1, rank)) + [0])
    return out


def emit_conv(em: Emitter, x: gs.Tensor, y: gs.Tensor, node: gs.Node, weight: np.ndarray,
              bias: gs.Tensor | None) -> None:
    """A Conv with ``node``'s attributes and a new weight (and the node's bias, if any)."""
    inputs = [x, em.const("weight", weight)] + ([em.own(bias)] if bias is not None else [])
    em.node("Conv", inputs, [y], "conv", **dict(node.attrs))


def emit_gemm(em: Emitter, x: gs.Tensor, y: gs.Tensor, node: gs.Node, weight: np.ndarray) -> None:
    """A Gemm/MatMul with ``node``'s op, attributes and extra inputs, and a new weight."""
    inputs = [x, em.const("weight", weight)] + [em.own(t) for t in node.inputs[2:]]
    em.node(node.op, inputs, [y], node.op.lower(), **dict(node.attrs))

"""Canonicalisation passes: put every graph into the form the pruning passes expect.

Both are exact and run before any recipe's passes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from sparsecc.graphutil import constant, is_graph_output
from sparsecc.passmanager import Pass, PassContext, PassResult, Skipped, register_pass

_SCALAR_ATTRS = {"value_float": np.float32, "value_int": np.int64}
_LIST_ATTRS = {"value_floats": np.float32, "value_ints": np.int64}


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return value.values if isinstance(value, gs.Constant) else np.asarray(value)
    for key, dtype in _SCALAR_ATTRS.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in _LIST_ATTRS.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    if "sparse_value" in attrs:
        return numpy_helper.to_array(attrs["sparse_value"]) if hasattr(attrs["sparse_value"], "dims") else None
    return None


@register_pass
class ConstantsToInitializers(Pass):
    """Turn Constant nodes into initializers, so weights given as Constant nodes are recognised."""

    name = "constants-to-initializers"
    exact = True
    description = "Constant nodes become initializers (weights exported as Constant nodes are then recognised)"

    def run(self, ctx: PassContext) -> PassResult:
        graph = ctx.model.graph
        converted, skipped = 0, []
        for node in list(graph.nodes):
            if node.op != "Constant":
                continue
            output = node.outputs[0]
            value = _constant_node_value(node)
            if value is None:
                skipped.append(Skipped(node.name, "Constant with an attribute sparsecc does not read; left as is"))
                continue
            if is_graph_output(graph, output):
                skipped.append(Skipped(node.name, "its output is a graph output; left as a Constant node"))
                continue
            node.outputs.clear()
            output.to_constant(np.asarray(value))
            converted += 1
        return PassResult(converted > 0, converted, skipped, [f"{converted} Constant node(s) became initializers"])


@register_pass
class FoldBatchNorm(Pass):
    """Fold BatchNormalization (inference mode) into the Conv that feeds only it."""

    name = "fold-batchnorm"
    exact = True
    description = "BatchNormalization after a Conv is folded into the Conv's weight and bias"

    def run(self, ctx: PassContext) -> PassResult:
        graph = ctx.model.graph
        folded, skipped = 0, []
        for bn in list(graph.nodes):
            if bn.op != "BatchNormalization":
                continue
            reason = self._why_not(graph, bn)
            if reason:
                skipped.append(Skipped(bn.name or bn.outputs[0].name, reason))
                continue
            self._fold(graph, bn.inputs[0].inputs[0], bn)
            folded += 1
        return PassResult(folded > 0, folded, skipped, [f"{folded} BatchNormalization node(s) folded into Conv"])

    @staticmethod
    def _why_not(graph: gs.Graph, bn: gs.Node) -> str | None:
        if int(bn.attrs.get("training_mode", 0)):
            return "training_mode=1"
        if any(len(out.outputs) or is_graph_output(graph, out) for out in bn.outputs[1:]):
            return "uses the running-statistics outputs"
        if not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
            return "scale, bias, mean or variance is not constant"
        source = bn.inputs[0]
        if not source.inputs or source.inputs[0].op != "Conv":
            producer = source.inputs[0].op if source.inputs else "a graph input"
            return f"input comes from {producer}, not a Conv (left unfused; ONNX Runtime fuses it where it can)"
        conv = source.inputs[0]
        if len(source.outputs) != 1 or is_graph_output(graph, source):
            return "the Conv output is also used elsewhere"
        if not isinstance(conv.inputs[1], gs.Constant) or (len(conv.inputs) > 2 and not conv.inputs[2].is_empty()
                                                          and not isinstance(conv.inputs[2], gs.Constant)):
            return "the Conv weight or bias is not constant"
        if conv.inputs[1].values.shape[0] != bn.inputs[1].values.shape[0]:
            return "channel counts of Conv and BatchNormalization differ"
        return None

    @staticmethod
    def _fold(graph: gs.Graph, conv: gs.Node, bn: gs.Node) -> None:
        gamma, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
        eps = float(bn.attrs.get("epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        weight = conv.inputs[1].values
        has_bias = len(conv.inputs) > 2 and not conv.inputs[2].is_empty()
        bias = conv.inputs[2].values.astype(np.float64) if has_bias else np.zeros_like(mean)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        new_weight = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
        new_bias = ((bias - mean) * scale + beta).astype(weight.dtype)
        conv.inputs[1] = _replace_values(graph, conv.inputs[1], new_weight)
        if has_bias:
            conv.inputs[2] = _replace_values(graph, conv.inputs[2], new_bias)
        else:
            bias_tensor = constant(graph, f"{conv.name or conv.outputs[0].name}.bias", new_bias)
            while len(conv.inputs) < 2:
                conv.inputs.append(gs.Variable.empty())
            conv.inputs.append(bias_tensor)
        result = bn.outputs[0]
        bn.outputs.clear()
        conv.outputs = [result]


def _replace_values(graph: gs.Graph, tensor: gs.Constant, values: np.ndarray) -> gs.Constant:
    """New values for a constant: in place (keeping its name, so plans made outside sparsecc
    still name it) when nothing else reads it, else as a new constant."""
    if len(tensor.outputs) == 1:
        tensor.values = values
        return tensor
    return constant(graph, tensor.name, values)


CANONICAL_PASSES = ("constants-to-initializers", "fold-batchnorm")


def canonicalize(model) -> None:
    """Run the canonical passes in place, without verification (for analysis: inspect, reports).

    Compiles run the same passes through the pass manager, verified.
    """
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    PassManager([make_pass(name) for name in CANONICAL_PASSES], verify=None).run(PassContext(model))

"""Recognise and classify the weight layers of a graph (analysis only, no edits).

A weight layer is a Conv, a Gemm, or a MatMul one of whose inputs is a
constant 2-D weight. Layers are classified the way the pruning passes need:

- ``conv``: standard convolution (group 1, kernel larger than 1x1), of 1, 2 or 3 spatial dims
- ``pointwise``: 1x1 convolution, group 1
- ``depthwise``: group == C_in == C_out
- ``grouped``: any other group > 1
- ``gemm``: Gemm with a constant B (transB honoured)
- ``matmul``: MatMul with a constant right-hand 2-D weight

Nodes that look like weight layers but cannot be treated as one (a weight
computed at run time, a constant on the left of a MatMul) are returned as
:class:`Unsupported` entries with the reason, never dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.graphutil import optional_input
from sparsecc.model import Model

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Layers with weights whose units are coupled over time or heads: listed, never pruned.
SEQUENCE_WEIGHT_OPS = {
    "LSTM": "recurrent layer: every hidden unit feeds every gate at the next time step, so removing or "
            "skipping weights needs the recurrence rewritten; left as it is",
    "GRU": "recurrent layer: every hidden unit feeds every gate at the next time step, so removing or "
           "skipping weights needs the recurrence rewritten; left as it is",
    "RNN": "recurrent layer: every hidden unit feeds itself at the next time step; left as it is",
    "Attention": "fused attention: its heads and projections are one op; left as it is",
    "MultiHeadAttention": "fused attention: its heads and projections are one op; left as it is",
}
# Control-flow ops whose bodies (subgraphs) may hold weight layers.
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
# Layers of quantized graphs (QOperator and integer formats): listed, never pruned.
QUANTIZED_WEIGHT_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                        "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


@dataclass
class WeightLayer:
    """One weight layer: where it is, its kind, and its shapes.

    ``k`` and ``n`` are the GEMM view: the reduction length and the number of
    outputs per group (for Conv, K = C_in/group * kh * kw and N = C_out/group).
    """

    node: str
    op: str
    kind: str
    weight: str
    weight_shape: tuple[int, ...]
    bias: str | None = None
    group: int = 1
    trans_b: bool = False
    input: str = ""
    output: str = ""
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    shared_with: list[str] = field(default_factory=list)

    @property
    def spatial_rank(self) -> int:
        """Spatial dimensions of a Conv's kernel (1 for Conv1d, 2 for Conv2d, 3 for Conv3d); 0 for a GEMM."""
        return len(self.weight_shape) - 2 if self.op == "Conv" else 0

    @property
    def params(self) -> int:
        return int(np.prod(self.weight_shape))

    @property
    def k(self) -> int:
        """Reduction length of the GEMM this layer computes."""
        if self.op == "Conv":
            return int(np.prod(self.weight_shape[1:]))
        return self.weight_shape[1] if self.trans_b else self.weight_shape[0]

    @property
    def n(self) -> int:
        """Output features (per group for Conv)."""
        if self.op == "Conv":
            return self.weight_shape[0] // self.group
        return self.weight_shape[0] if self.trans_b else self.weight_shape[1]

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates at the model's input shape (None if shapes are unknown)."""
        if self.output_shape is None:
            return None
        if self.op == "Conv":
            # every output element (N, C_out, spatial...) sums over C_in/group * kernel taps
            return int(np.prod(self.output_shape)) * int(np.prod(self.weight_shape[1:]))
        return int(np.prod(self.output_shape[:-1])) * self.k * self.n

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(params=self.params, macs=self.macs, k=self.k, n=self.n)
        return data


@dataclass
class Unsupported:
    """A node that looks like a weight layer but is not treated as one, and why.

    ``quantized``: a layer of a quantized graph (an integer op, or a float op whose weight is
    dequantized at run time).
    """

    node: str
    op: str
    reason: str
    quantized: bool = False


def classify_conv(node: gs.Node, weight: np.ndarray) -> str:
    group = int(node.attrs.get("group", 1))
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    c_in = c_in_per_group * group
    if group > 1:
        return "depthwise" if group == c_in == c_out else "grouped"
    if all(s == 1 for s in weight.shape[2:]):
        return "pointwise"
    return "conv"


def _node_label(node: gs.Node) -> str:
    return node.name or f"<{node.op} -> {node.outputs[0].name}>"


def find_weight_layers(model: Model, shapes: dict[str, tuple[int, ...]] | None = None
                       ) -> tuple[list[WeightLayer], list[Unsupported]]:
    """Weight layers of the graph in topological order, and the look-alikes that are not.

    Args:
        model: The model to analyse (not modified).
        shapes: Activation shapes from :func:`sparsecc.shapes.infer_shapes`. Defaults to
            the shapes stored on the graph tensors.
    """
    shapes = shapes or {}
    layers: list[WeightLayer] = []
    unsupported: list[Unsupported] = []
    for node in model.graph.nodes:
        if node.op in SEQUENCE_WEIGHT_OPS and any(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
            unsupported.append(Unsupported(_node_label(node), node.op, SEQUENCE_WEIGHT_OPS[node.op]))
            continue
        if node.op in CONTROL_FLOW_OPS:
            unsupported.extend(_layers_in_bodies(node))
            continue
        if node.op in QUANTIZED_WEIGHT_OPS:
            unsupported.append(Unsupported(_node_label(node), node.op, "quantized layer (integer weights): "
                                           "sparsecc prunes float weights only; left as it is", quantized=True))
            continue
        if node.op not in WEIGHT_OPS:
            continue
        label = _node_label(node)
        layer = _classify(node, label, unsupported)
        if layer is None:
            continue
        layer.input_shape = shapes.get(layer.input) or _static(node.inputs[0].shape)
        layer.output_shape = shapes.get(layer.output) or _static(node.outputs[0].shape)
        layers.append(layer)
    _mark_shared(layers)
    return layers, unsupported


def _layers_in_bodies(node: gs.Node, where: str = "") -> list[Unsupported]:
    """Weight layers inside the bodies of a control-flow node, each listed with why it is left alone."""
    found = []
    for attr, value in node.attrs.items():
        for body in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(body, gs.Graph):
                continue
            place = f"{where}{attr} of {node.op} '{_node_label(node)}'"
            for inner in body.nodes:
                if inner.op in CONTROL_FLOW_OPS:
                    found.extend(_layers_in_bodies(inner, f"{place} > "))
                elif inner.op in WEIGHT_OPS + tuple(SEQUENCE_WEIGHT_OPS) and \
                        any(isinstance(t, gs.Constant) and t.values.ndim >= 2 for t in inner.inputs):
                    found.append(Unsupported(_node_label(inner), inner.op,
                                             f"inside the {place}: which branch or how many iterations run is "
                                             "decided at run time, so layers in control-flow bodies are left "
                                             "as they are"))
    return found


def _static(shape):
    if shape and all(isinstance(d, int) and d > 0 for d in shape):
        return tuple(shape)
    return None


def _weight_source(tensor) -> str:
    if not tensor.inputs:
        return f"graph input '{tensor.name}'"
    return f"node '{_node_label(tensor.inputs[0])}' ({tensor.inputs[0].op})"


def _dequantized(tensor) -> bool:
    return bool(tensor.inputs) and tensor.inputs[0].op == "DequantizeLinear"


def _classify(node: gs.Node, label: str, unsupported: list[Unsupported]) -> WeightLayer | None:
    if node.op == "Conv":
        weight = node.inputs[1]
        if not isinstance(weight, gs.Constant):
            unsupported.append(Unsupported(label, node.op, f"weight '{weight.name}' is not constant: "
                                                           f"it comes from {_weight_source(weight)}",
                                           _dequantized(weight)))
            return None
        values = weight.values
        if values.ndim not in (3, 4, 5):
            unsupported.append(Unsupported(label, node.op, f"{values.ndim - 2}-D convolution; 1-D, 2-D and 3-D "
                                                           "convolutions are weight layers"))
            return None
        bias = getattr(optional_input(node, 2), "name", None)
        return WeightLayer(label, "Conv", classify_conv(node, values), weight.name, tuple(values.shape),
                           bias=bias, group=int(node.attrs.get("group", 1)),
                           input=node.inputs[0].name, output=node.outputs[0].name)
    if node.op == "Gemm":
        weight = node.inputs[1]
        if int(node.attrs.get("transA", 0)):
            unsupported.append(Unsupported(label, node.op, "transA=1 (input transposed) is not handled"))
            return None
        if not isinstance(weight, gs.Constant):
            unsupported.append(Unsupported(label, node.op, f"weight B '{weight.name}' is not constant: "
                                                           f"it comes from {_weight_source(weight)}",
                                           _dequantized(weight)))
            return None
        bias = getattr(optional_input(node, 2), "name", None)
        return WeightLayer(label, "Gemm", "gemm", weight.name, tuple(weight.values.shape), bias=bias,
                           trans_b=bool(int(node.attrs.get("transB", 0))),
                           input=node.inputs[0].name, output=node.outputs[0].name)
    # MatMul: a weight layer only with a constant 2-D right operand
    left, right = node.inputs[0], node.inputs[1]
    if isinstance(right, gs.Constant) and right.values.ndim == 2 and not isinstance(left, gs.Constant):
        return WeightLayer(label, "MatMul", "matmul", right.name, tuple(right.values.shape),
                           input=left.name, output=node.outputs[0].name)
    if isinstance(left, gs.Constant) and not isinstance(right, gs.Constant):
        unsupported.append(Unsupported(label, node.op, "the constant is the left operand; only X @ W "
                                                       "with a constant right-hand weight is a weight layer"))
    elif isinstance(right, gs.Constant) and right.values.ndim != 2:
        unsupported.append(Unsupported(label, node.op, f"the constant operand is {right.values.ndim}-D; "
                                                       "only 2-D weights are weight layers"))
    # two activations (attention scores): not a weight layer, nothing to report
    return None


def _mark_shared(layers: list[WeightLayer]) -> None:
    by_weight: dict[str, list[WeightLayer]] = {}
    for layer in layers:
        by_weight.setdefault(layer.weight, []).append(layer)
    for users in by_weight.values():
        if len(users) > 1:
            for layer in users:
                layer.shared_with = [other.node for other in users if other is not layer]


def analyse_layers(model: Model) -> tuple[list[WeightLayer], list[Unsupported]]:
    """Weight layers with their activation shapes at the model's input shapes."""
    from sparsecc.shapes import infer_shapes

    layers, _ = find_weight_layers(model)
    wanted = {layer.output for layer in layers} | {layer.input for layer in layers}
    return find_weight_layers(model, infer_shapes(model, wanted))

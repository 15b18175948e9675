"""Recognise depthwise-separable blocks (analysis only, no edits).

A depthwise-separable block is PW1 -> DW -> PW2: a pointwise conv that expands
(absent in MobileNetV2's first block, where a standard conv feeds DW), the
depthwise conv, and the pointwise conv that projects, with BatchNorm (folded
or not), activations (ReLU, ReLU6 as Clip, HardSwish, SiLU as x*Sigmoid(x)),
an optional squeeze-excitation (pool -> 1x1 convs -> gate multiplied into the
DW output) and an optional residual Add after PW2 (MobileNetV2/V3,
EfficientNet-B0). Layers are classified by :mod:`sparsecc.layers`; every
depthwise layer is reported, as a block or with the reason it is not one.

The path from DW to PW2 is kept as a list of steps (:class:`PathStep`), so the
dead-channel pass can tell whether a channel whose taps are all pruned reaches
PW2 as a constant (a chain of per-element ops) or not (a squeeze-excitation
gate scales it by an input-dependent factor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from sparsecc.layers import WeightLayer, find_weight_layers
from sparsecc.model import Model

__all__ = ["PathStep", "DscBlock", "NotABlock", "find_dsc_blocks"]

# Per-element ops on the DW -> PW2 path (one activation input; other inputs constant).
_PER_ELEMENT = {"Relu", "Clip", "HardSwish", "Sigmoid", "HardSigmoid", "LeakyRelu", "Identity", "Elu", "Selu",
                "Tanh", "Softplus", "Gelu", "Mish", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Cast"}
_POOLS = {"GlobalAveragePool", "ReduceMean"}
_GATES = {"Sigmoid", "HardSigmoid"}


@dataclass
class PathStep:
    """One step on the DW -> PW2 path.

    Attributes:
        kind: "elementwise" (per-element op, constants only besides the activation), "swish"
            (x * f(x), f a chain of per-element ops: Sigmoid, HardSigmoid, Add -> Clip -> Div ...; the
            chain's nodes, then the Mul), or "se" (squeeze-excitation).
        nodes: The step's node names.
        output: The tensor after the step.
        se_convs: For "se", the conv layers of the excitation (the first reads the DW channels).
    """

    kind: str
    nodes: list[str]
    output: str
    se_convs: list[str] = field(default_factory=list)


@dataclass
class DscBlock:
    """A PW1 -> DW -> PW2 block found in the graph."""

    dw: str
    pw1: str | None
    pw2: str | None
    channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    producer: str | None = None  # the layer feeding DW when it is not a pointwise conv (stem conv)
    path: list[PathStep] = field(default_factory=list)
    residual: bool = False
    stop: str | None = None  # why the walk from DW did not reach a PW2

    @property
    def se(self) -> bool:
        return any(step.kind == "se" for step in self.path)

    def describe(self) -> str:
        parts = [f"{self.pw1 or self.producer or 'input'} -> {self.dw} ({self.channels}ch "
                 f"{self.kernel[0]}x{self.kernel[1]} s{self.strides[0]}) -> {self.pw2 or '?'}"]
        if self.se:
            parts.append("SE")
        if self.residual:
            parts.append("residual")
        if self.stop:
            parts.append(f"({self.stop})")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {"dw": self.dw, "pw1": self.pw1, "pw2": self.pw2, "producer": self.producer,
                "channels": self.channels, "kernel": list(self.kernel), "strides": list(self.strides),
                "dilations": list(self.dilations), "se": self.se, "residual": self.residual,
                "path": [step.kind for step in self.path], "stop": self.stop}


@dataclass
class NotABlock:
    """A depthwise-like layer DEPrune does not treat, and why."""

    layer: str
    reason: str


class _Graph:
    def __init__(self, graph: gs.Graph, layers: list[WeightLayer]):
        self.consumers: dict[str, list[gs.Node]] = {}
        self.producer: dict[str, gs.Node] = {}
        for node in graph.nodes:
            for tensor in node.inputs:
                self.consumers.setdefault(tensor.name, []).append(node)
            for tensor in node.outputs:
                self.producer[tensor.name] = node
        self.outputs = {t.name for t in graph.outputs}
        self.layer_by_output = {layer.output: layer for layer in layers}

    def layer_of(self, node: gs.Node) -> WeightLayer | None:
        return self.layer_by_output.get(node.outputs[0].name) if node.outputs else None


def _variable_inputs(node: gs.Node) -> list[gs.Tensor]:
    return [t for t in node.inputs if not isinstance(t, gs.Constant) and not t.is_empty()]


def _step(g: _Graph, tensor: str) -> PathStep | WeightLayer | str:
    """The next step from ``tensor`` towards PW2: a step, the PW2 layer, or why the walk stops."""
    users = g.consumers.get(tensor, [])
    if tensor in g.outputs:
        return "the DW output is a graph output"
    if not users:
        return "the DW output is not used"
    if len(users) == 1:
        node = users[0]
        layer = g.layer_of(node)
        if node.op == "Conv" and layer is not None:
            if layer.kind == "pointwise" and node.inputs[0].name == tensor:
                return layer
            return f"feeds a {layer.kind} conv '{layer.node}', not a pointwise conv"
        if node.op in _PER_ELEMENT and len(_variable_inputs(node)) == 1:
            return PathStep("elementwise", [node.name], node.outputs[0].name)
        if node.op in ("Add", "Sum"):
            return f"feeds an Add '{node.name}' (a residual add right after DW)"
        return f"feeds {node.op} '{node.name}'"
    ops = {n.op for n in users}
    muls = [n for n in users if n.op == "Mul"]
    if len(users) == 2 and len(muls) == 1 and ops & _GATES:
        gate = next(n for n in users if n.op in _GATES)
        mul = muls[0]
        if {t.name for t in mul.inputs} == {tensor, gate.outputs[0].name}:
            return PathStep("swish", [gate.name, mul.name], mul.outputs[0].name)
    gated = _self_gated(g, users, tensor)
    if gated is not None:
        return gated
    if len(users) == 2 and len(muls) == 1 and ops & _POOLS:
        pool = next(n for n in users if n.op in _POOLS)
        se = _walk_se(g, pool, muls[0], tensor)
        if isinstance(se, PathStep):
            return se
        return se
    return f"has {len(users)} consumers ({', '.join(sorted(n.op for n in users))}): not a block"


def _self_gated(g: _Graph, users: list[gs.Node], tensor: str) -> PathStep | None:
    """x * f(x) with f a short chain of per-element ops: an activation written out (HardSwish as
    x * Clip(x + 3, 0, 6) / 6, SiLU as x * Sigmoid(x), as PaddlePaddle and older exporters write them)."""
    muls = [n for n in users if n.op == "Mul" and tensor in {t.name for t in n.inputs}]
    if len(users) != 2 or len(muls) != 1:
        return None
    mul = muls[0]
    node, chain = next(n for n in users if n is not mul), []
    for _ in range(6):
        if node.op not in _PER_ELEMENT or len(_variable_inputs(node)) != 1:
            return None
        chain.append(node)
        out = node.outputs[0].name
        if {t.name for t in mul.inputs} == {tensor, out}:
            return PathStep("swish", [n.name for n in chain] + [mul.name], mul.outputs[0].name)
        following = g.consumers.get(out, [])
        if len(following) != 1 or out in g.outputs:
            return None
        node = following[0]
    return None


def _walk_se(g: _Graph, pool: gs.Node, mul: gs.Node, tensor: str) -> PathStep | str:
    """pool -> (convs, activations) -> gate -> Mul(tensor, gate): a squeeze-excitation."""
    nodes, convs, current = [pool.name], [], pool.outputs[0].name
    for _ in range(16):
        users = g.consumers.get(current, [])
        if mul in users and len(users) == 1:
            if {t.name for t in mul.inputs} != {tensor, current}:
                return "a Mul after the pool that is not tensor * gate"
            return PathStep("se", nodes + [mul.name], mul.outputs[0].name, convs)
        if len(users) == 2 and any(n.op == "Mul" for n in users) and any(n.op in _GATES for n in users):
            gate = next(n for n in users if n.op in _GATES)  # swish inside the SE
            inner = next(n for n in users if n.op == "Mul")
            nodes += [gate.name, inner.name]
            current = inner.outputs[0].name
            continue
        if len(users) != 1:
            return "squeeze-excitation branch with several consumers"
        node = users[0]
        layer = g.layer_of(node)
        if layer is not None:
            convs.append(layer.node)
        nodes.append(node.name)
        current = node.outputs[0].name
    return "squeeze-excitation branch too long"


def _walk_back(g: _Graph, tensor: str) -> tuple[WeightLayer | None, str | None]:
    """The weight layer that makes DW's input through per-element ops, or the reason there is none."""
    for _ in range(8):
        node = g.producer.get(tensor)
        if node is None:
            return None, "fed by a graph input"
        layer = g.layer_of(node)
        if layer is not None:
            return layer, None
        inputs = _variable_inputs(node)
        if node.op in _PER_ELEMENT | {"Mul"} and inputs:
            tensor = inputs[0].name
            continue
        return None, f"fed by {node.op} '{node.name}'"
    return None, "fed through a long chain of ops"


def _residual(g: _Graph, pw2_output: str, block_input: str | None) -> bool:
    tensor = pw2_output
    for _ in range(4):
        users = g.consumers.get(tensor, [])
        if len(users) != 1:
            return False
        node = users[0]
        if node.op in ("Add", "Sum"):
            return block_input is not None and any(t.name == block_input for t in node.inputs)
        if node.op not in _PER_ELEMENT or len(_variable_inputs(node)) != 1:
            return False
        tensor = node.outputs[0].name
    return False


def find_dsc_blocks(model: Model, layers: list[WeightLayer] | None = None
                    ) -> tuple[list[DscBlock], list[NotABlock]]:
    """Every depthwise layer of the graph as a :class:`DscBlock`, or a :class:`NotABlock` with the reason.

    Depthwise convs with a depth multiplier above 1 (``group == C_in`` and ``C_out = k * C_in``,
    classified "grouped" by :mod:`sparsecc.layers`) are listed as not handled.
    """
    if layers is None:
        layers = find_weight_layers(model)[0]
    g = _Graph(model.graph, layers)
    nodes = {n.outputs[0].name: n for n in model.graph.nodes if n.outputs}
    blocks, others = [], []
    for layer in layers:
        node = nodes[layer.output]
        if layer.kind == "grouped" and layer.weight_shape[1] == 1:
            others.append(NotABlock(layer.node, f"depth multiplier {layer.weight_shape[0] // layer.group} "
                                                f"(C_out {layer.weight_shape[0]} = k x C_in {layer.group}): "
                                                "DEPrune handles depth multiplier 1 only"))
            continue
        if layer.kind != "depthwise":
            continue
        if len(layer.weight_shape) != 4:
            others.append(NotABlock(layer.node, "not a 2-D depthwise conv"))
            continue
        kernel = tuple(int(k) for k in layer.weight_shape[2:])
        block = DscBlock(layer.node, None, None, layer.weight_shape[0], kernel,
                         tuple(int(s) for s in node.attrs.get("strides", [1, 1])),
                         tuple(int(d) for d in node.attrs.get("dilations", [1, 1])))
        producer, why = _walk_back(g, layer.input)
        if producer is not None and producer.kind == "pointwise":
            block.pw1 = producer.node
        elif producer is not None:
            block.producer = producer.node
        tensor = layer.output
        for _ in range(16):
            step = _step(g, tensor)
            if isinstance(step, str):
                block.stop = step
                break
            if isinstance(step, WeightLayer):
                block.pw2 = step.node
                pw1_input = nodes[g.layer_by_output[producer.output].output].inputs[0].name if block.pw1 else \
                    layer.input
                block.residual = _residual(g, step.output, pw1_input)
                break
            block.path.append(step)
            tensor = step.output
        blocks.append(block)
    return blocks, others

"""What a channel that is constant over space becomes on its way from a depthwise conv to PW2.

A depthwise channel whose taps are all pruned outputs its bias everywhere. Between the depthwise
conv and PW2 of a PW1 -> DW -> PW2 block (:mod:`sparsecc.dsc`) lie per-element ops (activation,
swish) and perhaps a squeeze-excitation; the constant each channel is where it reaches PW2 (or the
squeeze-excitation) is computed by running those very ops on ONNX Runtime, so it is what the model
computes. ``deprune-dead-channels`` folds it into a bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dsc import DscBlock
from sparsecc.model import Model


def step_constants(model: Model, nodes: dict[str, gs.Node], step, values: np.ndarray, dtype) -> np.ndarray:
    """A per-element step evaluated by ONNX Runtime on a [1, M, 1, 1] tensor (the graph's own ops)."""
    from sparsecc.backends.ort import OrtBackend

    graph = gs.Graph(opset=model.opset())
    x = gs.Variable("x", dtype=dtype, shape=[1, values.size, 1, 1])
    y = gs.Variable("y", dtype=dtype)
    if step.kind == "swish":  # x * f(x), f a chain of per-element ops (Sigmoid; Add 3 -> Clip -> Div 6 ...)
        current, chain = x, []
        for index, name in enumerate(step.nodes[:-1]):
            node = nodes[name]
            out = gs.Variable(f"g{index}", dtype=dtype)
            chain.append(gs.Node(node.op, attrs=dict(node.attrs), outputs=[out], inputs=[
                current if not isinstance(t, gs.Constant) and not t.is_empty() else t for t in node.inputs]))
            current = out
        graph.nodes = chain + [gs.Node("Mul", inputs=[x, current], outputs=[y])]
    else:
        node = nodes[step.nodes[0]]
        # the one variable input is the activation, wherever it stands (PaddlePaddle writes scale * x)
        inputs = [x if not isinstance(t, gs.Constant) and not t.is_empty() else t for t in node.inputs]
        graph.nodes = [gs.Node(node.op, attrs=dict(node.attrs), inputs=inputs, outputs=[y])]
    graph.inputs, graph.outputs = [x], [y]
    session = OrtBackend(threads=1).load(Model(graph, "dead-channel constant").to_bytes())
    return session.run({"x": values.astype(dtype).reshape(1, -1, 1, 1)})["y"].reshape(-1)


@dataclass
class Reach:
    """How constant DW channels reach PW2: their constant before a squeeze-excitation (if any) and after."""

    before_se: np.ndarray
    se: Any = None  # the PathStep of the squeeze-excitation, or None


def path_constants(model: Model, block: DscBlock, values: np.ndarray, dtype) -> Reach | str:
    """The constant the DW channels ``values`` (constant over space) are where they reach PW2 or an SE.

    A squeeze-excitation must be the last step: after it a channel is its constant times an
    input-dependent gate. Returns why not, as a string, when the path has ops after it.
    """
    nodes = {n.name: n for n in model.graph.nodes}
    current = values
    for index, step in enumerate(block.path):
        if step.kind == "se":
            if index != len(block.path) - 1:
                return "ops between the squeeze-excitation and PW2"
            return Reach(current, step)
        current = step_constants(model, nodes, step, current, dtype)
    return Reach(current)

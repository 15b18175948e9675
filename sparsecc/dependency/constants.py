"""Constant channels: a zero filter whose bias is not zero, folded into the layers that read it.

Structured pruning the usual PyTorch way (``torch.nn.utils.prune.ln_structured``) zeroes conv filters
and leaves BatchNorm as trained. After BatchNorm is folded, such a channel is the constant
``act(bias)`` everywhere, not zero: it cannot simply be removed. Where every layer that reads it is
linear in it and sees it everywhere (a 1x1 or unpadded Conv, a Gemm, a MatMul), its contribution is a
constant vector that moves exactly into the reader's bias; the producer's bias is then zeroed and
the channel is dead (zero everywhere it goes), which the dead-channel analysis removes.

A padded kxk Conv reads zeros at the border instead of the constant, so its output there would
change: such channels are left with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency.edits import consumer_weights
from sparsecc.dependency.types import ChannelGroup
from sparsecc.model import Model

# per-element ops the constant passes through, as numpy functions of (values, node)
_UNARY = {
    "Relu": lambda v, n: np.maximum(v, 0),
    "LeakyRelu": lambda v, n: np.where(v >= 0, v, v * float(n.attrs.get("alpha", 0.01))),
    "Sigmoid": lambda v, n: 1 / (1 + np.exp(-v)),
    "HardSigmoid": lambda v, n: np.clip(float(n.attrs.get("alpha", 0.2)) * v + float(n.attrs.get("beta", 0.5)), 0, 1),
    "HardSwish": lambda v, n: v * np.clip(v / 6 + 0.5, 0, 1),
    "Tanh": lambda v, n: np.tanh(v),
    "Identity": lambda v, n: v,
    # a channel constant over space stays one value per channel through these
    "Flatten": lambda v, n: v,
    "GlobalAveragePool": lambda v, n: v,
}


def _spatial_mean(values: np.ndarray, node: gs.Node) -> np.ndarray | None:
    """A mean over axes other than the channel axis (1) keeps a per-channel constant; None otherwise."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = node.inputs[1].values.reshape(-1).tolist()
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 4
    if axes is None or any(int(a) % rank == 1 for a in axes):  # no axes: a mean over every axis, channels too
        return None
    return values


def _clip(values: np.ndarray, node: gs.Node) -> np.ndarray:
    low = node.inputs[1].values if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant) else None
    high = node.inputs[2].values if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant) else None
    low = node.attrs.get("min", -np.inf) if low is None else float(low)
    high = node.attrs.get("max", np.inf) if high is None else float(high)
    return np.clip(values, low, high)


@dataclass
class ConstantChannels:
    """Channels of one group that are a constant, and where it goes.

    Attributes:
        group: The channel group.
        channels: The constant channels (their filters are zero).
        producer: The layer whose zero filters make them; its bias holds the constants.
        readers: (node, constant seen by that node for each channel) for every layer that reads them.
    """

    group: ChannelGroup
    channels: np.ndarray
    producer: str
    readers: list[tuple[str, np.ndarray]] = field(default_factory=list)


def find_constant_channels(model: Model, groups: list[ChannelGroup]) -> tuple[list[ConstantChannels], list[str]]:
    """Groups with zero filters and a non-zero bias that can be folded, and why others cannot (messages)."""
    nodes = {n.name: n for n in model.graph.nodes}
    found, why_not = [], []
    for group in groups:
        producers = [u for u in group.producers if u.kind == "weight"]
        if not group.editable() or not group.consumers or len(producers) != 1 or producers[0].axis != 0:
            continue
        node = nodes.get(producers[0].node)
        if node is None or node.op not in ("Conv", "Gemm") or len(node.inputs) < 3 or \
                not isinstance(node.inputs[2], gs.Constant) or int(node.attrs.get("group", 1)) != 1:
            continue
        weight, bias = node.inputs[1].values, node.inputs[2].values.reshape(-1)
        if weight.shape[0] != group.size or bias.size != group.size:
            continue
        zero = ~weight.reshape(group.size, -1).any(axis=1)
        channels = np.flatnonzero(zero & (bias != 0))
        if not channels.size or channels.size == group.size:
            continue
        readers = _readers(model, node, bias[channels].astype(np.float64))
        if isinstance(readers, str):
            why_not.append(f"{channels.size} constant channel(s) of '{node.name}' kept: {readers}")
            continue
        expected = {u.node for u in group.consumers}
        if {name for name, _ in readers} != expected:
            why_not.append(f"{channels.size} constant channel(s) of '{node.name}' kept: they reach other layers "
                           "than the channel analysis found")
            continue
        found.append(ConstantChannels(group, channels, node.name, readers))
    return found, why_not


def _readers(model: Model, producer: gs.Node, values: np.ndarray) -> list[tuple[str, np.ndarray]] | str:
    """Every layer the producer's output reaches through per-element ops, with the constant it sees there."""
    outputs = {id(t) for t in model.graph.outputs}
    readers, todo = [], [(producer.outputs[0], values, np.zeros_like(values))]
    while todo:
        tensor, value, at_zero = todo.pop()
        if id(tensor) in outputs:
            return f"'{tensor.name}' is a graph output"
        for user in tensor.outputs:
            if user.op in ("Conv", "Gemm", "MatMul") and user.inputs[0] is tensor and \
                    isinstance(user.inputs[1], gs.Constant):
                reason = _why_not_linear_reader(user)
                if reason:
                    return reason
                if np.any(at_zero != 0):
                    return f"the activations before '{user.name}' are not zero at zero, so the emptied channel " \
                           "would not be dead"
                readers.append((user.name, value))
                continue
            step = _UNARY.get(user.op) or {"Clip": _clip, "ReduceMean": _spatial_mean}.get(user.op)
            if step is not None and step(value, user) is None:
                step = None
            if step is None or len([t for t in user.inputs if isinstance(t, gs.Variable)]) != 1:
                return f"it reaches {user.op} '{user.name}', which the constant cannot be followed through"
            todo.append((user.outputs[0], step(value, user), step(at_zero, user)))
    return readers


def _why_not_linear_reader(node: gs.Node) -> str | None:
    if node.op == "Conv":
        if int(node.attrs.get("group", 1)) != 1:
            return f"'{node.name}' is a grouped conv"
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if any(int(p) for p in node.attrs.get("pads", [])) or auto_pad not in ("NOTSET", "VALID"):
            return f"'{node.name}' pads its input with zeros, so at the border it does not see the constant"
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return f"'{node.name}' transposes its input"
    return None


def fold_constant_channels(model: Model, found: list[ConstantChannels]) -> int:
    """Move each constant into its readers' biases and zero it at the producer; returns channels folded."""
    from sparsecc.graphutil import constant

    graph = model.graph
    nodes = {n.name: n for n in graph.nodes}
    folded = 0
    for item in found:
        weights = dict(zip([u.node for u in item.group.consumers], consumer_weights(model, item.group)))
        for name, value in item.readers:
            reader, read = nodes[name], weights[name]  # [K_out, C, ...]
            part = read[:, item.channels].reshape(read.shape[0], item.channels.size, -1).astype(np.float64)
            shift = np.einsum("kcs,c->k", part, value)
            _add_to_bias(graph, reader, shift)
        producer = nodes[item.producer]
        bias = producer.inputs[2].values.copy()
        bias.reshape(-1)[item.channels] = 0
        producer.inputs[2] = constant(graph, producer.inputs[2].name, bias)
        folded += int(item.channels.size)
    return folded


def _add_to_bias(graph: gs.Graph, node: gs.Node, shift: np.ndarray) -> None:
    """node's output += shift (per output channel or feature): into its bias, or an Add after a MatMul."""
    from sparsecc.graphutil import constant

    dtype = node.inputs[1].values.dtype
    if node.op == "MatMul":
        out = node.outputs[0]
        moved = gs.Variable(f"{out.name}/before_constant_channels", dtype=out.dtype)
        node.outputs[0] = moved
        graph.nodes.append(gs.Node("Add", f"{node.name}/constant_channels",
                                   inputs=[moved, constant(graph, f"{node.name}/constant_channels",
                                                           shift.astype(dtype))], outputs=[out]))
        return
    has_bias = len(node.inputs) > 2 and not node.inputs[2].is_empty()
    if node.op == "Gemm":  # alpha * A @ B + beta * C (a bias added here is read with beta 1)
        shift = shift * float(node.attrs.get("alpha", 1.0)) / (float(node.attrs.get("beta", 1.0)) if has_bias else 1.0)
        if not has_bias:
            node.attrs["beta"] = 1.0
    if has_bias:
        old = node.inputs[2].values.astype(np.float64)
        new = old + shift.reshape(old.shape) if old.size == shift.size else np.broadcast_to(old, shift.shape) + shift
        node.inputs[2] = constant(graph, node.inputs[2].name, new.astype(node.inputs[2].values.dtype))
    else:
        node.inputs.append(constant(graph, f"{node.name}/bias", shift.astype(dtype)))

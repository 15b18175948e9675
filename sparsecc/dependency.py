"""Which channels of a graph are coupled, and the physical edit that removes or reorders them.

Removing output filter ``c`` of a Conv is only possible together with everything
else that indexes the same channel: the consumers' input channels, the bias and
BatchNorm parameters, a depthwise conv on the way, the other branch of a
residual Add, the squeeze-excitation scale multiplied into it, the block of
H*W features a Flatten turns it into before a Gemm. Following Torch-Pruning,
the analysis (:func:`build_channel_groups`) is kept apart from the edit
(:func:`reindex_channels`): the analysis walks the graph once, gives every
activation tensor a *channel layout* (which channel spaces its channel axis is
made of, at which offsets), unites the spaces that elementwise ops couple, and
returns one :class:`ChannelGroup` per set of coupled channels, with every
constant (or count: Split sizes, Reshape dims, the ``group`` of a depthwise
conv) that indexes them.

Anything the analysis does not understand on a channel path blocks the group,
with the reason: it never guesses. Graph outputs (the channel count is part of
the model's interface), shared weights, Reshapes that mix the channel axis with
others and ops that mix channels (Softmax over channels, LayerNorm over
channels, grouped convs) are blockers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.errors import PlanError, ShapeError
from sparsecc.model import Model

__all__ = ["ChannelUse", "ChannelGroup", "build_channel_groups", "reindex_channels", "reindex_groups",
           "producer_weights", "consumer_weights"]

# Ops that act on each element independently (one input activation).
_UNARY = {
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Identity", "Dropout", "Cast", "Mish", "ThresholdedRelu", "Sin", "Cos", "Clip", "IsNaN", "IsInf",
}
# Elementwise ops with broadcasting between several inputs.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"}
# Spatial ops that keep channel c of the output equal to a function of channel c of the input (NC... layout).
_SPATIAL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare"}
_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}


@dataclass
class ChannelUse:
    """One place that indexes a group's channels.

    Attributes:
        node: Node name.
        tensor: The constant edited along ``axis`` (conv weight or bias, BN parameter, per-channel
            Mul/Add constant, Gemm weight, Split sizes, Reshape shape), or, for ``kind == "attr"``,
            the name of the node attribute (``group`` of a depthwise conv, ``split``).
        axis: Axis of ``tensor`` that holds the channels (for counts: the element of the 1-D constant).
        offset: Where this use's channels start along ``axis`` (Concat inputs, Split outputs).
        stride: Elements per channel along ``axis`` (after Flatten/Reshape into a Gemm, one channel
            is a block of H*W features).
        start: First channel of the group this use covers (a Split output covers a part).
        count: Number of the group's channels covered. Defaults to all.
        kind: "weight" (a filter or input-channel slice of a Conv/Gemm/MatMul weight), "param"
            (per-channel bias, BN, scale), "count" (an integer in a constant that counts channels:
            Split sizes, Reshape dims, Slice bounds), "attr" (an integer attribute that counts them).
    """

    node: str
    tensor: str
    axis: int
    offset: int = 0
    stride: int = 1
    start: int = 0
    count: int | None = None
    kind: str = "weight"

    def covered(self, size: int) -> int:
        return size - self.start if self.count is None else self.count

    def positions(self, size: int, indices: np.ndarray) -> np.ndarray:
        """Where the group's channels ``indices`` lie along ``axis``, in the order given.

        Channels this use does not cover are left out; each covered channel takes ``stride``
        consecutive positions. ``size`` is the group's channel count.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        count = self.covered(size)
        inside = indices[(indices >= self.start) & (indices < self.start + count)] - self.start
        return (self.offset + inside[:, None] * self.stride + np.arange(self.stride)[None, :]).reshape(-1)


@dataclass
class ChannelGroup:
    """A set of coupled channels: removing channel ``i`` edits every use at its index ``i``.

    Attributes:
        id: Stable name (the first producer's node and tensor).
        size: Number of coupled channels.
        producers: Uses whose OUTPUT channels are these channels (conv weight axis 0, bias, BN,
            depthwise weight, per-channel constants), plus the counts and attributes to update.
        consumers: Uses whose INPUT channels read these channels (conv weight axis 1, Gemm/MatMul K).
        blockers: Why the group must not be edited; empty means editable.
    """

    id: str
    size: int
    producers: list[ChannelUse] = field(default_factory=list)
    consumers: list[ChannelUse] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    def editable(self) -> bool:
        return not self.blockers

    def weight_nodes(self) -> list[str]:
        """Nodes whose weight produces these channels (for messages and layer selection)."""
        return _dedupe(u.node for u in self.producers if u.kind == "weight")

    def to_dict(self) -> dict:
        return {"id": self.id, "size": self.size, "producers": self.weight_nodes(),
                "consumers": _dedupe(u.node for u in self.consumers), "blockers": list(self.blockers)}


def _dedupe(items) -> list:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Segment:
    space: int | None  # None: channels that come from no prunable producer (graph input, opaque op)
    start: int
    length: int


@dataclass(frozen=True)
class _Layout:
    """What the channel axis of one activation tensor is made of."""

    axis: int
    rank: int
    stride: int
    segments: tuple[_Segment, ...]

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segments)

    def offsets(self):
        position = 0
        for segment in self.segments:
            yield position, segment
            position += segment.length

    def sliced(self, low: int, high: int) -> tuple[_Segment, ...]:
        """Segments covering channels [low, high) of this tensor."""
        pieces = []
        for position, seg in self.offsets():
            a, b = max(low, position), min(high, position + seg.length)
            if a < b:
                pieces.append(_Segment(seg.space, seg.start + a - position, b - a))
        return tuple(pieces)


class _Analysis:
    def __init__(self, model: Model):
        from sparsecc.shapes import infer_shapes

        self.model = model
        self.graph = model.graph
        wanted = {t.name for t in self.graph.tensors().values() if isinstance(t, gs.Variable)}
        self.shapes = infer_shapes(model, wanted=wanted)
        self.layouts: dict[str, _Layout] = {}
        self.sizes: list[int] = []
        self.parent: list[int] = []
        self.producers: list[list[ChannelUse]] = []
        self.consumers: list[list[ChannelUse]] = []
        self.blockers: list[list[str]] = []
        self.names: list[str] = []

    # -- spaces and union-find ------------------------------------------------------------------
    def new_space(self, size: int, name: str) -> int:
        self.sizes.append(size)
        self.parent.append(len(self.parent))
        self.producers.append([])
        self.consumers.append([])
        self.blockers.append([])
        self.names.append(name)
        return len(self.sizes) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def block(self, layout: _Layout | None, reason: str) -> None:
        if layout is None:
            return
        for seg in layout.segments:
            if seg.space is not None and reason not in self.blockers[seg.space]:
                self.blockers[seg.space].append(reason)

    def add_uses(self, layout: _Layout, node: gs.Node, tensor: str, axis: int, kind: str, consumer: bool,
                 low: int = 0, high: int | None = None) -> None:
        """Record a use of every segment of ``layout`` (channels [low, high) of it) on ``tensor``."""
        high = layout.channels if high is None else high
        for position, seg in _Layout(layout.axis, layout.rank, layout.stride, layout.sliced(low, high)) \
                .offsets():
            if seg.space is None:
                continue
            use = ChannelUse(_node_key(node), tensor, axis, offset=position * layout.stride,
                             stride=layout.stride, start=seg.start, count=seg.length, kind=kind)
            (self.consumers if consumer else self.producers)[seg.space].append(use)

    # -- helpers ------------------------------------------------------------------------------------
    def shape(self, tensor) -> tuple[int, ...] | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes.get(tensor.name)

    def label(self, node: gs.Node) -> str:
        return f"{node.op} '{_node_key(node)}'"

    def check_private(self, node: gs.Node, const: gs.Constant, layout: _Layout) -> bool:
        """A weight or parameter constant edited along the channels must belong to this node alone."""
        users = _dedupe(_node_key(n) for n in const.outputs)
        if len(users) > 1:
            self.block(layout, f"constant '{const.name}' of {self.label(node)} is shared by nodes {users}; "
                               "editing it for one would change the others")
            return False
        return True

    def set_output(self, node: gs.Node, layout: _Layout | None, index: int = 0) -> None:
        if layout is not None and index < len(node.outputs):
            self.layouts[node.outputs[index].name] = layout

    # -- walk ---------------------------------------------------------------------------------------
    def run(self) -> list[ChannelGroup]:
        for node in _topological(self.graph):
            self.visit(node)
        for tensor in self.graph.outputs:
            self.block(self.layouts.get(tensor.name),
                       f"tensor '{tensor.name}' is a graph output: its channel count is part of the model's "
                       "interface")
        return self.groups()

    def visit(self, node: gs.Node) -> None:
        inputs = [(t, self.layouts.get(t.name)) for t in node.inputs if isinstance(t, gs.Variable)]
        channel_inputs = [lay for _, lay in inputs if lay is not None]
        op = node.op
        if op in ("Conv", "ConvTranspose"):
            return self.conv(node)
        if op in ("Gemm", "MatMul"):
            return self.gemm(node)
        if not channel_inputs:
            return  # nothing prunable flows through this node
        if node.domain not in (None, "", "ai.onnx"):
            return self.opaque(node, channel_inputs, f"custom op {node.domain}::{op}")
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            return handler(node)
        if op in _UNARY:
            return self.unary(node)
        if op in _ELEMENTWISE:
            return self.elementwise(node)
        if op in _SPATIAL:
            return self.spatial(node)
        if op in _REDUCE:
            return self.reduce(node)
        if op in _SOFTMAX:
            return self.softmax(node)
        self.opaque(node, channel_inputs, f"{self.label(node)} reads these channels and sparsecc does not "
                                          "know how it uses them")

    def opaque(self, node: gs.Node, layouts: list[_Layout], reason: str) -> None:
        for layout in layouts:
            self.block(layout, reason)

    # -- producers/consumers --------------------------------------------------------------------------
    def conv(self, node: gs.Node) -> None:
        x = self.layouts.get(node.inputs[0].name)
        weight = node.inputs[1]
        if not isinstance(weight, gs.Constant):
            self.block(x, f"{self.label(node)} has a weight computed at run time")
            return
        if x is not None and (x.axis != 1 or x.stride != 1):
            self.block(x, f"{self.label(node)} reads a tensor whose channels are not on axis 1")
            x = None
        w = weight.values
        group = int(node.attrs.get("group", 1))
        bias = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
        transpose = node.op == "ConvTranspose"
        in_axis, out_axis = (0, 1) if transpose else (1, 0)
        c_in = w.shape[in_axis] * (1 if transpose else group)
        c_out = w.shape[out_axis] * (group if transpose else 1)
        rank = len(self.shape(node.outputs[0]) or (0,) * w.ndim)
        if group > 1 and not transpose and group == c_in == c_out:
            # depthwise: output channel c is a function of input channel c alone
            if x is None:
                return
            if self.check_private(node, weight, x):
                self.add_uses(x, node, weight.name, 0, "weight", consumer=False)
                self.add_uses(x, node, "group", 0, "attr", consumer=False)
                if bias is not None and self.bias_ok(node, bias, x):
                    self.add_uses(x, node, bias.name, 0, "param", consumer=False)
            self.set_output(node, x)
            return
        if group > 1:
            reason = (f"{self.label(node)} is a grouped convolution (group={group}): removing channels must "
                      f"keep all {group} groups the same size, which sparsecc does not edit")
            self.block(x, reason)
            space = self.new_space(c_out, _node_key(node))
            self.blockers[space].append(reason)
            self.set_output(node, _Layout(1, rank, 1, (_Segment(space, 0, c_out),)))
            return
        if x is not None:
            if self.check_private(node, weight, x):
                self.add_uses(x, node, weight.name, in_axis, "weight", consumer=True)
        space = self.new_space(c_out, _node_key(node))
        out = _Layout(1, rank, 1, (_Segment(space, 0, c_out),))
        if self.check_private(node, weight, out):
            self.add_uses(out, node, weight.name, out_axis, "weight", consumer=False)
            if bias is not None and self.bias_ok(node, bias, out):
                self.add_uses(out, node, bias.name, 0, "param", consumer=False)
        self.set_output(node, out)

    def bias_ok(self, node: gs.Node, bias, layout: _Layout) -> bool:
        if not isinstance(bias, gs.Constant):
            self.block(layout, f"{self.label(node)} has a bias computed at run time")
            return False
        return self.check_private(node, bias, layout)

    def gemm(self, node: gs.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        x = self.layouts.get(a.name)
        if node.op == "MatMul" and isinstance(a, gs.Constant):
            self.block(self.layouts.get(b.name), f"{self.label(node)} multiplies a constant by these channels")
            return
        if not isinstance(b, gs.Constant) or b.values.ndim != 2:
            # two activations (attention) or a weight computed at run time
            for layout in (x, self.layouts.get(b.name)):
                self.block(layout, f"{self.label(node)} multiplies two activations or a non-2-D constant; "
                                   "sparsecc does not edit its channels")
            return
        w = b.values
        trans_b = node.op == "Gemm" and bool(int(node.attrs.get("transB", 0)))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        out_shape = self.shape(node.outputs[0])
        rank = len(out_shape) if out_shape else 2
        if x is not None:
            ok = x.axis == x.rank - 1 and (node.op == "MatMul" or not int(node.attrs.get("transA", 0)))
            if not ok:
                self.block(x, f"{self.label(node)} reduces over an axis that is not these channels' axis")
            elif self.check_private(node, b, x):
                self.add_uses(x, node, b.name, k_axis, "weight", consumer=True)
        space = self.new_space(w.shape[n_axis], _node_key(node))
        out = _Layout(rank - 1, rank, 1, (_Segment(space, 0, w.shape[n_axis]),))
        if self.check_private(node, b, out):
            self.add_uses(out, node, b.name, n_axis, "weight", consumer=False)
        if node.op == "Gemm" and len(node.inputs) > 2 and not node.inputs[2].is_empty():
            self.constant_operand(node, node.inputs[2], out)
        self.set_output(node, out)

    # -- channel-preserving ops --------------------------------------------------------------------
    def unary(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        for extra in node.inputs[1:]:  # Clip min/max: scalars
            if isinstance(extra, gs.Variable) and not extra.is_empty() and extra.name in self.layouts:
                self.block(x, f"{self.label(node)} takes a second channel tensor")
        self.set_output(node, x)

    def spatial(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        if x.axis != 1 or x.stride != 1:
            self.block(x, f"{self.label(node)} pools over the axis that holds these channels")
            return
        self.set_output(node, x)

    def op_BatchNormalization(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        if x.axis != 1 or x.stride != 1:
            return self.block(x, f"{self.label(node)} normalises an axis that is not these channels' axis")
        for param in node.inputs[1:5]:
            if not isinstance(param, gs.Constant):
                return self.block(x, f"{self.label(node)} has parameters computed at run time")
        if all(self.check_private(node, p, x) for p in node.inputs[1:5]):
            for param in node.inputs[1:5]:
                self.add_uses(x, node, param.name, 0, "param", consumer=False)
        self.set_output(node, x)

    def op_InstanceNormalization(self, node: gs.Node) -> None:
        self.op_BatchNormalization_like(node, node.inputs[1:3])

    def op_BatchNormalization_like(self, node: gs.Node, params) -> None:
        x = self.layouts[node.inputs[0].name]
        if x.axis != 1 or x.stride != 1 or not all(isinstance(p, gs.Constant) for p in params):
            return self.block(x, f"{self.label(node)}: channels not on axis 1 or parameters not constant")
        if all(self.check_private(node, p, x) for p in params):
            for param in params:
                self.add_uses(x, node, param.name, 0, "param", consumer=False)
        self.set_output(node, x)

    def op_LayerNormalization(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        axis = int(node.attrs.get("axis", -1)) % x.rank
        if x.axis >= axis:
            return self.block(x, f"{self.label(node)} normalises over these channels (mean and variance mix "
                                 "them)")
        self.set_output(node, x)

    def softmax(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        axis = int(node.attrs.get("axis", -1)) % x.rank
        if axis == x.axis:
            return self.block(x, f"{self.label(node)} normalises over these channels")
        self.set_output(node, x)

    def reduce(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        axes = self.int_list(node, "axes", 1)
        if axes is None:
            return self.block(x, f"{self.label(node)} has reduction axes computed at run time")
        axes = [a % x.rank for a in axes] if axes else list(range(x.rank))
        if x.axis in axes:
            return self.block(x, f"{self.label(node)} reduces over these channels")
        keep = int(node.attrs.get("keepdims", 1))
        axis = x.axis if keep else x.axis - sum(a < x.axis for a in axes)
        self.set_output(node, replace(x, axis=axis, rank=x.rank if keep else x.rank - len(axes)))

    def int_list(self, node: gs.Node, name: str, index: int) -> list[int] | None:
        """An int-list operand given as attribute (old opsets) or constant input; None if computed."""
        if name in node.attrs:
            return [int(v) for v in node.attrs[name]]
        if len(node.inputs) > index and not node.inputs[index].is_empty():
            tensor = node.inputs[index]
            return [int(v) for v in np.ravel(tensor.values)] if isinstance(tensor, gs.Constant) else None
        return []

    def elementwise(self, node: gs.Node) -> None:
        out_shape = self.shape(node.outputs[0])
        if out_shape is None:
            return self.opaque(node, [self.layouts[t.name] for t in node.inputs if t.name in self.layouts],
                               f"{self.label(node)}: output shape unknown")
        rank = len(out_shape)
        acts = [t for t in node.inputs if isinstance(t, gs.Variable) and not t.is_empty()]
        laid = [(t, self.layouts[t.name]) for t in acts if t.name in self.layouts]
        # the channel axis of the output, counted from the right (numpy broadcasting aligns there)
        from_right = {lay.rank - lay.axis for _, lay in laid}
        strides = {lay.stride for _, lay in laid}
        if len(from_right) != 1 or len(strides) != 1:
            return self.opaque(node, [lay for _, lay in laid],
                               f"{self.label(node)} combines tensors whose channels lie on different axes")
        axis = rank - from_right.pop()
        channels = out_shape[axis]
        full = [lay for _, lay in laid if lay.channels * lay.stride == channels]
        for t, lay in laid:
            if lay.channels * lay.stride != channels:
                self.block(lay, f"{self.label(node)} broadcasts tensor '{t.name}' along the channel axis")
        for t in acts:
            if t.name not in self.layouts:
                shape = self.shape(t)
                dim = _dim_from_right(shape, rank - axis)
                if shape is None or dim not in (1, None):
                    for lay in full:
                        self.block(lay, f"{self.label(node)} combines these channels with tensor '{t.name}', "
                                        "whose channels cannot be removed")
        if not full:
            return
        out = replace(full[0], axis=axis, rank=rank)
        for lay in full[1:]:
            self.unify(out, lay, node)
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                self.constant_operand(node, t, out)
        self.set_output(node, out)

    def constant_operand(self, node: gs.Node, const: gs.Constant, out: _Layout) -> None:
        """A constant broadcast against ``out``: per-channel (edited with it) or not on the channel axis."""
        shape = const.values.shape
        right = out.rank - out.axis
        dim = _dim_from_right(shape, right)
        if dim is None or dim == 1:
            return
        if dim != out.channels * out.stride or len(shape) > out.rank:
            self.block(out, f"{self.label(node)}: constant '{const.name}' {list(shape)} does not broadcast per "
                            "channel")
            return
        if self.check_private(node, const, out):
            self.add_uses(out, node, const.name, len(shape) - right, "param", consumer=False)

    def unify(self, a: _Layout, b: _Layout, node: gs.Node) -> None:
        same = len(a.segments) == len(b.segments) and all(
            x.length == y.length for x, y in zip(a.segments, b.segments))
        if not same:
            reason = (f"{self.label(node)} couples channels whose Concat/Split boundaries differ "
                      "(not supported)")
            self.block(a, reason)
            self.block(b, reason)
            return
        for x, y in zip(a.segments, b.segments):
            if x.space is None and y.space is None:
                continue
            if x.space is None or y.space is None:
                self.block(a, f"{self.label(node)} adds channels that cannot be removed")
                self.block(b, f"{self.label(node)} adds channels that cannot be removed")
                continue
            if x == y:
                continue
            if x.start == 0 == y.start and x.length == self.sizes[x.space] == self.sizes[y.space]:
                self.union(x.space, y.space)
            else:
                reason = f"{self.label(node)} couples parts of channel groups (after a Split or Slice)"
                self.block(a, reason)
                self.block(b, reason)

    # -- layout-changing ops ------------------------------------------------------------------------
    def op_Concat(self, node: gs.Node) -> None:
        out_shape = self.shape(node.outputs[0])
        laid = [self.layouts.get(t.name) for t in node.inputs]
        present = [lay for lay in laid if lay is not None]
        if out_shape is None:
            return self.opaque(node, present, f"{self.label(node)}: output shape unknown")
        rank = len(out_shape)
        axis = int(node.attrs.get("axis", 0)) % rank
        if any(lay.axis != axis for lay in present):
            # concatenation along another axis: channel i of every input is channel i of the output
            if all(lay.axis == present[0].axis for lay in present) and len(present) == len(laid):
                out = present[0]
                for lay in present[1:]:
                    self.unify(out, lay, node)
                return self.set_output(node, out)
            return self.opaque(node, present, f"{self.label(node)} concatenates along a non-channel axis tensors "
                                              "with different channel layouts")
        stride = present[0].stride
        segments = []
        for tensor, lay in zip(node.inputs, laid):
            if lay is None:
                shape = self.shape(tensor)
                if shape is None or shape[axis] % stride:
                    return self.opaque(node, present, f"{self.label(node)}: input '{tensor.name}' has an unknown "
                                                      "or misaligned size")
                segments.append(_Segment(None, 0, shape[axis] // stride))
            elif lay.stride != stride:
                return self.opaque(node, present, f"{self.label(node)} concatenates blocks of different sizes")
            else:
                segments.extend(lay.segments)
        self.set_output(node, _Layout(axis, rank, stride, tuple(segments)))

    def op_Split(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        axis = int(node.attrs.get("axis", 0)) % x.rank
        if axis != x.axis:
            for index in range(len(node.outputs)):
                self.set_output(node, x, index)
            return
        if x.stride != 1:
            return self.block(x, f"{self.label(node)} splits flattened channel blocks")
        if "split" in node.attrs:
            sizes, where, kind = [int(v) for v in node.attrs["split"]], "split", "attr"
        elif len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
            sizes, where, kind = [int(v) for v in node.inputs[1].values], node.inputs[1].name, "count"
        else:
            return self.block(x, f"{self.label(node)} splits into equal parts (or sizes computed at run time); "
                                 "removing channels would change where it cuts")
        low = 0
        for index, size in enumerate(sizes):
            piece = _Layout(axis, x.rank, 1, x.sliced(low, low + size))
            self.add_uses(x, node, where, index, kind, consumer=False, low=low, high=low + size)
            self.set_output(node, piece, index)
            low += size

    def op_Slice(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        constants = node.inputs[1:5]
        if "starts" in node.attrs or not all(isinstance(t, gs.Constant) for t in constants if not t.is_empty()):
            return self.block(x, f"{self.label(node)} has bounds computed at run time or given as attributes")
        starts, ends = [int(v) for v in constants[0].values], [int(v) for v in constants[1].values]
        axes = [int(v) for v in constants[2].values] if len(constants) > 2 and not constants[2].is_empty() \
            else list(range(len(starts)))
        steps = [int(v) for v in constants[3].values] if len(constants) > 3 and not constants[3].is_empty() \
            else [1] * len(starts)
        axes = [a % x.rank for a in axes]
        if x.axis not in axes:
            return self.set_output(node, x)
        index = axes.index(x.axis)
        dim = x.channels * x.stride
        start, end, step = starts[index], ends[index], steps[index]
        if step != 1 or start < 0 or end < 0 or x.stride != 1:
            return self.block(x, f"{self.label(node)} slices these channels with a negative bound or a step")
        end_clamped = min(end, dim)
        if start:
            self.add_uses(x, node, constants[0].name, index, "count", consumer=False, low=0, high=start)
        if end < dim:
            self.add_uses(x, node, constants[1].name, index, "count", consumer=False, low=0, high=end_clamped)
        self.set_output(node, _Layout(x.axis, x.rank, 1, x.sliced(start, end_clamped)))

    def op_Flatten(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        in_shape = self.shape(node.inputs[0])
        axis = int(node.attrs.get("axis", 1)) % x.rank if x.rank else 0
        if in_shape is None or axis != x.axis:
            return self.block(x, f"{self.label(node)} flattens these channels together with a leading axis")
        inner = int(np.prod(in_shape[axis + 1:], dtype=np.int64))
        self.set_output(node, _Layout(1, 2, x.stride * inner, x.segments))

    def op_Reshape(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        in_shape, out_shape = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        target = node.inputs[1]
        if in_shape is None or out_shape is None:
            return self.block(x, f"{self.label(node)}: shapes unknown")
        a = x.axis
        if tuple(out_shape[:a]) != tuple(in_shape[:a]):
            return self.block(x, f"{self.label(node)} reshapes the axes before the channels "
                                 f"({list(in_shape)} -> {list(out_shape)})")
        inner = int(np.prod(in_shape[a + 1:], dtype=np.int64))
        if out_shape[a] == in_shape[a] and int(np.prod(out_shape[a + 1:], dtype=np.int64)) == inner:
            out = _Layout(a, len(out_shape), x.stride, x.segments)  # only the axes after the channels change
        elif len(out_shape) == a + 1 and out_shape[a] == in_shape[a] * inner:
            out = _Layout(a, a + 1, x.stride * inner, x.segments)  # flatten: one channel = a block
        else:
            return self.block(x, f"{self.label(node)} mixes the channel axis with others "
                                 f"({list(in_shape)} -> {list(out_shape)})")
        if not isinstance(target, gs.Constant):
            return self.block(x, f"{self.label(node)} takes its shape from a tensor computed at run time "
                                 f"('{target.name}'), which would keep the old channel count")
        if int(target.values[a]) > 0:
            # a hard-coded channel dimension: decreased with the channels removed
            self.add_uses(out, node, target.name, a, "count", consumer=False)
        self.set_output(node, out)

    def op_Transpose(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        perm = [int(p) for p in node.attrs.get("perm", list(reversed(range(x.rank))))]
        if x.stride != 1:
            return self.block(x, f"{self.label(node)} transposes flattened channel blocks")
        self.set_output(node, replace(x, axis=perm.index(x.axis)))

    def op_Squeeze(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        out_shape = self.shape(node.outputs[0])
        axes = self.int_list(node, "axes", 1)
        if axes is None or out_shape is None:
            return self.block(x, f"{self.label(node)} has axes computed at run time")
        in_shape = self.shape(node.inputs[0])
        axes = [a % x.rank for a in axes] if axes else [i for i, d in enumerate(in_shape or ()) if d == 1]
        if x.axis in axes:
            return self.block(x, f"{self.label(node)} squeezes the channel axis")
        self.set_output(node, replace(x, axis=x.axis - sum(a < x.axis for a in axes), rank=len(out_shape)))

    def op_Unsqueeze(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        axes = self.int_list(node, "axes", 1)
        if not axes:
            return self.block(x, f"{self.label(node)} has axes computed at run time")
        rank = x.rank + len(axes)
        axis = x.axis
        for a in sorted(a % rank for a in axes):
            if a <= axis:
                axis += 1
        self.set_output(node, replace(x, axis=axis, rank=rank))

    def op_Pad(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        pads = self.int_list(node, "pads", 1)
        if pads is None or (len(node.inputs) > 3 and not node.inputs[3].is_empty()):
            return self.block(x, f"{self.label(node)} has pads computed at run time or explicit axes")
        if pads and (pads[x.axis] or pads[x.axis + x.rank]):
            return self.block(x, f"{self.label(node)} pads the channel axis")
        self.set_output(node, x)

    def op_Resize(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        in_shape, out_shape = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        sizes = node.inputs[3] if len(node.inputs) > 3 and not node.inputs[3].is_empty() else None
        if in_shape is None or out_shape is None or in_shape[x.axis] != out_shape[x.axis] or x.stride != 1:
            return self.block(x, f"{self.label(node)} resizes the channel axis (or shapes unknown)")
        if sizes is not None:
            return self.block(x, f"{self.label(node)} is given output sizes, which hold the channel count")
        self.set_output(node, x)

    op_Upsample = op_Resize

    def op_Shape(self, node: gs.Node) -> None:
        # Shape reads only the size: safe when the consumers pick dimensions other than the channels.
        x = self.layouts[node.inputs[0].name]
        for user in node.outputs[0].outputs:
            indices = user.inputs[1] if user.op == "Gather" and len(user.inputs) > 1 else None
            if isinstance(indices, gs.Constant) and x.axis not in {int(i) % x.rank for i in
                                                                   np.ravel(indices.values)}:
                continue
            if user.op == "Slice" and isinstance(user.inputs[1], gs.Constant) and isinstance(
                    user.inputs[2], gs.Constant):
                low, high = int(user.inputs[1].values[0]), int(user.inputs[2].values[0])
                if not (low <= x.axis < high) and low >= 0 and high >= 0:
                    continue
            return self.block(x, f"{self.label(node)} passes the channel count to {self.label(user)}, "
                                 "which sparsecc cannot follow")

    # -- result ---------------------------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        members: dict[int, list[int]] = {}
        for space in range(len(self.sizes)):
            members.setdefault(self.find(space), []).append(space)
        groups = []
        for root, spaces in members.items():
            producers = [u for s in spaces for u in self.producers[s]]
            consumers = [u for s in spaces for u in self.consumers[s]]
            blockers = _dedupe(b for s in spaces for b in self.blockers[s])
            first = next((u for u in producers if u.kind == "weight"), None)
            ident = f"{first.node}:{first.tensor}" if first else self.names[root]
            groups.append(ChannelGroup(ident, self.sizes[root], producers, consumers, blockers))
        return groups


def _node_key(node: gs.Node) -> str:
    """The node's name, or a stand-in built from its first output for unnamed nodes."""
    return node.name or f"<{node.op} -> {node.outputs[0].name}>"


def _dim_from_right(shape, position: int) -> int | None:
    """Dimension ``position`` counted from the right (1 = last), None if the shape is shorter."""
    if shape is None or len(shape) < position:
        return None
    return int(shape[len(shape) - position])


def _topological(graph: gs.Graph) -> list[gs.Node]:
    """Nodes in an order where producers come first (the graph itself is not modified)."""
    produced_by = {id(out): node for node in graph.nodes for out in node.outputs}
    order, seen = [], set()
    for root in graph.nodes:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in seen:
                continue
            if expanded:
                seen.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for tensor in node.inputs:
                producer = produced_by.get(id(tensor))
                if producer is not None and id(producer) not in seen:
                    stack.append((producer, False))
    return order


def build_channel_groups(model: Model) -> list[ChannelGroup]:
    """Find every set of coupled channels in the graph, with its uses and blockers (no edits).

    Args:
        model: The model (after canonicalisation, usually); its input shapes must be concrete.

    Raises:
        ShapeError: the model has dynamic input shapes and none were given.
    """
    return _Analysis(model).run()


# ---------------------------------------------------------------------------------------------
# Weights as the metrics see them
# ---------------------------------------------------------------------------------------------

def _constants(model: Model) -> dict[str, gs.Constant]:
    return {name: t for name, t in model.graph.tensors().items() if isinstance(t, gs.Constant)}


def producer_weights(model: Model, group: ChannelGroup) -> list[np.ndarray]:
    """The weights that make the group's channels, each as [C, ...] (channel axis first).

    A weight that makes only some of the channels (a depthwise conv after a Concat) is
    zero-padded to all C channels.
    """
    constants = _constants(model)
    arrays = []
    for use in group.producers:
        if use.kind != "weight":
            continue
        values = np.moveaxis(constants[use.tensor].values, use.axis, 0)
        count = use.covered(group.size)
        full = np.zeros((group.size,) + values.shape[1:], values.dtype)
        full[use.start:use.start + count] = values[use.offset:use.offset + count]
        arrays.append(full)
    return arrays


def consumer_weights(model: Model, group: ChannelGroup) -> list[np.ndarray]:
    """The weights that read the group's channels, each as [K_out, C, ...] (channel axis 1).

    A Gemm after Flatten reads a block of H*W features per channel: it comes as [N, C, H*W].
    A weight that reads only some of the channels is zero-padded to all C.
    """
    constants = _constants(model)
    arrays = []
    for use in group.consumers:
        values = np.moveaxis(constants[use.tensor].values, use.axis, 1)
        count = use.covered(group.size)
        part = values[:, use.offset:use.offset + count * use.stride]
        part = part.reshape((part.shape[0], count, use.stride) + part.shape[2:]) if use.stride > 1 else part
        full = np.zeros((part.shape[0], group.size) + part.shape[2:], values.dtype)
        full[:, use.start:use.start + count] = part
        arrays.append(full)
    return arrays


# ---------------------------------------------------------------------------------------------
# Editing
# ---------------------------------------------------------------------------------------------

def reindex_channels(model: Model, group: ChannelGroup, indices: np.ndarray) -> None:
    """Keep the group's channels ``indices``, in this order, everywhere they are used.

    A subset removes channels; a permutation reorders them. Every producer, consumer,
    per-channel parameter, count (Split sizes, Reshape dims, Slice bounds) and depthwise
    ``group`` attribute is edited; shapes are then re-inferred.

    Raises:
        PlanError: the group is blocked, or ``indices`` are out of range, repeated or empty.
    """
    reindex_groups(model, [(group, indices)])


def reindex_groups(model: Model, edits: list[tuple[ChannelGroup, np.ndarray]]) -> None:
    """:func:`reindex_channels` for several groups of one analysis at once.

    Groups found by one :func:`build_channel_groups` call must be edited together (or the
    analysis re-run after each edit): removing channels of one Concat input moves the
    offsets of the others.
    """
    graph = model.graph
    constants = _constants(model)
    nodes = {_node_key(n): n for n in graph.nodes}
    maps: dict[tuple[str, int], list[tuple[int, int, np.ndarray]]] = {}
    counts: dict[tuple[str, str, str], dict[int, int]] = {}
    for group, indices in edits:
        indices = _check_indices(group, indices, model.source)
        for use in group.producers + group.consumers:
            count = use.covered(group.size)
            positions = use.positions(group.size, indices)
            if use.kind in ("count", "attr"):
                per_axis = counts.setdefault((use.kind, use.node, use.tensor), {})
                per_axis[use.axis] = per_axis.get(use.axis, 0) + count * use.stride - len(positions)
                continue
            maps.setdefault((use.tensor, use.axis), []).append((use.offset, count * use.stride, positions))
    for (name, axis), blocks in maps.items():
        tensor = constants[name]
        size = tensor.values.shape[axis]
        pieces, cursor = [], 0
        for offset, length, positions in sorted(blocks, key=lambda b: b[0]):
            pieces.extend([np.arange(cursor, offset), positions])
            cursor = offset + length
        pieces.append(np.arange(cursor, size))
        tensor.values = np.ascontiguousarray(np.take(tensor.values, np.concatenate(pieces).astype(np.int64),
                                                     axis=axis))
    for (kind, node_name, name), removed in counts.items():
        if any(removed.values()):
            _decrease_count(graph, nodes[node_name], kind, name, removed)
    _refresh_shapes(model)


def _check_indices(group: ChannelGroup, indices, source: str) -> np.ndarray:
    if not group.editable():
        raise PlanError(f"channel group '{group.id}' cannot be edited: {'; '.join(group.blockers)}",
                        where=source, fix="leave this group out of the plan")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= group.size or \
            len(np.unique(indices)) != indices.size:
        raise PlanError(f"indices for channel group '{group.id}' must be distinct, within [0, {group.size}) "
                        f"and not empty; got {indices.size} index(es)", where=source,
                        fix="keep at least one channel of every group")
    return indices


def _decrease_count(graph: gs.Graph, node: gs.Node, kind: str, name: str, removed: dict[int, int]) -> None:
    """Lower channel counts held in an attribute or a (possibly shared) integer constant.

    ``removed`` maps the element of the attribute or constant to the number to subtract.
    """
    from sparsecc.graphutil import constant

    if kind == "attr":
        value = node.attrs[name]
        if isinstance(value, (list, tuple)):
            value = list(value)
            for axis, count in removed.items():
                value[axis] -= count
            node.attrs[name] = value
        else:
            node.attrs[name] = int(value) - removed[0]
        return
    slot = next(i for i, t in enumerate(node.inputs) if t.name == name)
    values = node.inputs[slot].values.copy()
    for axis, count in removed.items():
        values[axis] -= count
    # counts are often shared constants (exporters deduplicate them): give this node its own
    node.inputs[slot] = constant(graph, name, values)


def _refresh_shapes(model: Model) -> None:
    """Drop the now stale intermediate shapes and infer them again (ORT trips on stale value_info)."""
    from sparsecc.shapes import infer_shapes

    graph = model.graph
    keep = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in keep:
            tensor.shape = None
    try:
        shapes = infer_shapes(model)
    except ShapeError:
        return
    for name, tensor in graph.tensors().items():
        # gs exports a value_info only with a dtype; shapes of dtype-less tensors stay for ORT to infer
        if isinstance(tensor, gs.Variable) and name in shapes and id(tensor) not in keep and tensor.dtype:
            tensor.shape = list(shapes[name])

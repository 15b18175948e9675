"""The channel analysis: which channels of a graph are coupled (one walk, per-op rules)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency.rules import OP_RULES
from sparsecc.dependency.types import ChannelGroup, ChannelUse, Layout, Segment, dedupe
from sparsecc.model import Model


class _Analysis:
    def __init__(self, model: Model):
        from sparsecc.shapes import infer_shapes

        self.model = model
        self.graph = model.graph
        wanted = {t.name for t in self.graph.tensors().values() if isinstance(t, gs.Variable)}
        self.shapes = infer_shapes(model, wanted=wanted)
        self.layouts: dict[str, Layout] = {}
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

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for seg in layout.segments:
            if seg.space is not None and reason not in self.blockers[seg.space]:
                self.blockers[seg.space].append(reason)

    def add_uses(self, layout: Layout, node: gs.Node, tensor: str, axis: int, kind: str, consumer: bool,
                 low: int = 0, high: int | None = None) -> None:
        """Record a use of every segment of ``layout`` (channels [low, high) of it) on ``tensor``."""
        high = layout.channels if high is None else high
        for position, seg in Layout(layout.axis, layout.rank, layout.stride, layout.sliced(low, high)) \
                .offsets():
            if seg.space is None:
                continue
            use = ChannelUse(node_key(node), tensor, axis, offset=position * layout.stride,
                             stride=layout.stride, start=seg.start, count=seg.length, kind=kind)
            (self.consumers if consumer else self.producers)[seg.space].append(use)

    # -- helpers ------------------------------------------------------------------------------------
    def shape(self, tensor) -> tuple[int, ...] | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes.get(tensor.name)

    def label(self, node: gs.Node) -> str:
        return f"{node.op} '{node_key(node)}'"

    def check_private(self, node: gs.Node, const: gs.Constant, layout: Layout) -> bool:
        """A weight or parameter constant edited along the channels must belong to this node alone."""
        users = dedupe(node_key(n) for n in const.outputs)
        if len(users) > 1:
            self.block(layout, f"constant '{const.name}' of {self.label(node)} is shared by nodes {users}; "
                               "editing it for one would change the others")
            return False
        return True

    def set_output(self, node: gs.Node, layout: Layout | None, index: int = 0) -> None:
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
        rule = OP_RULES.get(op) if node.domain in (None, "", "ai.onnx") else None
        if rule in ("conv", "gemm"):
            return getattr(self, f"rule_{rule}")(node)
        if not channel_inputs:
            return  # nothing prunable flows through this node
        if node.domain not in (None, "", "ai.onnx"):
            return self.opaque(node, channel_inputs, f"custom op {node.domain}::{op}")
        if rule is not None:
            return getattr(self, f"rule_{rule}")(node)
        self.opaque(node, channel_inputs, f"{self.label(node)} reads these channels and sparsecc does not "
                                          "know how it uses them")

    def opaque(self, node: gs.Node, layouts: list[Layout], reason: str) -> None:
        for layout in layouts:
            self.block(layout, reason)

    # -- producers/consumers --------------------------------------------------------------------------
    def rule_conv(self, node: gs.Node) -> None:
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
            space = self.new_space(c_out, node_key(node))
            self.blockers[space].append(reason)
            self.set_output(node, Layout(1, rank, 1, (Segment(space, 0, c_out),)))
            return
        if x is not None:
            if self.check_private(node, weight, x):
                self.add_uses(x, node, weight.name, in_axis, "weight", consumer=True)
        space = self.new_space(c_out, node_key(node))
        out = Layout(1, rank, 1, (Segment(space, 0, c_out),))
        if self.check_private(node, weight, out):
            self.add_uses(out, node, weight.name, out_axis, "weight", consumer=False)
            if bias is not None and self.bias_ok(node, bias, out):
                self.add_uses(out, node, bias.name, 0, "param", consumer=False)
        self.set_output(node, out)

    def bias_ok(self, node: gs.Node, bias, layout: Layout) -> bool:
        if not isinstance(bias, gs.Constant):
            self.block(layout, f"{self.label(node)} has a bias computed at run time")
            return False
        return self.check_private(node, bias, layout)

    def rule_gemm(self, node: gs.Node) -> None:
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
        space = self.new_space(w.shape[n_axis], node_key(node))
        out = Layout(rank - 1, rank, 1, (Segment(space, 0, w.shape[n_axis]),))
        if self.check_private(node, b, out):
            self.add_uses(out, node, b.name, n_axis, "weight", consumer=False)
        if node.op == "Gemm" and len(node.inputs) > 2 and not node.inputs[2].is_empty():
            self.constant_operand(node, node.inputs[2], out)
        self.set_output(node, out)

    # -- channel-preserving ops --------------------------------------------------------------------
    def rule_unary(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        for extra in node.inputs[1:]:  # Clip min/max: scalars
            if isinstance(extra, gs.Variable) and not extra.is_empty() and extra.name in self.layouts:
                self.block(x, f"{self.label(node)} takes a second channel tensor")
        self.set_output(node, x)

    def rule_spatial(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        if x.axis != 1 or x.stride != 1:
            self.block(x, f"{self.label(node)} pools over the axis that holds these channels")
            return
        self.set_output(node, x)

    def rule_batch_normalization(self, node: gs.Node) -> None:
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

    def rule_instance_normalization(self, node: gs.Node) -> None:
        self.batch_normalization_like(node, node.inputs[1:3])

    def batch_normalization_like(self, node: gs.Node, params) -> None:
        x = self.layouts[node.inputs[0].name]
        if x.axis != 1 or x.stride != 1 or not all(isinstance(p, gs.Constant) for p in params):
            return self.block(x, f"{self.label(node)}: channels not on axis 1 or parameters not constant")
        if all(self.check_private(node, p, x) for p in params):
            for param in params:
                self.add_uses(x, node, param.name, 0, "param", consumer=False)
        self.set_output(node, x)

    def rule_layer_normalization(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        axis = int(node.attrs.get("axis", -1)) % x.rank
        if x.axis >= axis:
            return self.block(x, f"{self.label(node)} normalises over these channels (mean and variance mix "
                                 "them)")
        self.set_output(node, x)

    def rule_softmax(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        axis = int(node.attrs.get("axis", -1)) % x.rank
        if axis == x.axis:
            return self.block(x, f"{self.label(node)} normalises over these channels")
        self.set_output(node, x)

    def rule_reduce(self, node: gs.Node) -> None:
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

    def rule_elementwise(self, node: gs.Node) -> None:
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

    def constant_operand(self, node: gs.Node, const: gs.Constant, out: Layout) -> None:
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

    def unify(self, a: Layout, b: Layout, node: gs.Node) -> None:
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
    def rule_concat(self, node: gs.Node) -> None:
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
                segments.append(Segment(None, 0, shape[axis] // stride))
            elif lay.stride != stride:
                return self.opaque(node, present, f"{self.label(node)} concatenates blocks of different sizes")
            else:
                segments.extend(lay.segments)
        self.set_output(node, Layout(axis, rank, stride, tuple(segments)))

    def rule_split(self, node: gs.Node) -> None:
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
            piece = Layout(axis, x.rank, 1, x.sliced(low, low + size))
            self.add_uses(x, node, where, index, kind, consumer=False, low=low, high=low + size)
            self.set_output(node, piece, index)
            low += size

    def rule_gather(self, node: gs.Node) -> None:
        """Gather with constant indices: on the channel axis it selects (and may reorder) channels.

        Output channel j is input channel ``indices[j]``: the output layout is made of those
        channels, so consumers downstream stay coupled to the producer. The indices constant is
        edited with the group: entries of removed channels go, the others are renumbered.
        """
        x = self.layouts[node.inputs[0].name]
        indices = node.inputs[1]
        if not isinstance(indices, gs.Constant):
            return self.block(x, f"{self.label(node)} gathers with indices computed at run time")
        axis = int(node.attrs.get("axis", 0)) % x.rank
        values = np.asarray(indices.values, dtype=np.int64)
        if axis != x.axis:  # another axis: the channels pass through, the channel axis may move
            rank = x.rank - 1 + values.ndim
            return self.set_output(node, replace(x, axis=x.axis if x.axis < axis else x.axis - 1 + values.ndim,
                                                 rank=rank))
        dim = x.channels * x.stride
        values = np.where(values < 0, values + dim, values)
        if values.ndim != 1 or x.stride != 1 or len(np.unique(values)) != values.size:
            return self.block(x, f"{self.label(node)} gathers these channels with repeated or non-1-D indices")
        if not self.check_private(node, indices, x):
            return
        pieces: list[Segment] = []
        for channel in values:  # one-channel segments, merged where they continue a run
            seg = x.sliced(int(channel), int(channel) + 1)[0]
            last = pieces[-1] if pieces else None
            if last is not None and last.space == seg.space and last.space is not None and \
                    last.start + last.length == seg.start:
                pieces[-1] = Segment(seg.space, last.start, last.length + 1)
            else:
                pieces.append(seg)
        out = Layout(x.axis, x.rank, 1, tuple(pieces))
        # the entries of the indices constant follow the output channels; their values, the input's
        self.add_uses(out, node, indices.name, 0, "index", consumer=False)
        self.add_uses(x, node, indices.name, 0, "index-value", consumer=False)
        self.set_output(node, out)

    def rule_slice(self, node: gs.Node) -> None:
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
        self.set_output(node, Layout(x.axis, x.rank, 1, x.sliced(start, end_clamped)))

    def rule_flatten(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        in_shape = self.shape(node.inputs[0])
        axis = int(node.attrs.get("axis", 1)) % x.rank if x.rank else 0
        if in_shape is None or axis != x.axis:
            return self.block(x, f"{self.label(node)} flattens these channels together with a leading axis")
        inner = int(np.prod(in_shape[axis + 1:], dtype=np.int64))
        self.set_output(node, Layout(1, 2, x.stride * inner, x.segments))

    def rule_reshape(self, node: gs.Node) -> None:
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
            out = Layout(a, len(out_shape), x.stride, x.segments)  # only the axes after the channels change
        elif len(out_shape) == a + 1 and out_shape[a] == in_shape[a] * inner:
            out = Layout(a, a + 1, x.stride * inner, x.segments)  # flatten: one channel = a block
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

    def rule_transpose(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        perm = [int(p) for p in node.attrs.get("perm", list(reversed(range(x.rank))))]
        if x.stride != 1:
            return self.block(x, f"{self.label(node)} transposes flattened channel blocks")
        self.set_output(node, replace(x, axis=perm.index(x.axis)))

    def rule_squeeze(self, node: gs.Node) -> None:
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

    def rule_unsqueeze(self, node: gs.Node) -> None:
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

    def rule_pad(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        pads = self.int_list(node, "pads", 1)
        if pads is None or (len(node.inputs) > 3 and not node.inputs[3].is_empty()):
            return self.block(x, f"{self.label(node)} has pads computed at run time or explicit axes")
        if pads and (pads[x.axis] or pads[x.axis + x.rank]):
            return self.block(x, f"{self.label(node)} pads the channel axis")
        self.set_output(node, x)

    def rule_resize(self, node: gs.Node) -> None:
        x = self.layouts[node.inputs[0].name]
        in_shape, out_shape = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        sizes = node.inputs[3] if len(node.inputs) > 3 and not node.inputs[3].is_empty() else None
        if in_shape is None or out_shape is None or in_shape[x.axis] != out_shape[x.axis] or x.stride != 1:
            return self.block(x, f"{self.label(node)} resizes the channel axis (or shapes unknown)")
        if sizes is not None:
            return self.block(x, f"{self.label(node)} is given output sizes, which hold the channel count")
        self.set_output(node, x)

    rule_upsample = rule_resize

    def rule_shape(self, node: gs.Node) -> None:
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
            blockers = dedupe(b for s in spaces for b in self.blockers[s])
            first = next((u for u in producers if u.kind == "weight"), None)
            ident = f"{first.node}:{first.tensor}" if first else self.names[root]
            groups.append(ChannelGroup(ident, self.sizes[root], producers, consumers, blockers))
        return groups


def node_key(node: gs.Node) -> str:
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

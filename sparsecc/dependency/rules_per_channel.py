"""Rules of the channel analysis for ops that keep each channel apart (activations, norms, elementwise)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency.types import Layout
from sparsecc.dependency.walk import dim_from_right


class PerChannelRules:
    """Mixin of the analysis: unary, spatial, normalisation, softmax, reduce and elementwise ops."""

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
                dim = dim_from_right(shape, rank - axis)
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
        dim = dim_from_right(shape, right)
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

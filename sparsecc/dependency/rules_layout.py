"""Rules of the channel analysis for ops that move channels (Concat, Split, Slice, Gather, Reshape, ...)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency.types import Layout, Segment


class LayoutRules:
    """Mixin of the analysis: ops that concatenate, split, select or move the channel axis."""

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

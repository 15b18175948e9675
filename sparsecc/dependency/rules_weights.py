"""Rules of the channel analysis for the layers that make and read channels: Conv, Gemm, MatMul."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from sparsecc.dependency.types import Layout, Segment
from sparsecc.dependency.walk import node_key
from sparsecc.graphutil import optional_input


class WeightRules:
    """Mixin of the analysis: ``rule_conv``, ``rule_gemm``."""

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
        bias = optional_input(node, 2)
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
        if node.op == "Gemm" and optional_input(node, 2) is not None:
            self.constant_operand(node, node.inputs[2], out)
        self.set_output(node, out)

"""``deprune-dead-channels``: depthwise channels with every tap pruned leave the model (exact).

A depthwise channel whose taps are all zero outputs its bias; through the per-element ops on the
way (activation, swish) it reaches PW2 as a constant (:mod:`sparsecc.path_constants`), which is
folded into PW2's bias; the channel then goes everywhere it is used (its PW1 filter, the DW channel,
PW2's input column, the squeeze-excitation's) through the channel analysis. Under a
squeeze-excitation the channel is scaled by an input-dependent gate: a small side branch computes
what it adds (see :class:`DeadChannels`).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency import build_channel_groups, regroup, reindex_groups
from sparsecc.dsc import find_dsc_blocks
from sparsecc.errors import OptionError
from sparsecc.graphutil import constant, optional_input
from sparsecc.layers import find_weight_layers
from sparsecc.lowering.emitter import Emitter
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped, register_pass
from sparsecc.path_constants import path_constants
from sparsecc.sparsity.deprune import tapless_channels


@register_pass
class DeadChannels(Pass):
    """Remove depthwise channels whose taps are all zero, folding what they contribute into constants.

    Without a squeeze-excitation, a dead channel reaches PW2 as a constant: PW2's bias absorbs
    ``W2[:, c] * constant``. With one, it reaches PW2 as ``constant * gate_c(x)``: the pooled
    constant goes into the first SE conv's bias, and the gates of the dead channels are computed
    by a small side branch (their rows of the second SE conv, the gate, a 1x1 conv with
    ``W2[:, dead] * constant`` on a 1x1 map) added to PW2's output, so the dead channels leave
    PW1, DW, the SE multiply and PW2's input (exact; one tiny branch instead of M-D full planes).
    """

    name = "deprune-dead-channels"
    role = Role.REWRITE
    exact = True
    description = ("Depthwise channels with every tap pruned: constant folded into PW2's bias (or an SE side "
                   "branch), channel removed with its PW1 filter and PW2 column (channel analysis)")

    def __init__(self, round_to: int = 8):
        """Args:
            round_to: The kept channel count of a block is a multiple of this (some dead channels
                stay, as zero-tap channels, to reach it): ONNX Runtime runs convs in its blocked NCHWc
                layout only with channel counts that are multiples of 8. Defaults to 8.
        """
        if not isinstance(round_to, int) or round_to < 1:
            raise OptionError(f"round_to {round_to!r} is not a positive integer", where=self.name)
        self.round_to = round_to

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        layers, _ = find_weight_layers(model)
        by_node = {layer.node: layer for layer in layers}
        blocks, _ = find_dsc_blocks(model, layers)
        nodes = {n.outputs[0].name: n for n in model.graph.nodes if n.outputs}
        groups = build_channel_groups(model)
        skipped, edits, details, folds = [], [], {}, []
        for block in blocks:
            layer = by_node[block.dw]
            weight = nodes[layer.output].inputs[1].values
            dead = tapless_channels(weight != 0)
            found = int(dead.size)
            kept = -(-(weight.shape[0] - dead.size) // self.round_to) * self.round_to
            dead = dead[:max(0, weight.shape[0] - max(kept, self.round_to))]
            if not dead.size:
                if found:
                    details[block.dw] = {"dead": found, "removed": 0,
                                         "reason": f"removing them would not leave a multiple of {self.round_to}"}
                continue
            if dead.size == weight.shape[0]:
                reason, group, fold = "every channel is dead (the block computes a constant)", None, None
            else:
                reason, group, fold = self._check(model, block, layer, nodes, groups, dead, by_node)
            if reason:
                skipped.append(Skipped(block.dw, f"{dead.size} dead channel(s) kept: {reason}"))
                details[block.dw] = {"dead": int(dead.size), "removed": 0, "reason": reason}
                continue
            edits.append((group, np.setdiff1d(np.arange(group.size), dead)))
            folds.append(fold)
            details[block.dw] = {"dead": found, "removed": int(dead.size), "of": int(weight.shape[0]),
                                 "se_branch": block.se}
        if not edits:
            return PassResult(False, 0, skipped, ["no removable dead depthwise channel"], details)
        for apply in folds:
            apply()
        # the folds replaced and added biases: the groups found before them name tensors that are gone
        # (or miss a new bias), so the channels are edited through groups found again, after the last edit
        edits = regroup(model, edits)
        edited = {u.tensor for g, _ in edits for u in g.producers + g.consumers}
        reindex_groups(model, edits)
        model.graph.cleanup().toposort()
        invalidated = ctx.plan.invalidate(edited) if ctx.plan is not None else []
        removed = sum(d["removed"] for d in details.values())
        notes = [f"{removed} dead depthwise channel(s) removed in {len(edits)} block(s)"]
        if invalidated:
            notes.append(f"{len(invalidated)} plan entr(ies) invalidated: their weights were reindexed")
        return PassResult(True, len(edits), skipped, notes, details)

    @staticmethod
    def _check(model, block, layer, nodes, groups, dead, by_node):
        none = (None, None)
        if block.pw2 is None:
            return (f"DW does not feed a pointwise conv ({block.stop})",) + none
        pw2 = nodes[by_node[block.pw2].output]
        if any(int(p) for p in pw2.attrs.get("pads", [0, 0, 0, 0])) or \
                pw2.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
            return ("PW2 pads its input (a constant channel is not constant at the border)",) + none
        dw = nodes[layer.output]
        group = next((g for g in groups if any(u.node == block.dw and u.kind == "weight" for u in g.producers)), None)
        if group is None or not group.editable():
            return ("channel group blocked: " + ("; ".join(group.blockers) if group else "not found"),) + none
        se_convs = [c for step in block.path for c in step.se_convs]
        readers = {u.node for u in group.consumers}
        allowed = {block.pw2} | set(se_convs[:1])
        if not readers <= allowed:
            return (f"the channels are also read by {sorted(readers - allowed)}",) + none
        dtype = dw.inputs[1].values.dtype
        bias = optional_input(dw, 2)
        bias = bias.values if bias is not None else np.zeros(dw.inputs[1].values.shape[0], dtype)
        constants = np.zeros(bias.size, dtype)
        constants[dead] = bias[dead]
        reach = path_constants(model, block, constants, dtype)
        if isinstance(reach, str):
            return (reach,) + none
        a = reach.before_se.astype(np.float64)
        w2 = pw2.inputs[1].values
        graph = model.graph
        if reach.se is None:
            shift = w2[:, dead, 0, 0].astype(np.float64) @ a[dead]
            return None, group, lambda: _add_bias(graph, pw2, shift, f"{pw2.name}/bias")
        step = reach.se
        all_nodes = {n.name: n for n in graph.nodes}
        gate, fc2_name = all_nodes[step.nodes[-2]], step.se_convs[-1] if len(step.se_convs) == 2 else None
        fc2 = nodes[by_node[fc2_name].output] if fc2_name else None
        if fc2 is None or gate.op not in ("Sigmoid", "HardSigmoid") or gate.inputs[0] is not fc2.outputs[0] or \
                len(fc2.outputs[0].outputs) != 1:
            return ("squeeze-excitation is not pool -> conv -> act -> conv -> gate -> Mul",) + none
        fc1 = nodes[by_node[step.se_convs[0]].output]
        w1 = fc1.inputs[1].values
        pooled = w1[:, dead, 0, 0].astype(np.float64) @ a[dead]

        def fold():
            _add_bias(graph, fc1, pooled, f"{fc1.name}/bias")
            if not np.any(a[dead]):
                return  # dead channels are exactly zero after the gate: nothing reaches PW2
            em = Emitter(graph, f"{block.dw}/dead_se", DeadChannels.name, dtype)
            fc2_w = fc2.inputs[1].values[dead]
            inputs = [fc2.inputs[0], em.const("fc2_weight", fc2_w)]
            if optional_input(fc2, 2) is not None:
                inputs.append(em.const("fc2_bias", fc2.inputs[2].values[dead]))
            logits, gates, extra = em.var("logits", dtype), em.var("gates", dtype), em.var("extra", dtype)
            em.node("Conv", inputs, [logits], "fc2", kernel_shape=[1, 1])
            em.node(gate.op, [logits], [gates], "gate", **dict(gate.attrs))
            scaled = (w2[:, dead].astype(np.float64) * a[dead][None, :, None, None]).astype(w2.dtype)
            em.node("Conv", [gates, em.const("pw2_dead", scaled)], [extra], "pw2_dead", kernel_shape=[1, 1])
            out = pw2.outputs[0]
            main = em.var("pw2_main", dtype)
            pw2.outputs[0] = main
            em.node("Add", [main, extra], [out], "add")
        return None, group, fold


def _add_bias(graph: gs.Graph, conv: gs.Node, shift: np.ndarray, name: str) -> None:
    """conv's bias += shift (a bias is added when the conv has none)."""
    if not np.any(shift):
        return
    dtype = conv.inputs[1].values.dtype
    if optional_input(conv, 2) is not None:
        old = conv.inputs[2].values
        conv.inputs[2] = constant(graph, conv.inputs[2].name, (old.astype(np.float64) + shift).astype(old.dtype))
    else:
        conv.inputs.append(constant(graph, name, shift.astype(dtype)))

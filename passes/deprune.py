"""DEPrune for depthwise-separable networks: plan, dead-channel removal, and a lowering per layer.

``plan-deprune`` (analysis) finds the PW1 -> DW -> PW2 blocks (:mod:`sparsecc.dsc`), masks each
depthwise weight with DCP, BWT or BWT + HSR (:mod:`sparsecc.sparsity.deprune`; pattern
``depthwise-taps``, the name zero-detection gives the same structure), and plans l2 filter
pruning of every PW2 through ``plan-filters`` (coupled channel groups: BN, bias, residual
stream), which ``remove-filters`` then removes physically::

    - plan-deprune: {method: bwt-hsr, dw_ratio: 0.8, pw_ratio: 0.5, ratios: {<dw layer>: 0.7}}

``deprune-dead-channels`` (exact): a depthwise channel whose taps are all zero outputs its bias;
through the per-element ops on the way (activation, swish) it reaches PW2 as a constant, which is
folded into PW2's bias; the channel then goes everywhere it is used (its PW1 filter, the DW
channel, PW2's input column, the squeeze-excitation's) through the channel analysis. Under a
squeeze-excitation the channel is scaled by an input-dependent gate, so it goes only when its
constant is exactly zero.

``deprune-rewrite`` (exact) lowers each depthwise layer with the lowering of the ``deprune``
family (:mod:`sparsecc.lowering.depthwise`: the plain ``depthwise``, ``kernel-crop``,
``dr-grouped``, ``dr-compact``) the toolkit's cost model picks (measured through the timing
cache, or analytic), recording why each lowering did not apply; the whole rewritten model is then
timed against the graph it came from and the rewrite is undone if it is not faster.
``deprune-model-check`` times the compiled graph against the masked model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency import build_channel_groups, regroup, reindex_groups
from sparsecc.dsc import DscBlock, find_dsc_blocks
from sparsecc.errors import OptionError, ShapeError, UnsupportedModelError
from sparsecc.layers import WeightLayer, analyse_layers, find_weight_layers
from sparsecc.model import Model
from sparsecc.passmanager import Pass, PassContext, PassResult, Skipped, register_pass
from sparsecc.plan import SparsityPlan, WeightPlan
from sparsecc.shapes import infer_shapes
from sparsecc.sparsity.deprune import (HsrLayer, bwt_mask, channel_first_mask, dcp_mask, dead_channels, hsr_counts,
                                       imbalance_overhead, real_dw_ratio, subgemm_ratios)

from sparsecc.lowering import (AnalyticCost, Candidate, Emitter, LayerToLower, MeasuredCost, choose_lowering,
                              describe_candidates, get_lowering, lowerings, propose_all, undo_unless_faster,
                              whole_model_check)
from sparsecc.lowering.depthwise import DEPTHWISE, FAMILY

PATTERN = "depthwise-taps"
BASELINE = DEPTHWISE.name  # the plain depthwise Conv: what every other deprune lowering must beat
METHODS = ("dcp", "bwt", "bwt-hsr")


# ----------------------------------------------------------------------------------------------
# plan-deprune
# ----------------------------------------------------------------------------------------------

@register_pass
class PlanDeprune(Pass):
    """Plan DEPrune masks: depthwise taps (DCP / BWT / BWT+HSR) and PW2 l2 filter pruning.

    Args:
        method: "dcp", "bwt" or "bwt-hsr". Defaults to "bwt-hsr".
        dw_ratio: Share of depthwise weights pruned in every layer. Defaults to 0.8.
        ratios: Per-layer depthwise ratios (node name -> ratio), overriding ``dw_ratio``.
        pw_ratio: Share of each PW2's filters removed (l2 norm; 0 leaves PW2 alone). Defaults to 0.5.
        pw_round_to: Kept PW2 filter counts are multiples of this. Defaults to 8 (the paper's GPU
            tile is 32; 8 is ONNX Runtime's NCHWc block).
        width: Channels per DR sub-GEMM. Defaults to 32.
        tile: HSR's tile. Defaults to 32.
        exclude: Depthwise layer names left dense. Defaults to none.
        channel_share: Share of each layer's pruning budget spent on whole channels first (lowest
            l2 norm; :func:`~sparsecc.sparsity.deprune.channel_first_mask`), so that dead channels
            leave PW1, DW and PW2 on backends where pruned taps alone do not pay (CPUs). Not the
            paper's method (it prunes taps only); with "dcp" or "bwt". Defaults to 0.
    """

    name = "plan-deprune"
    exact = True
    description = "Plan DEPrune masks (depthwise taps by DCP/BWT/HSR, PW2 filters by l2) for PW1-DW-PW2 blocks"

    def __init__(self, method: str = "bwt-hsr", dw_ratio: float = 0.8, ratios: dict[str, float] | None = None,
                 pw_ratio: float = 0.5, pw_round_to: int = 8, width: int = 32, tile: int = 32,
                 exclude: list[str] | None = None, channel_share: float = 0.0):
        if method not in METHODS:
            raise OptionError(f"unknown method '{method}'", where="plan-deprune: method", fix=f"use one of {METHODS}")
        for what, value in [("dw_ratio", dw_ratio)] + [(f"ratios[{k}]", v) for k, v in (ratios or {}).items()]:
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise OptionError(f"{what} {value!r} is not in [0, 1)", where="plan-deprune",
                                  fix="give the share of depthwise weights pruned, e.g. 0.8")
        if not isinstance(pw_ratio, (int, float)) or not 0.0 <= pw_ratio < 1.0:
            raise OptionError(f"pw_ratio {pw_ratio!r} is not in [0, 1)", where="plan-deprune",
                              fix="e.g. 0.5; 0 leaves the pointwise convs alone")
        for what, value in (("width", width), ("tile", tile), ("pw_round_to", pw_round_to)):
            if not isinstance(value, int) or value < 1:
                raise OptionError(f"{what} {value!r} is not a positive integer", where="plan-deprune")
        self.method, self.dw_ratio, self.ratios = method, float(dw_ratio), dict(ratios or {})
        self.pw_ratio, self.pw_round_to = float(pw_ratio), pw_round_to
        self.width, self.tile, self.exclude = width, tile, list(exclude or [])
        if not isinstance(channel_share, (int, float)) or not 0.0 <= channel_share <= 1.0:
            raise OptionError(f"channel_share {channel_share!r} is not in [0, 1]", where="plan-deprune")
        if channel_share and method == "bwt-hsr":
            raise OptionError("channel_share works with method dcp or bwt, not bwt-hsr", where="plan-deprune",
                              fix="use method: bwt with channel_share, or channel_share: 0 with bwt-hsr")
        self.channel_share = float(channel_share)

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        layers, _ = analyse_layers(model)
        if not any(layer.kind == "depthwise" or (layer.kind == "grouped" and layer.weight_shape[1] == 1)
                   for layer in layers):  # depth multipliers above 1 are listed with their reason below
            kinds = sorted({layer.kind for layer in layers})
            raise UnsupportedModelError(
                f"the model has no depthwise convolution (its weight layers are {', '.join(kinds) or 'none'}): "
                "DEPrune prunes depthwise convs", where=model.source,
                fix="use a recipe for plain convolutions: filter-l2, groupwise-50 or hybrid-24")
        by_node = {layer.node: layer for layer in layers}
        blocks, others = find_dsc_blocks(model, layers)
        skipped = [Skipped(o.layer, o.reason) for o in others]
        unknown = sorted(set(self.ratios) - {b.dw for b in blocks})
        if unknown:
            raise OptionError(f"ratios name {unknown}, which are not depthwise layers of the model",
                              where="plan-deprune: ratios", fix="run `sparsecc inspect` for the depthwise layer names")
        chosen: list[tuple[DscBlock, WeightLayer, float]] = []
        for block in blocks:
            layer = by_node[block.dw]
            if block.dw in self.exclude:
                skipped.append(Skipped(block.dw, "excluded"))
            elif layer.shared_with:
                skipped.append(Skipped(block.dw, f"weight shared with {layer.shared_with}"))
            else:
                chosen.append((block, layer, self.ratios.get(block.dw, self.dw_ratio)))
        tensors = model.graph.tensors()
        counts = self._hsr(chosen) if self.method == "bwt-hsr" else {}
        plan = ctx.plan if ctx.plan is not None else SparsityPlan(source=f"plan-deprune ({self.method})")
        table = {}
        for block, layer, ratio in chosen:
            weight = tensors[layer.weight].values
            if self.channel_share:
                mask = channel_first_mask(weight, ratio, self.channel_share, self.width, self.method == "bwt")
            elif self.method == "dcp":
                mask = dcp_mask(weight, ratio)
            else:
                mask = bwt_mask(weight, ratio, self.width, counts.get(block.dw, (None, None))[1])
            pattern = counts.get(block.dw, ("-",))[0]
            facts = {"method": self.method, "channel_share": self.channel_share, "width": self.width, "dw_ratio": round(1.0 - float(mask.mean()), 4),
                     "real_dw": round(real_dw_ratio(mask, self.width), 4),
                     "imbalance": round(imbalance_overhead(mask, self.width), 4), "hsr": pattern,
                     "sub_gemm_ratios": [round(float(r), 4) for r in subgemm_ratios(mask, self.width)],
                     "dead_channels": int(dead_channels(mask).size), "pw2": block.pw2}
            plan.add(WeightPlan(layer.weight, layer.node, PATTERN, mask, criterion="magnitude", ratio=ratio,
                                alignment=self.tile if self.method == "bwt-hsr" else None, details=facts))
            table[block.dw] = facts
        ctx.plan = plan
        notes = [f"{len(chosen)} depthwise layer(s) planned ({self.method}), {len(skipped)} left out"]
        pw = {}
        if self.pw_ratio > 0:
            pw = self._plan_pw2(ctx, [b.pw2 for b, _, _ in chosen if b.pw2], skipped, notes)
        ctx.state["deprune-blocks"] = [b.to_dict() for b in blocks]
        ctx.state["deprune-plan"] = table
        return PassResult(False, 0, skipped, notes, {"dw": table, "pw": pw,
                                                     "blocks": [b.describe() for b in blocks]})

    def _hsr(self, chosen) -> dict[str, tuple[str, list[int]]]:
        hsr_layers = []
        for block, layer, ratio in chosen:
            out = layer.output_shape or (1, 1, 1, 1)
            hsr_layers.append(HsrLayer(block.dw, block.channels, block.kernel[0] * block.kernel[1], ratio,
                                       int(out[0] * np.prod(out[2:]))))
        return {c.name: (c.pattern, c.counts) for c in hsr_counts(hsr_layers, self.width, self.tile)}

    def _plan_pw2(self, ctx: PassContext, names: list[str], skipped: list[Skipped], notes: list[str]) -> dict:
        from sparsecc.passes.filter_prune import PlanFilters

        if not names:
            notes.append("no PW2 to filter-prune")
            return {}
        result = PlanFilters(metric="l2", ratio=self.pw_ratio, scope="per-layer", round_to=self.pw_round_to,
                             layers={"names": names, "exclude_first_last": False}).run(ctx)
        # groups whose channels are made by layers other than PW2s (the stem) are not DEPrune's
        skipped.extend(s for s in result.skipped if any(n in s.layer.split(" + ") for n in names))
        notes.extend(result.notes)
        return result.details.get("groups", {})


# ----------------------------------------------------------------------------------------------
# deprune-dead-channels
# ----------------------------------------------------------------------------------------------

def _step_constants(model: Model, nodes: dict[str, gs.Node], step, values: np.ndarray, dtype) -> np.ndarray:
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
class _Reach:
    """How dead DW channels reach PW2: their constant before a squeeze-excitation (if any) and after."""

    before_se: np.ndarray
    se: Any = None  # the PathStep of the squeeze-excitation, or None


def _path_constants(model: Model, block: DscBlock, values: np.ndarray, dtype) -> _Reach | str:
    """The constant the DW channels ``values`` (constant over space) are where they reach PW2 or an SE.

    Per-element steps are evaluated by ONNX Runtime (the graph's own ops, so the constant is what
    the model computes). A squeeze-excitation must be the last step: after it a channel is its
    constant times an input-dependent gate (see :class:`DeadChannels`).
    """
    nodes = {n.name: n for n in model.graph.nodes}
    current = values
    for index, step in enumerate(block.path):
        if step.kind == "se":
            if index != len(block.path) - 1:
                return "ops between the squeeze-excitation and PW2"
            return _Reach(current, step)
        current = _step_constants(model, nodes, step, current, dtype)
    return _Reach(current)


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
    exact = True

    def __init__(self, round_to: int = 8):
        """Args:
            round_to: The kept channel count of a block is a multiple of this (some dead channels
                stay, as zero-tap channels, to reach it): ONNX Runtime runs convs in its blocked NCHWc
                layout only with channel counts that are multiples of 8. Defaults to 8.
        """
        if not isinstance(round_to, int) or round_to < 1:
            raise OptionError(f"round_to {round_to!r} is not a positive integer", where=self.name)
        self.round_to = round_to
    description = ("Depthwise channels with every tap pruned: constant folded into PW2's bias (or an SE side "
                   "branch), channel removed with its PW1 filter and PW2 column (channel analysis)")

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
            dead = dead_channels(weight != 0)
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
        ctx.state[self.name] = details
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
        bias = dw.inputs[2].values if len(dw.inputs) > 2 and not dw.inputs[2].is_empty() \
            else np.zeros(dw.inputs[1].values.shape[0], dtype)
        constants = np.zeros(bias.size, dtype)
        constants[dead] = bias[dead]
        reach = _path_constants(model, block, constants, dtype)
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
            if len(fc2.inputs) > 2 and not fc2.inputs[2].is_empty():
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
    from sparsecc.graphutil import constant

    if not np.any(shift):
        return
    dtype = conv.inputs[1].values.dtype
    if len(conv.inputs) > 2 and not conv.inputs[2].is_empty():
        old = conv.inputs[2].values
        conv.inputs[2] = constant(graph, conv.inputs[2].name, (old.astype(np.float64) + shift).astype(old.dtype))
    else:
        conv.inputs.append(constant(graph, name, shift.astype(dtype)))


# ----------------------------------------------------------------------------------------------
# deprune-rewrite: the lowerings of the "deprune" family (sparsecc.lowering.depthwise), chosen by cost
# ----------------------------------------------------------------------------------------------

@register_pass
class DepruneRewrite(Pass):
    """Lower each depthwise layer with the candidate the cost model picks (exact).

    The candidates are the registered lowerings of the ``deprune`` family
    (:mod:`sparsecc.lowering.depthwise`: depthwise, kernel-crop, dr-grouped, dr-compact, and any
    registered later); the plain ``depthwise`` is the baseline the others must beat.

    Args:
        lowering: "auto" (cost model) or the name of a ``deprune`` lowering to force where it
            applies. Defaults to "auto".
        cost_model: "measured" (ONNX Runtime CPU, one-layer models timed interleaved, through the
            timing cache) or "analytic". ``compile --cost-model`` overrides it. Defaults to "measured".
        width: DR sub-GEMM width (its largest divisor of M when it does not divide M). Defaults to 32.
        min_gain: A candidate must beat the plain depthwise by this share. Defaults to 0.1.
        runs: Timed runs per candidate. Defaults to 5.
        threads: ONNX Runtime threads for timing. Defaults to 2.

    With the measured cost model choosing, the whole rewritten model is finally timed against the
    graph it came from (through the timing cache) and the rewrite is undone if it is not faster.
    """

    name = "deprune-rewrite"
    exact = True
    description = "Depthwise layers -> plain depthwise / kernel crop / DR sub-GEMMs, chosen per layer by cost"

    def __init__(self, lowering: str = "auto", cost_model: str = "measured", width: int = 32,
                 min_gain: float = 0.1, runs: int = 5, threads: int = 2):
        if lowering != "auto" and (get_lowering(lowering) is None or get_lowering(lowering).family != FAMILY):
            raise OptionError(f"unknown lowering '{lowering}'", where="deprune-rewrite",
                              fix=f"use auto or one of {[lw.name for lw in lowerings(FAMILY)]}")
        if cost_model not in ("measured", "analytic"):
            raise OptionError(f"unknown cost_model '{cost_model}'", fix="use measured or analytic")
        if not isinstance(width, int) or width < 1:
            raise OptionError(f"width {width!r} is not a positive integer", where="deprune-rewrite")
        self.lowering, self.cost_model, self.width = lowering, cost_model, width
        self.min_gain, self.runs, self.threads = float(min_gain), int(runs), int(threads)

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        cost_model = ctx.cost_model or self.cost_model
        cost = AnalyticCost() if cost_model == "analytic" else MeasuredCost(self.runs, self.threads, ctx.timing_cache)
        # a forced lowering is the user's call; only the cost model's own choices are checked
        before = model.copy() if self.lowering == "auto" and cost_model == "measured" else None
        layers, _ = find_weight_layers(model)
        skipped, lowered = [], 0
        try:
            shapes = infer_shapes(model, {n for layer in layers for n in (layer.input, layer.output)})
        except ShapeError as err:  # each layer is then left as it was, with the reason (below)
            shapes = {}
            skipped.append(Skipped("(all layers)", f"activation shapes unknown ({err.what})"))
        layers, _ = find_weight_layers(model, shapes)
        nodes = {n.outputs[0].name: n for n in model.graph.nodes if n.outputs}
        details: dict[str, Any] = {"cost_model": cost_model, "layers": {}}
        for layer in layers:
            if layer.kind != "depthwise":
                continue
            node = nodes[layer.output]
            if layer.input_shape is None or layer.output_shape is None:
                skipped.append(Skipped(layer.node, "shapes unknown (give --shape)"))
                continue
            bias = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
            view = LayerToLower(node, layer, node.inputs[1].values, bias, layer.input_shape, layer.output_shape,
                                {"width": self.width})
            choice, info = self._choose(view, cost)
            details["layers"][layer.node] = info
            if choice.name == BASELINE:
                continue
            x, y = node.inputs[0], node.outputs[0]
            node.outputs.clear()
            node.inputs.clear()
            choice.emit(Emitter(model.graph, layer.node, self.name, view.weight.dtype), x, y)
            lowered += 1
        model.graph.cleanup().toposort()
        notes = [f"{lowered} depthwise layer(s) lowered"]
        if before is not None and lowered and not undo_unless_faster(
                before, model, self.runs, self.threads, ctx.timing_cache, details, skipped, notes):
            lowered = 0
        if ctx.timing_cache is not None:
            ctx.timing_cache.save()
            details["timing_cache"] = ctx.timing_cache.describe()
        ctx.state[self.name] = details
        return PassResult(lowered > 0, lowered, skipped, notes, details)

    def _choose(self, view: LayerToLower, cost) -> tuple[Candidate, dict[str, Any]]:
        plain = get_lowering(BASELINE).candidate(view)
        proposals = propose_all(view, plain, FAMILY)
        candidates, not_applicable = proposals.candidates, proposals.not_applicable
        info: dict[str, Any] = {"not_applicable": not_applicable, "macs": {c.name: c.macs for c in candidates},
                                "zeros": round(1.0 - float(np.mean(view.weight != 0)), 4)}
        if self.lowering != "auto":
            forced = next((c for c in candidates if c.name == self.lowering), None)
            if forced is None:
                why = not_applicable[self.lowering]
                info.update(lowering=BASELINE, reason=f"{self.lowering} does not apply: {why}")
                return plain, info
            info.update(lowering=forced.name, reason="forced")
            return forced, info
        if len(candidates) == 1:
            info.update(lowering=BASELINE, reason="no other lowering applies")
            return plain, info
        dtype, op = view.weight.dtype, view.node.op
        cost.time(candidates, op, view.in_shape, view.out_shape, dtype)
        choice, why = choose_lowering(
            candidates, self.min_gain, lambda chosen: cost.remeasure(chosen, op, view.in_shape, view.out_shape, dtype))
        info.update(lowering=choice.name, reason=why, **describe_candidates(candidates))
        return choice, info

# ----------------------------------------------------------------------------------------------
# deprune-model-check
# ----------------------------------------------------------------------------------------------

@register_pass
class DepruneModelCheck(Pass):
    """Keep the compiled graph only if it is faster than the masked model on ONNX Runtime (exact).

    Channel removal (PW2 filters, dead channels) does less work, but a graph can still lose to the
    masked one in a whole model (channel counts that leave the blocked layout, extra nodes): the
    two are timed interleaved and the masked model (the same function) is kept if the compiled
    one is not faster.

    Args:
        runs: Timed runs of each. Defaults to 10.
        threads: ONNX Runtime intra-op threads. Defaults to 2.
    """

    name = "deprune-model-check"
    exact = True
    description = "Time the compiled graph against the masked model; keep the masked one if it is not faster"

    def __init__(self, runs: int = 10, threads: int = 2):
        if not isinstance(runs, int) or runs < 1:
            raise OptionError(f"runs {runs!r} is not a positive integer", where=self.name)
        self.runs, self.threads = runs, int(threads)

    def run(self, ctx: PassContext) -> PassResult:
        masked = ctx.state.get("masked")
        if masked is None:
            return PassResult(False, 0, notes=["no masked model to compare with (apply-plan did not run)"])
        check = whole_model_check(masked, ctx.model, self.runs, self.threads, ctx.timing_cache,
                                  labels=("masked", "compiled"), fallback="the masked model is kept")
        ctx.state[self.name] = check
        if ctx.timing_cache is not None:
            ctx.timing_cache.save()
        if check["kept"]:
            return PassResult(False, 0, notes=[check["reason"]], details=check)
        ctx.model.graph = masked.copy().graph
        return PassResult(True, 1, [Skipped("(whole model)", check["reason"])], [check["reason"]], check)

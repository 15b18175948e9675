"""``groupwise-rewrite``: group-wise pruned layers as a Gather of what is kept and a smaller GEMM (exact).

It runs after ``apply-plan`` (it is exact with respect to the masked model): it reads the pruned
groups from the all-zero rows of each weight (a group the plan prunes must be zero by then) and
lowers each layer with the lowerings of the ``groupwise`` family in :mod:`sparsecc.lowering`
(``channel-gather``, ``tap-gather``, and any registered later), choosing per layer with a cost
model (``dense``, the layer as it is, when none is faster). Measured choices go through the
timing cache (which keeps the evidence), and the lowerings are undone only if the whole rewritten
model is conclusively slower than the dense one; an inconclusive timing defers to the analytic
model (:mod:`sparsecc.policy`).

Before lowering, channels that no consumer reads are removed from the layers that make them, with
every coupled use (bias, BatchNorm, per-channel scales, depthwise convs, residual branches,
Concat/Split, Flatten into a Gemm), as the channel analysis finds them
(:mod:`sparsecc.dependency.unread`): the producer loses those output filters and the Gather
disappears. The loop itself is the lowering driver's (:mod:`sparsecc.lowering.driver`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.errors import PlanError
from sparsecc.layers import WeightLayer
from sparsecc.lowering import describe_candidates
from sparsecc.lowering.driver import LoweringPass, LoweringRun
from sparsecc.lowering.gather import FAMILY, conv_kept_rows, dense_candidate, gemm_kept_features
from sparsecc.passmanager import PassContext, register_pass


@register_pass
class GroupwiseRewrite(LoweringPass):
    """Run group-wise pruned layers as Gather + smaller GEMM where that is faster (exact).

    Args:
        cost_model: "measured" (each candidate timed as a one-layer model on ONNX Runtime CPU,
            through the timing cache) or "analytic" (MACs and moved elements, calibrated on ONNX
            Runtime CPU). ``compile --cost-model`` overrides it. Defaults to "measured".
        lowering: "auto" (the cost model picks) or the name of a registered group-wise lowering
            (channel-gather, tap-gather, ...) to force it where it applies (layers it does not apply
            to stay dense). Defaults to "auto".
        min_gain: A lowering must be this much faster than dense (0.1 = 10%). Defaults to 0.1.
        runs: Least paired runs of each timing (more while its interval straddles the threshold).
            Defaults to 20.
        threads: ONNX Runtime intra-op threads for timing. Defaults to 1 (CPU time then holds under load).
        fold: Fold unused input channels into the producing layer. Defaults to True.

    With the measured cost model choosing the lowerings, the whole rewritten model is finally
    timed against the graph before the lowerings; they are undone only if it is conclusively
    slower (the channels folded first only remove work and stay; the report says which and why).
    """

    name = "groupwise-rewrite"
    family = FAMILY
    # every emitted node is shape-generic (explicit pads only where they do not follow the input size:
    # lowering.registry refuses the others on symbolic sizes); the compile checks a second shape
    specializes_shapes = False
    description = ("Group-wise pruned Conv/Gemm/MatMul -> Gather of kept channels or taps + smaller GEMM "
                   "(per-layer choice by cost model; unused channels folded into producers)")

    def __init__(self, cost_model: str = "measured", lowering: str = "auto", min_gain: float = 0.1,
                 runs: int = 20, threads: int = 1, fold: bool = True):
        self.set_lowering_options(lowering, cost_model, min_gain, runs, threads, fold)

    def shapes_unknown(self, run: LoweringRun, error) -> None:
        run.notes.append(f"activation shapes unknown ({error.what}); Conv layers stay dense")

    def check_plan(self, ctx: PassContext, layers: list[WeightLayer]) -> None:
        """Groups the plan prunes must already be zero (apply-plan ran), or the rewrite would not be exact."""
        if ctx.plan is None:
            return
        tensors = ctx.model.graph.tensors()
        for layer in layers:
            entry = ctx.plan.entries.get(layer.weight)
            if entry is None or entry.pattern != "group-wise":
                continue
            values = tensors[layer.weight].values
            if entry.mask.shape == values.shape and np.any(values[~entry.mask] != 0):
                raise PlanError(f"the plan prunes groups of '{layer.weight}' that still hold non-zero weights",
                                where=f"{ctx.model.source}: layer '{layer.node}'",
                                fix="run apply-plan before groupwise-rewrite")

    def consider(self, layer: WeightLayer, shapes: dict) -> str | None:
        if layer.kind == "depthwise":
            return "depthwise conv: not group-wise (see the DEPrune passes)"
        if layer.shared_with:
            return f"weight shared with {layer.shared_with}"
        return None

    def why_dense(self, ctx: PassContext, layer: WeightLayer, node: gs.Node, shapes: dict) -> str | None:
        """Why a layer cannot be lowered group-wise at all, or None."""
        weight = node.inputs[1].values
        if layer.op == "Conv":
            if shapes.get(layer.input) is None or shapes.get(layer.output) is None:
                return "input/output shape unknown (give concrete input shapes with --shape)"
            rows = conv_kept_rows(weight, layer.group)
            if rows.all():
                return "dense: no all-zero group (im2col row) in the weight"
            if not rows.any():
                return "every group is pruned (the layer computes only its bias); left dense"
        else:
            used = gemm_kept_features(layer, weight)
            if used.all():
                return "dense: no all-zero input feature (row of W[K, N]) in the weight"
            if not used.any():
                return "every input feature is pruned (the layer computes only its bias); left dense"
        if any(not isinstance(t, gs.Constant) and not t.is_empty() for t in node.inputs[2:]):
            return "the bias is computed at run time (not a constant)"
        return None

    def dense_candidate(self, view):
        return dense_candidate(view)

    def decide(self, view, proposals, cost, info: dict[str, Any]):
        candidates, not_applicable = proposals.candidates, proposals.not_applicable
        dense, options, decision = candidates[0], candidates[1:], None
        if not_applicable:
            info["not_applicable"] = not_applicable
        if self.lowering != "auto":
            forced = [c for c in options if c.name == self.lowering]
            if forced:
                choice, why = forced[0], f"forced by lowering: {self.lowering}"
            else:
                available = [c.name for c in options] or ["none"]
                choice, why = dense, (f"lowering '{self.lowering}' does not apply to this layer: "
                                      f"{not_applicable.get(self.lowering, 'it does not lower this op')} "
                                      f"(applicable: {available})")
        elif not options:
            choice, why = dense, "no lowering applies: " + "; ".join(f"{k}: {v}" for k, v in not_applicable.items())
        else:
            choice, decision = self.timed_choice(view, candidates, cost)
            why = decision.reason
        info.update(lowering=choice.name, reason=why, k=view.layer.k, **describe_candidates(candidates, decision))
        return choice, why

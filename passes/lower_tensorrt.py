"""``lower-tensorrt``: masked Conv/Gemm/MatMul and depthwise layers -> single sparsecc TensorRT plugin nodes (exact).

What it lowers: the **masked layers themselves** (run it after ``apply-plan``, instead of
``groupwise-rewrite``), not the portable Gather + smaller-GEMM subgraphs ``groupwise-rewrite``
emits. Both carry the same information, but the masked weight states it directly: its all-zero
im2col rows / input features are the kept list, whatever lowering the CPU cost model would have
picked (channel-gather, tap-gather, folded or not). Matching the portable subgraphs back would mean
one pattern per CPU lowering, each to be kept in step with them; reading the zeros needs none.
Before lowering, channels no consumer reads are folded into their producers with the channel
analysis, exactly as ``groupwise-rewrite`` does (``fold``), so producers shrink on the GPU too.

The same holds for DEPrune: a depthwise Conv whose pruned taps are zero (after ``apply-plan`` and
``deprune-dead-channels``, instead of ``deprune-rewrite``) becomes one ``DepthwiseSubGemm`` node,
DEPrune's DR sub-GEMMs read from the masked weight rather than matched in the ``dr-grouped`` /
``dr-compact`` subgraphs.

Each layer is offered to the lowerings of family ``tensorrt`` in :mod:`sparsecc.lowering.plugins`
(``groupwise-conv-plugin``, ``groupwise-linear-plugin``, ``depthwise-subgemm-plugin``, and any
registered later) and lowered
where the cost model finds the plugin faster than TensorRT's dense layer. The cost model is
**analytic** (:class:`~sparsecc.lowering.plugins.GpuAnalyticCost`, a GPU roofline with assumed
constants): no GPU measurement is made here. Left as they were, each with its reason: grouped
convs, 2:4 weights (they stay Conv/MatMul so TensorRT's ``SPARSE_WEIGHTS`` can pick a sparse
tactic), layers with nothing pruned, and layers the cost model does not find faster.

The graph after it holds sparsecc-domain nodes: ONNX Runtime cannot run it (``sparsecc bench``
says so); the pass manager verifies it through the plugins' numpy references, and
``sparsecc build`` turns it into a TensorRT engine on a machine with TensorRT and a GPU.
Options::

    - lower-tensorrt                                   # analytic GPU cost, FP16 target
    - lower-tensorrt: {precision: fp32, min_gain: 0.2}
    - lower-tensorrt: {force: true}                    # every layer a plugin applies to
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

import sparsecc.plugins  # noqa: F401  (registers the plugins' numpy references, which verify this pass)
from sparsecc.errors import OptionError, ShapeError
from sparsecc.layers import WeightLayer, find_weight_layers
from sparsecc.lowering import Candidate, Emitter, LayerToLower, propose_all
from sparsecc.lowering.plugins import FAMILY, PRECISION_FACTOR, PLUGIN_EFFICIENCY, GpuAnalyticCost, dense_gpu_candidate
from sparsecc.passes.groupwise import GroupwiseRewrite
from sparsecc.passmanager import Pass, PassContext, PassResult, Skipped, register_pass
from sparsecc.policy import Option, choose
from sparsecc.shapes import infer_shapes
from sparsecc.sparsity.two_four import check_two_four

NAME = "lower-tensorrt"


@register_pass
class LowerTensorRT(Pass):
    """Replace masked Conv/Gemm/MatMul/depthwise layers by sparsecc plugin nodes where the plugin should be faster.

    Args:
        precision: The precision the engine will run in ("fp16" or "fp32"), for the cost model.
            Defaults to "fp16" (run ``to-fp16`` after this pass).
        min_gain: A plugin must be estimated this much faster than the dense layer (0.1 = 10%).
            Defaults to 0.1.
        force: Lower every layer a plugin applies to, whatever the cost model says (the
            estimates are still reported). Defaults to False.
        fold: Fold unused input channels into the producing layers first. Defaults to True.
        aot: Emit ``aot=1`` (TensorRT runs the PTX compiled at build time) or 0 (the JIT Python
            implementation). Defaults to True.
    """

    name = NAME
    exact = True
    # plugin nodes carry the compile-time geometry (pads, strides) and a kept list per layer
    specializes_shapes = True
    description = ("Masked Conv/Gemm/MatMul/depthwise Conv -> one sparsecc TensorRT plugin node (GroupwiseConv/"
                   "GroupwiseLinear/DepthwiseSubGemm) where a GPU roofline cost model finds it faster; 2:4 and "
                   "grouped layers stay")

    def __init__(self, precision: str = "fp16", min_gain: float = 0.1, force: bool = False, fold: bool = True,
                 aot: bool = True):
        if precision not in PRECISION_FACTOR:
            raise OptionError(f"unknown precision '{precision}' for lower-tensorrt",
                              fix=f"use one of {sorted(PRECISION_FACTOR)}")
        if not isinstance(min_gain, (int, float)) or min_gain < 0:
            raise OptionError(f"min_gain must be a number >= 0, got {min_gain!r}")
        self.precision = precision
        self.min_gain = float(min_gain)
        self.force = bool(force)
        self.fold = bool(fold)
        self.aot = bool(aot)

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        cost = GpuAnalyticCost(self.precision)
        notes = []
        if ctx.cost_model == "measured":
            notes.append("cost model: analytic GPU roofline (no GPU measurement is made by this pass; "
                         "--cost-model measured times ONNX Runtime CPU, which says nothing about TensorRT)")
        details: dict[str, Any] = {"cost_model": cost.name, "precision": self.precision,
                                   "plugin_efficiency": PLUGIN_EFFICIENCY, "layers": {}}
        replaced: set[str] = set()
        folded = GroupwiseRewrite._fold_all(model, details, replaced) if self.fold else 0
        layers, unsupported = find_weight_layers(model)
        wanted = {name for layer in layers for name in (layer.input, layer.output)}
        try:
            shapes = infer_shapes(model, wanted)
        except ShapeError as err:
            shapes = {}
            notes.append(f"activation shapes unknown ({err.what}); every layer stays as it is")
        layers, unsupported = find_weight_layers(model, shapes)
        skipped = [Skipped(u.node, f"{u.op} not lowered: {u.reason}") for u in unsupported]
        by_output = {n.outputs[0].name: n for n in model.graph.nodes if n.outputs}
        lowered = 0
        for layer in layers:
            node = by_output[layer.output]
            info = details["layers"].setdefault(layer.node, {})
            reason = self._why_not(ctx, layer, node, shapes)
            if reason is None:
                reason = self._lower(model.graph, node, layer, shapes, info, cost)
            if reason is None:
                replaced.add(layer.weight)
                lowered += 1
            else:
                info.setdefault("lowering", "dense")
                info["reason"] = reason
                skipped.append(Skipped(layer.node, reason))
        invalidated = ctx.plan.invalidate(replaced) if ctx.plan is not None else []
        ctx.state[NAME] = details
        notes.insert(0, f"{lowered} layer(s) lowered to sparsecc plugin nodes, {folded} producer(s) shrunk by "
                        "folding unused channels (cost model: analytic GPU roofline, assumed constants)")
        if invalidated:
            notes.append(f"{len(invalidated)} plan entr(ies) invalidated: their weights were replaced")
        return PassResult(lowered + folded > 0, lowered + folded, skipped, notes, details)

    @staticmethod
    def _why_not(ctx: PassContext, layer: WeightLayer, node: gs.Node, shapes: dict) -> str | None:
        """Why a layer is left as it is before any lowering is asked, or None."""
        weight = node.inputs[1].values
        if layer.shared_with:
            return f"weight shared with {layer.shared_with}"
        if weight.dtype not in (np.float32, np.float16):
            return f"{weight.dtype} weight: the plugins take float16 or float32"
        entry = ctx.plan.entries.get(layer.weight) if ctx.plan is not None else None
        if (entry is not None and entry.pattern == "2:4") or check_two_four(weight, layer.op, layer.trans_b):
            return ("2:4 sparse weight: stays Conv/MatMul so that TensorRT's SPARSE_WEIGHTS can run it on "
                    "sparse tensor cores")
        if shapes.get(layer.input) is None or shapes.get(layer.output) is None:
            return "input/output shape unknown (give concrete input shapes with --shape)"
        return None

    def _lower(self, graph: gs.Graph, node: gs.Node, layer: WeightLayer, shapes: dict, info: dict,
               cost: GpuAnalyticCost) -> str | None:
        """Lower one layer; None when it was lowered, else why not."""
        weight = node.inputs[1].values
        bias = node.inputs[2] if node.op == "Conv" and len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
        if bias is not None and not isinstance(bias, gs.Constant):
            return "the bias is computed at run time (not a constant)"
        view = LayerToLower(node, layer, weight, bias, shapes[layer.input], shapes[layer.output])
        proposals = propose_all(view, dense_gpu_candidate(view), FAMILY)
        if proposals.not_applicable:
            info["not_applicable"] = proposals.not_applicable
        candidates = proposals.candidates
        if len(candidates) == 1:
            return "no plugin applies: " + "; ".join(f"{k}: {v}" for k, v in proposals.not_applicable.items())
        cost.time(candidates)
        info["estimated_us"] = {c.name: round(c.seconds * 1e6, 3) for c in candidates}
        info["macs"] = {c.name: c.macs for c in candidates}
        choice, why = _choose(candidates, self.min_gain, self.force)
        info.update(lowering=choice.name, why=why)
        if choice.name == "dense":
            return f"not faster by the cost model: {why}"
        x, y = node.inputs[0], node.outputs[0]
        node.outputs.clear()
        node.inputs.clear()
        em = Emitter(graph, layer.node, NAME, weight.dtype)
        choice.emit(em, x, y)
        if not self.aot:  # the JIT Python implementation (Triton launched by TensorRT)
            em.graph.nodes[-1].attrs["aot"] = 0
        return None


def _choose(candidates: list[Candidate], min_gain: float, force: bool) -> tuple[Candidate, str]:
    if force:
        best = min(candidates[1:], key=lambda c: c.seconds)
        return best, f"forced (force: true); estimated {best.seconds * 1e6:.2f} us vs dense " \
                     f"{candidates[0].seconds * 1e6:.2f} us"
    # estimates only (no timing on this path); the reason is given in microseconds (milliseconds
    # round every GPU layer here to 0.003 ms)
    dense = candidates[0]
    options = [Option(c.name, None, dense.seconds / c.seconds) for c in candidates[1:]]
    decision = choose(dense.name, options, 1.0 + min_gain, "GPU roofline")
    choice = next(c for c in candidates if c.name == decision.choice)
    best = min(candidates[1:], key=lambda c: c.seconds)
    figures = (f"{best.name} estimated {best.seconds * 1e6:.2f} us vs dense {dense.seconds * 1e6:.2f} us "
               f"({dense.seconds / best.seconds:.2f}x, GPU roofline)")
    return choice, figures if choice is not dense else f"{figures}, needs {min_gain:.0%} gain"

"""``lower-tensorrt``: masked Conv/Gemm/MatMul and depthwise layers -> single sparsecc TensorRT plugin nodes (exact).

It lowers the **masked layers themselves** (after ``apply-plan``, in place of ``groupwise-rewrite``
or, after ``deprune-dead-channels``, of ``deprune-rewrite``), not the portable subgraphs those
emit: the masked weight states the kept list directly (its all-zero im2col rows, input features
or depthwise taps), whatever CPU lowering would have been picked, so no pattern per CPU lowering
has to be matched back. Channels no consumer reads are folded into their producers first
(``fold``), as ``groupwise-rewrite`` does. The loop is the lowering driver's
(:mod:`sparsecc.lowering.driver`); the lowerings are family ``tensorrt``
(:mod:`sparsecc.lowering.plugins`), priced by an **analytic** GPU roofline with assumed constants
(no GPU measurement is made here). Left as they were, each with its reason: grouped convs, 2:4
weights (they stay Conv/MatMul so TensorRT's ``SPARSE_WEIGHTS`` can pick a sparse tactic), layers
with nothing pruned, and layers the cost model does not find faster. ONNX Runtime cannot run the
result; the pass manager verifies it through the plugins' numpy references. Options::

    - lower-tensorrt                                   # analytic GPU cost, FP16 target
    - lower-tensorrt: {precision: fp32, min_gain: 0.2}
    - lower-tensorrt: {force: true}                    # every layer a plugin applies to
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

import sparsecc.plugins  # noqa: F401  (registers the plugins' numpy references, which verify this pass)
from sparsecc.errors import OptionError
from sparsecc.graphutil import optional_input
from sparsecc.layers import WeightLayer
from sparsecc.lowering import Candidate, choose_lowering
from sparsecc.lowering.driver import LoweringPass, LoweringRun
from sparsecc.lowering.plugins import FAMILY, PLUGIN_EFFICIENCY, PRECISION_FACTOR, GpuAnalyticCost, dense_gpu_candidate
from sparsecc.passmanager import PassContext, register_pass
from sparsecc.sparsity.two_four import check_two_four

NAME = "lower-tensorrt"


@register_pass
class LowerTensorRT(LoweringPass):
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
    family = FAMILY
    # plugin nodes carry the compile-time geometry (pads, strides) and a kept list per layer
    specializes_shapes = True
    keeps_timing_cache = False  # its cost model is analytic: it measures nothing
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
        self.set_lowering_options(cost_model="analytic", min_gain=min_gain, fold=fold)
        self.precision = precision
        self.force = bool(force)
        self.aot = bool(aot)

    def make_cost(self, ctx: PassContext, run: LoweringRun) -> GpuAnalyticCost:
        cost = GpuAnalyticCost(self.precision)
        if ctx.cost_model == "measured":
            run.notes.append("cost model: analytic GPU roofline (no GPU measurement is made by this pass; "
                             "--cost-model measured times ONNX Runtime CPU, which says nothing about TensorRT)")
        run.details.update(cost_model=cost.name, precision=self.precision, plugin_efficiency=PLUGIN_EFFICIENCY)
        return cost

    def unsupported(self, item) -> str:
        return f"{item.op} not lowered: {item.reason}"

    def shapes_unknown(self, run: LoweringRun, error) -> None:
        run.notes.append(f"activation shapes unknown ({error.what}); every layer stays as it is")

    def why_dense(self, ctx: PassContext, layer: WeightLayer, node: gs.Node, shapes: dict) -> str | None:
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
        bias = optional_input(node, 2) if node.op == "Conv" else None
        if bias is not None and not isinstance(bias, gs.Constant):
            return "the bias is computed at run time (not a constant)"
        return None

    def layer_options(self) -> dict[str, Any]:
        return {"aot": self.aot}  # the JIT Python implementation (Triton launched by TensorRT) when False

    def dense_candidate(self, view):
        return dense_gpu_candidate(view)

    def decide(self, view, proposals, cost, info: dict[str, Any]):
        candidates = proposals.candidates
        if proposals.not_applicable:
            info["not_applicable"] = proposals.not_applicable
        if len(candidates) == 1:
            return candidates[0], "no plugin applies: " + "; ".join(
                f"{k}: {v}" for k, v in proposals.not_applicable.items())
        cost.time(candidates)
        info["estimated_us"] = {c.name: round(c.seconds * 1e6, 3) for c in candidates}
        info["macs"] = {c.name: c.macs for c in candidates}
        choice, why = _choose(candidates, self.min_gain, self.force)
        info.update(lowering=choice.name, why=why)
        return choice, f"not faster by the cost model: {why}"

    def summary(self, run: LoweringRun) -> str:
        return (f"{run.lowered} layer(s) lowered to sparsecc plugin nodes, {run.folded} producer(s) shrunk by "
                "folding unused channels (cost model: analytic GPU roofline, assumed constants)")


def _choose(candidates: list[Candidate], min_gain: float, force: bool) -> tuple[Candidate, str]:
    if force:
        best = min(candidates[1:], key=lambda c: c.seconds)
        return best, f"forced (force: true); estimated {best.seconds * 1e6:.2f} us vs dense " \
                     f"{candidates[0].seconds * 1e6:.2f} us"
    # analytic estimates carry no spread, so nothing is ever re-measured; the reason is given in
    # microseconds (choose_lowering's milliseconds round every GPU layer here to 0.003 ms)
    choice, _ = choose_lowering(candidates, min_gain, lambda chosen: None)
    dense, best = candidates[0], min(candidates[1:], key=lambda c: c.seconds)
    figures = (f"{best.name} estimated {best.seconds * 1e6:.2f} us vs dense {dense.seconds * 1e6:.2f} us "
               f"({dense.seconds / best.seconds:.2f}x, GPU roofline)")
    return choice, figures if choice is not dense else f"{figures}, needs {min_gain:.0%} gain"

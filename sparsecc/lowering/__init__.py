"""The lowering toolkit: what every pass that runs a weight layer as other nodes shares.

- :class:`ConvGeometry` (:mod:`sparsecc.conv_geometry`): Conv padding, stride, dilation and output size.
- :mod:`~sparsecc.lowering.emitter`: :class:`Emitter` (nodes with provenance, constants in the
  graph's dtype) and the Gather/Conv/Gemm building blocks.
- :mod:`~sparsecc.lowering.registry`: the open registry of lowerings.
- :mod:`~sparsecc.lowering.cost`: the analytic and measured cost models, the choice with its noise
  rule, and the whole-model check.
- :mod:`~sparsecc.lowering.timing_cache`: measured timings in a file, for reproducible compiles.
- :mod:`~sparsecc.lowering.driver`: :class:`LoweringPass`, the per-layer loop every lowering pass
  (``groupwise-rewrite``, ``deprune-rewrite``, ``lower-tensorrt``) is a short configuration of.
- :mod:`~sparsecc.lowering.gather`: the group-wise lowerings (channel-gather, tap-gather).
- :mod:`~sparsecc.lowering.depthwise`: DEPrune's depthwise lowerings (depthwise, kernel-crop,
  dr-grouped, dr-compact).
- :mod:`~sparsecc.lowering.plugins`: the TensorRT plugin lowerings and the GPU roofline cost model.

Every built-in lowering is registered once this package is imported. Adding a lowering takes one
file and no change to any pass::

    from sparsecc.lowering import Candidate, Lowering, register_lowering

    def propose(layer):                      # layer: LayerToLower (node, weight, shapes, ...)
        if layer.in_shape is None:
            return "input shape unknown"     # a reason: recorded, the layer is left as it is
        return Candidate("", emit, macs=..., copied=..., nodes=2)   # emit(emitter, x, y)

    register_lowering(Lowering("my-lowering", family="groupwise", ops=frozenset({"Conv"}),
                               propose=propose, s_per_mac=18e-12))

The passes of the family then offer it to their cost model (and ``lowering: my-lowering``
forces it); ``unregister_lowering(name)`` removes it. Through the CLI, a recipe imports the file
first (``imports: [my_lowering.py]``, see :mod:`sparsecc.extensions`).
"""

from sparsecc.conv_geometry import ConvGeometry, conv_geometry
from sparsecc.lowering.cost import (AnalyticCost, MeasuredCost, analytic_seconds, choose_lowering, describe_candidates,
                                    layer_graph, undo_unless_faster, whole_model_check)
from sparsecc.lowering.driver import IGNORE, LoweringPass, LoweringRun
from sparsecc.lowering.emitter import Emitter, emit_conv, emit_gather, emit_gather_features, emit_gemm
from sparsecc.lowering.registry import (Candidate, LayerToLower, Lowering, Proposals, get_lowering, lowerings,
                                        propose_all, register_lowering, unregister_lowering)
from sparsecc.lowering.timing_cache import TimingCache, default_timing_cache_path, open_timing_cache

# the built-in lowerings register themselves on import
from sparsecc.lowering import gather  # noqa: E402,F401  (isort: skip)
from sparsecc.lowering import depthwise  # noqa: E402,F401  (isort: skip)
from sparsecc.lowering import plugins  # noqa: E402,F401  (isort: skip)

__all__ = [
    "AnalyticCost", "Candidate", "ConvGeometry", "Emitter", "IGNORE", "LayerToLower", "Lowering", "LoweringPass",
    "LoweringRun", "MeasuredCost", "Proposals", "TimingCache", "analytic_seconds", "choose_lowering", "conv_geometry", "default_timing_cache_path",
    "describe_candidates", "emit_conv", "emit_gather", "emit_gather_features", "emit_gemm", "get_lowering",
    "layer_graph", "lowerings", "open_timing_cache", "propose_all", "register_lowering", "undo_unless_faster",
    "unregister_lowering", "whole_model_check",
]

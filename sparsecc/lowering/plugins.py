"""The TensorRT plugin lowerings: a masked Conv/Gemm/MatMul as one sparsecc plugin node.

- ``groupwise-conv-plugin``: a Conv whose weight has all-zero im2col rows becomes one
  ``sparsecc::GroupwiseConv`` node (implicit GEMM over the kept rows, :mod:`sparsecc.plugins`).
- ``groupwise-linear-plugin``: a Gemm/MatMul whose weight has all-zero input features becomes one
  ``sparsecc::GroupwiseLinear`` node (the gather of kept features fused into the GEMM).
- ``depthwise-subgemm-plugin``: a depthwise Conv with pruned taps (DEPrune's masked layer) becomes
  one ``sparsecc::DepthwiseSubGemm`` node: DEPrune's diagonal-wise refactorization, one 32 x K'
  sub-GEMM per group of 32 channels over the kept (channel, tap) columns, on tensor cores.

All are family ``tensorrt`` (the ``lower-tensorrt`` pass offers them, with its ``aot`` option in
``LayerToLower.options``: 1 selects the AOT implementation, 0 the JIT one); they read the masked
layer itself, so the lowered node computes exactly what the layer computed (up to the order of
the additions).

The cost model here is **analytic, for a GPU running TensorRT** (:class:`GpuAnalyticCost`): a
roofline (MACs at a tensor-core rate against bytes at a memory bandwidth) plus a launch per
kernel. Its constants are assumptions for an H100/H200-class GPU, not measurements: no GPU was
available when it was written. The plugin is priced at :data:`PLUGIN_EFFICIENCY` of the dense
layer's MAC rate (the issue's target for the group-wise kernel, >= 0.7 x ideal speedup vs
cuBLAS), so it wins only where enough of the layer is pruned and the layer is large enough for
compute to matter. A dense depthwise Conv runs on CUDA cores, not tensor cores
(:data:`DEPTHWISE_FACTOR` x the time per MAC), and is usually memory-bound; the roofline does not
model how far a library's depthwise kernel falls short of the memory bound (DEPrune measured
cuDNN's), so it rarely finds the sub-GEMM faster: ``force: true`` lowers anyway.
``tools/gpu_bench.py`` measures the real ratios on a GPU; put them here.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.graphutil import optional_input
from sparsecc.lowering.emitter import Emitter, emit_conv, emit_gemm
from sparsecc.conv_geometry import conv_geometry
from sparsecc.lowering.gather import conv_kept_rows, gemm_kept_features
from sparsecc.lowering.registry import Candidate, LayerToLower, Lowering, register_lowering
from sparsecc.plan import gemm_weight_kn
from sparsecc.plugins.ops import (DEPTHWISE_SUBGEMM, DW_GROUP, GROUPWISE_CONV, GROUPWISE_LINEAR, NAMESPACE,
                                  plugin_node_attributes)

FAMILY = "tensorrt"

# Assumed, not measured (no GPU here): an H100/H200-class GPU under TensorRT.
# FP16 tensor cores at ~200 TMAC/s effective (about 40% of the dense peak), FP32 8x slower;
# ~2.5 TB/s of HBM bandwidth; ~2.5 us per kernel launch.
FP16_S_PER_MAC = 1.0 / 200e12
PRECISION_FACTOR = {"fp16": 1.0, "fp32": 8.0}
BYTES_PER_ELEMENT = {"fp16": 2, "fp32": 4}
BYTES_PER_S = 2.5e12
S_PER_KERNEL = 2.5e-6
# The plugin's MAC rate relative to TensorRT's dense tactic (the 0.7 x ideal target).
PLUGIN_EFFICIENCY = 0.7
# A depthwise Conv has no GEMM for tensor cores: FP16 on CUDA cores, ~8x the tensor-core time per MAC.
DEPTHWISE_FACTOR = 8.0


def plugin_domain_import(graph: gs.Graph) -> None:
    """Declare the sparsecc domain (version 1) in the graph's opset imports, beside the default domain."""
    import onnx

    domains = list(graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)])
    if not any(d.domain == NAMESPACE for d in domains):
        domains.append(onnx.helper.make_opsetid(NAMESPACE, 1))
    graph.import_domains = domains


def _plugin_node(em: Emitter, op_type: str, inputs, y: gs.Tensor, aot: bool, **attributes) -> gs.Node:
    node = em.node(op_type, inputs, [y], op_type[0].lower() + op_type[1:],
                   **plugin_node_attributes(op_type, aot=aot, **attributes))
    node.domain = NAMESPACE
    plugin_domain_import(em.graph)
    return node


def _bias(em: Emitter, bias: gs.Tensor | None, size: int) -> gs.Constant:
    """The bias as a [size] constant (zeros where the layer had none: a plugin's inputs are fixed)."""
    values = np.zeros(size, em.dtype) if bias is None else np.asarray(bias.values).reshape(-1)
    if values.size != size:
        values = np.broadcast_to(values, (size,))
    return em.const("bias", np.ascontiguousarray(values))


def conv_kept_positions(weight: np.ndarray) -> np.ndarray:
    """Kept im2col rows of an ungrouped conv weight as int32 positions c * kh * kw + i * kw + j, ascending."""
    return np.flatnonzero(conv_kept_rows(weight, 1).reshape(-1)).astype(np.int32)


def gemm_kept_positions(layer, weight: np.ndarray) -> np.ndarray:
    """Input features some output reads (rows of W[K, N] with a non-zero), as int32, ascending."""
    return np.flatnonzero(gemm_kept_features(layer, weight)).astype(np.int32)


def emit_groupwise_conv(em: Emitter, x, y, node: gs.Node, weight: np.ndarray, kept: np.ndarray, bias,
                        geometry, aot: bool = True) -> gs.Node:
    """One GroupwiseConv node: Wk = the kept im2col columns of the weight, [Cout, K']."""
    c_out, _, kh, kw = weight.shape
    wk = np.ascontiguousarray(weight.reshape(c_out, -1)[:, kept])
    inputs = [x, em.const("wk", wk), em.const("kept", kept.astype(np.int32)), _bias(em, bias, c_out)]
    return _plugin_node(em, GROUPWISE_CONV, inputs, y, aot, kernel_shape=[kh, kw], strides=list(geometry.strides),
                        pads=list(geometry.pads), dilations=list(geometry.dilations))


def emit_groupwise_linear(em: Emitter, x, y, layer, weight: np.ndarray, kept: np.ndarray, bias, aot: bool = True
                          ) -> gs.Node:
    """One GroupwiseLinear node: Wk = the kept rows of W[K, N], [K', N]."""
    kn = gemm_weight_kn(layer, weight)
    wk = np.ascontiguousarray(kn[kept])
    inputs = [x, em.const("kept", kept.astype(np.int32)), em.const("wk", wk), _bias(em, bias, kn.shape[1])]
    return _plugin_node(em, GROUPWISE_LINEAR, inputs, y, aot)


def depthwise_subgemm_layout(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Wg [G, 32, K'], kept int32 [G, K']) of a masked depthwise weight [C, 1, kh, kw].

    Group g holds channels 32 g .. 32 g + 31 (the last group may be partial). Its columns are the
    kept (channel, tap) pairs, position c' * kh * kw + t inside the group, ascending; column k of
    group g has the weight of its channel on that channel's row and zeros elsewhere (the DR
    block-diagonal weight, pruned columns dropped). Groups with fewer kept columns than the most
    are padded with zero-weight columns reading position 0.
    """
    channels, taps = weight.shape[0], int(np.prod(weight.shape[2:]))
    flat = weight.reshape(channels, taps)
    groups = -(-channels // DW_GROUP)
    columns = []
    for g in range(groups):
        block = flat[g * DW_GROUP:(g + 1) * DW_GROUP]
        rows, tap = np.nonzero(block)  # row-major: ascending c' * taps + t
        columns.append((rows, tap))
    width = max(1, max(rows.size for rows, _ in columns))
    wg = np.zeros((groups, DW_GROUP, width), weight.dtype)
    kept = np.zeros((groups, width), np.int32)
    for g, (rows, tap) in enumerate(columns):
        kept[g, :rows.size] = rows * taps + tap
        wg[g, rows, np.arange(rows.size)] = flat[g * DW_GROUP + rows, tap]
    return wg, kept


def emit_depthwise_subgemm(em: Emitter, x, y, weight: np.ndarray, bias, geometry, aot: bool = True) -> gs.Node:
    """One DepthwiseSubGemm node for a masked depthwise Conv."""
    wg, kept = depthwise_subgemm_layout(weight)
    kh, kw = weight.shape[2:]
    inputs = [x, em.const("wg", wg), em.const("kept", kept), _bias(em, bias, weight.shape[0])]
    return _plugin_node(em, DEPTHWISE_SUBGEMM, inputs, y, aot, kernel_shape=[kh, kw], strides=list(geometry.strides),
                        pads=list(geometry.pads), dilations=list(geometry.dilations))


# ----------------------------------------------------------------------------------------------
# candidates: elements moved are the layer's memory traffic (input, output, weights), for the roofline
# ----------------------------------------------------------------------------------------------

def dense_gpu_candidate(view: LayerToLower) -> Candidate:
    """The layer as it is, priced for TensorRT's dense tactic (re-emitted with its own weight)."""
    node, weight = view.node, view.weight
    in_elems = int(np.prod(view.in_shape))
    out_elems = int(np.prod(view.out_shape))
    if node.op == "Conv":
        c_out, c_in_g, kh, kw = weight.shape
        macs = out_elems * c_in_g * kh * kw
        emit = lambda em, x, y: emit_conv(em, x, y, node, weight, view.bias)  # noqa: E731
        if view.layer.kind == "depthwise":  # CUDA cores, not tensor cores
            return Candidate("dense", emit, macs, in_elems + out_elems + weight.size, 1,
                             FP16_S_PER_MAC * DEPTHWISE_FACTOR)
    else:
        k, n = gemm_weight_kn(view.layer, weight).shape
        macs = (in_elems // k) * k * n
        emit = lambda em, x, y: emit_gemm(em, x, y, node, weight)  # noqa: E731
    return Candidate("dense", emit, macs, in_elems + out_elems + weight.size, 1, FP16_S_PER_MAC)


def _conv_plugin(view: LayerToLower) -> Candidate | str:
    node, weight = view.node, view.weight
    if view.layer.kind == "depthwise":
        return "depthwise conv: depthwise-subgemm-plugin lowers it"
    if view.layer.group != 1:
        return f"grouped conv (group={view.layer.group}): the GroupwiseConv plugin computes one group"
    if weight.ndim != 4:
        return f"{weight.ndim - 2}-D convolution: the plugin is 2-D"
    kept = conv_kept_positions(weight)
    if kept.size == weight[0].size:
        return "no all-zero im2col row in the weight"
    if kept.size == 0:
        return "every im2col row is pruned (the layer computes only its bias)"
    c_out, _, kh, kw = weight.shape
    geometry = conv_geometry(node, view.in_shape, (kh, kw))
    out_elems = int(np.prod(view.out_shape))
    moved = int(np.prod(view.in_shape)) + out_elems + c_out * kept.size + kept.size + c_out
    aot = bool(view.options.get("aot", True))
    return Candidate("", lambda em, x, y: emit_groupwise_conv(em, x, y, node, weight, kept, view.bias, geometry, aot),
                     out_elems * kept.size, moved, 1)


def _linear_plugin(view: LayerToLower) -> Candidate | str:
    node, weight, layer = view.node, view.weight, view.layer
    if node.op == "Gemm":
        if int(node.attrs.get("transA", 0)):
            return "Gemm with transA=1: the plugin reads X as [..., K]"
        if float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0:
            return "Gemm with alpha or beta != 1: the plugin computes X W + B"
    bias = optional_input(node, 2)
    if bias is not None:
        if not isinstance(bias, gs.Constant):
            return "the bias is computed at run time (not a constant)"
        n = gemm_weight_kn(layer, weight).shape[1]
        if int(np.prod(bias.values.shape)) not in (1, n):
            return f"bias of shape {list(bias.values.shape)} is not per output feature ([{n}])"
    if weight.ndim != 2:
        return f"{weight.ndim}-D MatMul weight: the plugin takes W[K, N]"
    kept = gemm_kept_positions(layer, weight)
    k, n = gemm_weight_kn(layer, weight).shape
    if kept.size == k:
        return "no all-zero input feature in the weight"
    if kept.size == 0:
        return "every input feature is pruned (the layer computes only its bias)"
    rows = int(np.prod(view.in_shape[:-1]))
    moved = rows * k + rows * n + kept.size * n + kept.size + n
    aot = bool(view.options.get("aot", True))
    return Candidate("", lambda em, x, y: emit_groupwise_linear(em, x, y, layer, weight, kept, bias, aot),
                     rows * kept.size * n, moved, 1)


def _depthwise_plugin(view: LayerToLower) -> Candidate | str:
    node, weight = view.node, view.weight
    if view.layer.kind != "depthwise":
        return f"not a depthwise conv ({view.layer.kind})"
    if weight.ndim != 4:
        return f"{weight.ndim - 2}-D convolution: the plugin is 2-D"
    nonzero = np.count_nonzero(weight)
    if nonzero == weight.size:
        return "no pruned tap in the depthwise weight"
    if nonzero == 0:
        return "every tap is pruned (the layer computes only its bias)"
    wg, kept = depthwise_subgemm_layout(weight)
    geometry = conv_geometry(node, view.in_shape, tuple(weight.shape[2:]))
    pixels = int(view.out_shape[0] * np.prod(view.out_shape[2:]))
    moved = int(np.prod(view.in_shape)) + int(np.prod(view.out_shape)) + wg.size + kept.size + weight.shape[0]
    aot = bool(view.options.get("aot", True))
    return Candidate("", lambda em, x, y: emit_depthwise_subgemm(em, x, y, weight, view.bias, geometry, aot),
                     pixels * wg.shape[0] * DW_GROUP * wg.shape[2], moved, 1)


class GpuAnalyticCost:
    """Roofline estimate for TensorRT on a GPU: max(MACs x time per MAC, bytes / bandwidth) + launches.

    A candidate's ``s_per_mac`` holds its FP16 time per MAC (seconds); ``precision`` scales it
    and sizes the bytes. Deterministic, no GPU needed;
    the constants above are assumptions, stated as such in every decision.
    """

    name = "gpu-analytic"

    def __init__(self, precision: str = "fp16"):
        if precision not in PRECISION_FACTOR:
            raise ValueError(f"precision must be one of {sorted(PRECISION_FACTOR)}")
        self.precision = precision

    def seconds(self, candidate: Candidate) -> float:
        compute = candidate.macs * candidate.s_per_mac * PRECISION_FACTOR[self.precision]
        memory = candidate.copied * BYTES_PER_ELEMENT[self.precision] / BYTES_PER_S
        return max(compute, memory) + candidate.nodes * S_PER_KERNEL

    def time(self, candidates: list[Candidate], *_args, **_kwargs) -> None:
        for candidate in candidates:
            candidate.seconds = self.seconds(candidate)
            candidate.source = "analytic"

    def remeasure(self, candidates: list[Candidate], *_args, **_kwargs) -> None:
        """Estimates carry no noise: nothing to re-measure."""


GROUPWISE_CONV_PLUGIN = register_lowering(Lowering(
    "groupwise-conv-plugin", FAMILY, frozenset({"Conv"}), _conv_plugin, FP16_S_PER_MAC / PLUGIN_EFFICIENCY,
    "one sparsecc::GroupwiseConv plugin node (implicit GEMM over the kept im2col rows)"))
GROUPWISE_LINEAR_PLUGIN = register_lowering(Lowering(
    "groupwise-linear-plugin", FAMILY, frozenset({"Gemm", "MatMul"}), _linear_plugin,
    FP16_S_PER_MAC / PLUGIN_EFFICIENCY,
    "one sparsecc::GroupwiseLinear plugin node (gather of the kept features fused into the GEMM)"))
DEPTHWISE_SUBGEMM_PLUGIN = register_lowering(Lowering(
    "depthwise-subgemm-plugin", FAMILY, frozenset({"Conv"}), _depthwise_plugin, FP16_S_PER_MAC / PLUGIN_EFFICIENCY,
    "one sparsecc::DepthwiseSubGemm plugin node (DEPrune's 32 x K' sub-GEMMs over the kept taps)"))

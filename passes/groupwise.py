"""Group-wise pruning: plan the masks, then run pruned layers as a Gather and a smaller GEMM.

``plan-groupwise`` (analysis) decides, per selected layer, which groups (im2col rows of a
Conv, input features of a Gemm/MatMul) to keep, with the criteria of
:mod:`sparsecc.sparsity.groupwise`. Options::

    - plan-groupwise: {keep: 0.5, criterion: l1}          # every conv/gemm but the first and last
    - plan-groupwise:                                     # per-layer ratios
        ratios: {layer1.0.conv1: 0.25, layer1.0.conv2: 0.5, fc: 0.75}
        criterion: l2
    - plan-groupwise: {keep: 0.5, threshold: global, layers: {kinds: [conv, pointwise]}, alignment: 8}

``ratios`` maps layer names (``sparsecc inspect`` lists them) to the share of groups kept; alone,
it selects exactly those layers; with ``keep``, it overrides ``keep`` for the layers it names.

``groupwise-rewrite`` (exact with respect to the masked model, so it runs after ``apply-plan``)
reads the pruned groups from the all-zero rows of each weight (a group the plan prunes must be
zero by then) and lowers each layer, choosing per layer with a cost model:

- ``dense``: leave the layer as it is (chosen when no lowering is estimated to be faster).
- ``channel-gather``: input channels (or features) with every group pruned are dropped: a Gather
  of the kept channels feeds a smaller Conv/Gemm/MatMul with the same attributes (features are
  gathered between two Transposes, as rows: ONNX Runtime gathers a last axis element by element).
- ``tap-gather`` (Conv with a kernel larger than 1x1): the paper's transposition (section 4.2).
  The im2col input is built tap-major as whole planes, so skipped columns of the im2col matrix
  become skipped rows: one Gather copies each input channel plane once per kept tap of that
  channel, one depthwise Conv with one-hot kernels (the layer's padding, stride and dilation)
  shifts each copy to its tap, and one 1x1 Conv with K' = kept groups (padded to a multiple of 8)
  computes the layer. ONNX Runtime runs both Convs in its blocked NCHWc layout.

Before lowering, input channels that no kept group reads are folded into the layer that
produces them when the path between is per-channel (bias Add, Relu, Clip, BatchNormalization,
GELU, per-channel Mul/Add with constants, ...) and feeds nothing else: the producer loses those
output filters and the Gather disappears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.errors import OptionError, PlanError, ShapeError, UnsupportedModelError
from sparsecc.graphutil import constant, is_graph_output, mark_provenance, unique_name
from sparsecc.layers import WeightLayer, find_weight_layers
from sparsecc.model import Model
from sparsecc.passmanager import Pass, PassContext, PassResult, Skipped, register_pass
from sparsecc.plan import LayerSelector, SparsityPlan, WeightPlan, gemm_weight_kn
from sparsecc.shapes import infer_shapes
from sparsecc.sparsity.groupwise import CRITERIA, check_keep, global_groupwise_masks, groupwise_result

REWRITE = "groupwise-rewrite"
LOWERINGS = ("dense", "channel-gather", "tap-gather")


# ----------------------------------------------------------------------------------------------
# plan-groupwise
# ----------------------------------------------------------------------------------------------

@register_pass
class PlanGroupwise(Pass):
    """Plan group-wise masks (analysis only: the graph is not changed).

    Args:
        keep: Share of the groups of each selected layer kept, in (0, 1). Defaults to none
            (then ``ratios`` is required).
        ratios: Per-layer share kept, {layer name: keep}. Defaults to none.
        criterion: "l1", "l2", "mean" or "zeros". Defaults to "l1".
        threshold: "per-layer" (each layer keeps ``keep`` of its groups) or "global" (one
            threshold over all selected layers, on length-normalised scores). Defaults to "per-layer".
        layers: A layer selector (names, regex, kinds, exclude, exclude_first_last). Defaults to
            every conv, pointwise, grouped, gemm and matmul layer but the first and last.
        alignment: Kept counts are multiples of this. Defaults to 1.
    """

    name = "plan-groupwise"
    exact = True
    description = "Plan group-wise masks (im2col rows of Conv, input features of Gemm/MatMul) by l1/l2/mean/zeros"

    def __init__(self, keep: float | None = None, ratios: dict[str, float] | None = None, criterion: str = "l1",
                 threshold: str = "per-layer", layers: dict[str, Any] | None = None, alignment: int = 1):
        if keep is None and not ratios and criterion != "zeros":
            raise OptionError("plan-groupwise needs keep (share of groups kept) or ratios ({layer: keep})",
                              fix="e.g. plan-groupwise: {keep: 0.5}")
        if keep is not None:
            check_keep(keep, where="plan-groupwise: keep")
        for layer, ratio in (ratios or {}).items():
            check_keep(ratio, where=f"plan-groupwise: ratios[{layer!r}]")
        if criterion not in CRITERIA:
            raise OptionError(f"unknown criterion '{criterion}' for plan-groupwise", fix=f"use one of {list(CRITERIA)}")
        if threshold not in ("per-layer", "global"):
            raise OptionError(f"unknown threshold rule '{threshold}'", fix="use per-layer or global")
        if threshold == "global" and (ratios or keep is None):
            raise OptionError("threshold: global takes one keep for all layers, not per-layer ratios",
                              fix="drop ratios, or use threshold: per-layer")
        if not isinstance(alignment, int) or alignment < 1:
            raise OptionError(f"alignment must be a positive integer, got {alignment!r}")
        self.keep = keep
        self.ratios = dict(ratios or {})
        self.criterion = criterion
        self.threshold = threshold
        self.layers = layers
        self.alignment = alignment

    def _selector(self) -> LayerSelector:
        if self.layers is not None:
            return LayerSelector.from_options(self.layers)
        if self.keep is None and self.ratios:
            return LayerSelector(names=list(self.ratios))
        return LayerSelector()

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        layers, unsupported = find_weight_layers(model)
        selector = self._selector()
        _refuse_unsupported(selector, unsupported, model.source)
        selected, left_out = selector.select(layers, model.source)
        skipped = [Skipped(name, reason) for name, reason in left_out]
        skipped += [Skipped(u.node, f"{u.op} not a weight layer: {u.reason}") for u in unsupported]
        names = {layer.node for layer in selected}
        stray = sorted(set(self.ratios) - names)
        if stray:
            raise OptionError(f"ratios name {stray}, which are not selected weight layers", where=model.source,
                              fix="use layer names from `sparsecc inspect`, and make sure the layer selector "
                                  "includes them")
        targets = []
        for layer in selected:
            if layer.kind == "depthwise":
                skipped.append(Skipped(layer.node, "depthwise conv: every group is one tap of one channel; "
                                                   "depthwise pruning is a different pass"))
            else:
                targets.append(layer)
        if not targets:
            raise OptionError("no layer to plan: every selected layer is depthwise", where=model.source,
                              fix="select conv, pointwise, grouped, gemm or matmul layers")
        tensors = model.graph.tensors()
        plan = SparsityPlan(source=f"plan-groupwise ({self.criterion}, {self.threshold})")
        per_layer: dict[str, Any] = {}
        if self.threshold == "global":
            weights = {layer.node: (tensors[layer.weight].values, layer.kind, layer.group, layer.trans_b)
                       for layer in targets}
            results, threshold = global_groupwise_masks(weights, self.keep, self.criterion, self.alignment)
            notes = [f"global threshold {threshold:.6g} on length-normalised {self.criterion} scores"]
        else:
            results = {}
            for layer in targets:
                keep = self.ratios.get(layer.node, self.keep)
                results[layer.node] = groupwise_result(tensors[layer.weight].values, layer.kind, layer.group,
                                                       keep if keep is not None else 0.5, self.criterion,
                                                       self.alignment, layer.trans_b)
            notes = []
        for layer in targets:
            result = results[layer.node]
            keep = result.kept_groups / result.total_groups
            plan.add(WeightPlan(layer.weight, layer.node, "group-wise", result.mask, self.criterion,
                                ratio=round(1.0 - keep, 6), alignment=self.alignment,
                                details={"kept_groups": result.kept_groups, "total_groups": result.total_groups,
                                         "conv_groups": int(result.kept_rows.shape[0]),
                                         "threshold": [round(t, 8) for t in result.threshold],
                                         "threshold_rule": self.threshold}))
            per_layer[layer.node] = {"kept_groups": result.kept_groups, "total_groups": result.total_groups}
        already = sorted(w for w in plan.entries if ctx.plan is not None and w in ctx.plan.entries)
        if ctx.plan is None:
            ctx.plan = plan
        else:
            for weight, entry in plan.entries.items():
                ctx.plan.entries.setdefault(weight, entry)
        if already:
            notes.append(f"{len(already)} weight(s) were already planned; the existing entries are kept: {already}")
        notes.insert(0, f"{len(plan)} layer(s) planned group-wise")
        return PassResult(False, 0, skipped, notes, {"layers": per_layer})


def _refuse_unsupported(selector: LayerSelector, unsupported, source: str) -> None:
    """A layer the selector names explicitly but that cannot be pruned is an error, with its reason."""
    import re

    for item in unsupported:
        named = item.node in selector.names
        matched = bool(selector.regex) and re.search(selector.regex, item.node) is not None
        if named or matched:
            raise UnsupportedModelError(f"layer '{item.node}' ({item.op}) cannot be pruned group-wise: {item.reason}",
                                        where=source, fix="make the weight a constant initializer (export with "
                                                          "constant folding), or leave the layer out of the selector")


# ----------------------------------------------------------------------------------------------
# groupwise-rewrite: analysis
# ----------------------------------------------------------------------------------------------

@dataclass
class ConvGeometry:
    """Explicit padding, stride, dilation and output size of a 2-D Conv at a known input shape."""

    pads: tuple[int, int, int, int]  # top, left, bottom, right
    strides: tuple[int, int]
    dilations: tuple[int, int]
    out_hw: tuple[int, int]


def conv_geometry(node: gs.Node, input_shape: tuple[int, ...], kernel: tuple[int, int]) -> ConvGeometry:
    """Resolve auto_pad (SAME_UPPER, SAME_LOWER, VALID) and pads into explicit numbers."""
    strides = tuple(int(s) for s in node.attrs.get("strides", [1, 1]))
    dilations = tuple(int(d) for d in node.attrs.get("dilations", [1, 1]))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    size = input_shape[2:]
    begin, end = [0, 0], [0, 0]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for a in range(2):
            out = -(-size[a] // strides[a])
            total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - size[a])
            small, large = total // 2, total - total // 2
            begin[a], end[a] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
        begin, end = pads[:2], pads[2:]
    out_hw = tuple((size[a] + begin[a] + end[a] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1
                   for a in range(2))
    return ConvGeometry((begin[0], begin[1], end[0], end[1]), strides, dilations, out_hw)


@dataclass
class Candidate:
    """One way to lower a layer: an emitter, and what it costs."""

    name: str
    emit: Callable[["Emitter", gs.Tensor, gs.Tensor], None]
    macs: int
    copied: int  # activation elements moved by Gather/Transpose and layout reorders
    nodes: int
    seconds: float | None = None


# Calibrated on ONNX Runtime 1.31 CPU, 2 threads (Xeon 2.5 GHz; tools/bench_groupwise.py profiles):
# a 3x3 Conv runs ~20 ps per MAC, a 1x1 NCHWc Conv ~17 ps, Gather/Transpose/NCHWc reorder ~0.8 ns per
# element. A tap-gather counts its one-hot depthwise Conv (kh x kw MACs per im2col element) as MACs.
_PS_PER_MAC = {"dense": 20e-12, "channel-gather": 20e-12, "tap-gather": 17e-12}
_S_PER_COPY = 0.8e-9
_S_PER_NODE = 15e-6


def analytic_seconds(candidate: Candidate) -> float:
    """Estimated run time of a candidate lowering (analytical model, calibrated as above)."""
    return candidate.macs * _PS_PER_MAC[candidate.name] + candidate.copied * _S_PER_COPY + \
        candidate.nodes * _S_PER_NODE


class Emitter:
    """Adds nodes with provenance to a graph, naming them after the layer they lower."""

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph = graph
        self.prefix = prefix

    def const(self, base: str, values: np.ndarray) -> gs.Constant:
        return constant(self.graph, f"{self.prefix}/{base}", values)

    def var(self, base: str, dtype=np.float32, shape=None) -> gs.Variable:
        return gs.Variable(unique_name(self.graph, f"{self.prefix}/{base}"), dtype=dtype, shape=shape)

    def node(self, op: str, inputs, outputs, base: str, **attrs) -> gs.Node:
        node = gs.Node(op, unique_name(self.graph, f"{self.prefix}/{base}"), attrs=attrs, inputs=list(inputs),
                       outputs=list(outputs))
        mark_provenance(node, REWRITE)
        self.graph.nodes.append(node)
        return node


def _ints(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def conv_candidates(node: gs.Node, layer: WeightLayer, weight: np.ndarray, bias: gs.Tensor | None,
                    in_shape: tuple[int, ...]) -> tuple[list[Candidate], str | None]:
    """Lowerings of a Conv whose weight has all-zero im2col rows (dense first), or a reason for none."""
    group = layer.group
    c_out, c_in_g, kh, kw = weight.shape
    rows = np.any(weight.reshape(group, c_out // group, c_in_g, kh, kw) != 0, axis=1)  # [g, C/g, kh, kw] kept
    if rows.all():
        return [], "dense: no all-zero group (im2col row) in the weight"
    if not rows.any():
        return [], "every group is pruned (the layer computes only its bias); left dense"
    geometry = conv_geometry(node, in_shape, (kh, kw))
    batch = in_shape[0]
    out_elems = batch * c_out * geometry.out_hw[0] * geometry.out_hw[1]
    dense_macs = out_elems * c_in_g * kh * kw
    candidates = [Candidate("dense", lambda em, x, y: _emit_conv(em, x, y, node, weight, bias),
                            dense_macs, 0, 1)]
    used = rows.any(axis=(2, 3))  # [g, C/g]: channel read by some kept tap
    counts = used.sum(axis=1)
    if not used.all() and np.all(counts == counts[0]):
        channels = np.concatenate([gi * c_in_g + np.flatnonzero(used[gi]) for gi in range(group)])
        local = [np.flatnonzero(used[gi]) for gi in range(group)]
        small = np.concatenate([weight[gi * (c_out // group):(gi + 1) * (c_out // group)][:, local[gi]]
                                for gi in range(group)])
        copied = batch * channels.size * in_shape[2] * in_shape[3]
        candidates.append(Candidate(
            "channel-gather",
            lambda em, x, y: _emit_conv(em, _gather(em, x, channels, 1, "channels"), y, node, small, bias),
            out_elems * int(counts[0]) * kh * kw, copied, 2))
    if kh * kw > 1:
        table = tap_rows(rows)
        k = table.shape[0] * table.shape[1]
        out_planes = batch * k * geometry.out_hw[0] * geometry.out_hw[1]
        # the Gather copies K' input planes; ONNX Runtime reorders them to NCHWc
        copied = batch * k * in_shape[2] * in_shape[3] + out_planes
        candidates.append(Candidate(
            "tap-gather", lambda em, x, y: _emit_tap_gather(em, x, y, weight, table, bias, geometry),
            out_elems * table.shape[1] + out_planes * kh * kw, copied, 3))
    return candidates, None


def gemm_candidates(node: gs.Node, layer: WeightLayer, weight: np.ndarray,
                    in_shape: tuple[int, ...] | None) -> tuple[list[Candidate], str | None]:
    """Lowerings of a Gemm/MatMul whose weight has all-zero input features (dense first)."""
    kn = gemm_weight_kn(layer, weight)
    used = np.any(kn != 0, axis=1)
    if used.all():
        return [], "dense: no all-zero input feature (row of W[K, N]) in the weight"
    if not used.any():
        return [], "every input feature is pruned (the layer computes only its bias); left dense"
    rows = int(np.prod(in_shape[:-1])) if in_shape else 1
    k, n = kn.shape
    features = np.flatnonzero(used)
    small = weight[:, features] if layer.trans_b else weight[features]
    rank = len(in_shape) if in_shape else (2 if node.op == "Gemm" else None)
    return [Candidate("dense", lambda em, x, y: _emit_gemm(em, x, y, node, weight), rows * k * n, 0, 1),
            Candidate("channel-gather",
                      lambda em, x, y: _emit_gemm(em, _gather_features(em, x, features, rank), y, node, small),
                      rows * features.size * n, rows * (k + 2 * features.size), 4)], None


# ----------------------------------------------------------------------------------------------
# groupwise-rewrite: emitters (shared by the rewrite and by the measured cost model)
# ----------------------------------------------------------------------------------------------

def _gather(em: Emitter, x: gs.Tensor, indices: np.ndarray, axis: int, base: str) -> gs.Tensor:
    out = em.var(base)
    em.node("Gather", [x, em.const(f"{base}_idx", _ints(indices))], [out], f"gather_{base}", axis=axis)
    return out


def _gather_features(em: Emitter, x: gs.Tensor, features: np.ndarray, rank: int | None) -> gs.Tensor:
    """The kept input features (last axis) of a Gemm/MatMul input, gathered with the features first.

    ONNX Runtime's Gather on the last axis copies one element per index (1.65 ms for 64 x 2048
    features, about 12 ns an element); with the features moved first (Transpose, Gather on axis 0,
    Transpose back) each index copies a contiguous row: 0.45 ms there, and ONNX Runtime fuses the
    Transpose back into a following Gemm. A MatMul input of unknown rank is gathered on its last axis.
    """
    if rank is None or rank == 1:
        return _gather(em, x, features, -1, "features")
    first = em.var("features_first")
    em.node("Transpose", [x], [first], "features_first", perm=[rank - 1] + list(range(rank - 1)))
    gathered = _gather(em, first, features, 0, "features")
    out = em.var("features_last")
    em.node("Transpose", [gathered], [out], "features_last", perm=list(range(1, rank)) + [0])
    return out


def _own(em: Emitter, tensor: gs.Tensor) -> gs.Tensor:
    """A fresh copy of a constant, so that nodes of a cost-model graph never touch the model's tensors."""
    return em.const(tensor.name.split("/")[-1], tensor.values) if isinstance(tensor, gs.Constant) else tensor


def _emit_conv(em: Emitter, x: gs.Tensor, y: gs.Tensor, node: gs.Node, weight: np.ndarray,
               bias: gs.Tensor | None) -> None:
    inputs = [x, em.const("weight", weight)] + ([_own(em, bias)] if bias is not None else [])
    em.node("Conv", inputs, [y], "conv", **dict(node.attrs))


def _emit_gemm(em: Emitter, x: gs.Tensor, y: gs.Tensor, node: gs.Node, weight: np.ndarray) -> None:
    inputs = [x, em.const("weight", weight)] + [_own(em, t) for t in node.inputs[2:]]
    em.node(node.op, inputs, [y], node.op.lower(), **dict(node.attrs))


def tap_rows(rows: np.ndarray, block: int = 8) -> np.ndarray:
    """The im2col rows each conv group keeps: [groups, K'/groups, 3] of (channel in the group, i, j).

    ``rows[g, c, i, j]`` says whether group g keeps channel c at tap (i, j). Rows are channel-major,
    so the Gather reads the input planes in order. Groups are padded with (-1, -1, -1) zero rows to
    one count, and K' to a multiple of ``block``: a grouped 1x1 Conv needs equal counts per group,
    and ONNX Runtime runs a Conv in its blocked NCHWc layout only when its channel count is a
    multiple of 8 (with K' = 1151 the one-hot Conv ran 6x slower, in plain NCHW).
    """
    group = rows.shape[0]
    kept = [np.argwhere(rows[gi]) for gi in range(group)]
    step = block // np.gcd(group, block)
    k_g = -(-max(len(k) for k in kept) // step) * step
    table = np.full((group, k_g, 3), -1, np.int64)
    for gi, k in enumerate(kept):
        table[gi, :len(k)] = k
    return table


def _emit_tap_gather(em: Emitter, x: gs.Tensor, y: gs.Tensor, weight: np.ndarray, table: np.ndarray,
                     bias: gs.Tensor | None, geometry: ConvGeometry) -> None:
    """Im2col of the kept rows as a Gather and a one-hot depthwise Conv, then one (grouped) 1x1 Conv.

    The Gather copies channel plane c once for each kept tap (i, j) of c; a depthwise Conv with the
    layer's padding, stride and dilation and a kernel that is 1 at (i, j) and 0 elsewhere shifts
    each copy to its tap, so its output is the im2col matrix of the kept rows, [K', Ho, Wo] (the
    paper's transposition, section 4.2: skipped columns become skipped contiguous rows). Both Convs
    run in ONNX Runtime's NCHWc layout with no reorder between them; on the VGG-16 conv this beat a
    Pad, a Gather and a Slice per tap and a Concat by 15-25%, and on every ResNet-18/VGG-16 layer.
    ``table`` comes from :func:`tap_rows`; its padding rows get a zero kernel and zero weights.
    """
    c_out, c_in_g, kh, kw = weight.shape
    group, k_g, _ = table.shape
    co_g = c_out // group
    valid = table[..., 0] >= 0
    c, i, j = (np.where(valid, table[..., a], 0) for a in range(3))  # padding rows read (0, 0, 0)
    channels = (np.arange(group)[:, None] * c_in_g + c).ravel()
    onehot = np.zeros((group * k_g, 1, kh, kw), np.float32)
    onehot[np.flatnonzero(valid), 0, i[valid], j[valid]] = 1.0
    small = np.zeros((c_out, k_g, 1, 1), np.float32)
    for gi in range(group):
        out = slice(gi * co_g, (gi + 1) * co_g)
        small[out, :, 0, 0] = np.where(valid[gi], weight[out, c[gi], i[gi], j[gi]], 0.0)
    planes = _gather(em, x, channels, 1, "tap_planes")
    im2col = em.var("im2col")
    em.node("Conv", [planes, em.const("onehot", onehot)], [im2col], "taps", group=group * k_g,
            kernel_shape=[kh, kw], pads=list(geometry.pads), strides=list(geometry.strides),
            dilations=list(geometry.dilations))
    inputs = [im2col, em.const("weight", small)] + ([_own(em, bias)] if bias is not None else [])
    em.node("Conv", inputs, [y], "gemm_1x1", group=group, kernel_shape=[1, 1])


# ----------------------------------------------------------------------------------------------
# groupwise-rewrite: cost model
# ----------------------------------------------------------------------------------------------

def measure_candidates(candidates: list[Candidate], in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                       runs: int, threads: int) -> None:
    """Time each candidate as a small model on ONNX Runtime CPU, interleaved; sets ``seconds``.

    A Conv layer is timed between two 1x1 depthwise Convs: in a network its neighbours are Convs,
    so ONNX Runtime keeps a dense layer in its blocked (NCHWc) layout while a lowering leaves it;
    the wrappers make each candidate pay the layout changes it would pay in the model. Each
    candidate's time is the minimum over the runs (the least disturbed by other load on the machine).
    """
    from sparsecc.backends.ort import OrtBackend
    from sparsecc.bench import time_interleaved

    backend = OrtBackend(threads=threads)
    wrap = len(in_shape) == 4 and len(out_shape) == 4
    sessions = []
    for candidate in candidates:
        graph = gs.Graph(opset=17)
        em = Emitter(graph, "m")
        x = gs.Variable("x", dtype=np.float32, shape=list(in_shape))
        y = gs.Variable("y", dtype=np.float32, shape=list(out_shape))
        graph.inputs, graph.outputs = [x], [y]
        if wrap:
            inner_x, inner_y = em.var("in"), em.var("out")
            em.node("Conv", [x, em.const("w_in", np.ones((in_shape[1], 1, 1, 1), np.float32))], [inner_x], "wrap_in",
                    group=in_shape[1])
            em.node("Conv", [inner_y, em.const("w_out", np.ones((out_shape[1], 1, 1, 1), np.float32))], [y],
                    "wrap_out", group=out_shape[1])
            candidate.emit(em, inner_x, inner_y)
        else:
            candidate.emit(em, x, y)
        sessions.append(backend.load(Model(graph, "cost model").to_bytes()))
    feed = {"x": np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)}
    timings = time_interleaved(dict(enumerate(sessions)), dict.fromkeys(range(len(sessions)), feed),
                               warmup=1, runs=runs)
    for index, candidate in enumerate(candidates):
        candidate.seconds = timings[index].min_ms / 1e3


# ----------------------------------------------------------------------------------------------
# groupwise-rewrite: folding unused input channels into the producer
# ----------------------------------------------------------------------------------------------

_UNARY = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Tanh", "LeakyRelu", "Identity",
          "Neg", "Abs", "Elu", "Selu", "Softplus", "Sqrt", "Exp"}
_BINARY = {"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min", "Pow"}


@dataclass
class FoldPlan:
    producer: gs.Node
    region: list[gs.Node]
    tensors: list[gs.Tensor] = field(default_factory=list)  # the activations whose channel count changes


def find_fold(graph: gs.Graph, x: gs.Tensor, consumer: gs.Node, channel_axis: int) -> FoldPlan | str:
    """Can unused channels of ``x`` be dropped in the layer that produces them? A plan, or why not.

    ``channel_axis`` counts from the end (-3 for NCHW, -1 for features).
    """
    if is_graph_output(graph, x) or len(x.outputs) != 1 or x.outputs[0] is not consumer:
        return "the input also feeds other nodes or is a graph output"
    region, tensors, producer = [], [], None
    stack, seen = [x], set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        tensors.append(tensor)
        if not tensor.inputs:
            return f"'{tensor.name}' is a graph input, not produced by a weight layer"
        node = tensor.inputs[0]
        if node.op in ("Conv", "Gemm", "MatMul"):
            if producer is not None and producer is not node:
                return "the path mixes two weight layers"
            producer = node
            continue
        if node.op not in _UNARY | _BINARY | {"BatchNormalization"}:
            return f"'{node.name}' ({node.op}) between the producer and the layer is not a per-channel op"
        if node.op == "BatchNormalization" and channel_axis != -3:
            return "BatchNormalization on a feature axis other than 1"
        region.append(node)
        variables = [t for t in node.inputs if isinstance(t, gs.Variable) and not t.is_empty()]
        if node.op == "BatchNormalization":
            variables = variables[:1]
            if not all(isinstance(t, gs.Constant) for t in node.inputs[1:5]):
                return f"BatchNormalization '{node.name}' has non-constant parameters"
        stack.extend(variables)
    if producer is None:
        return "no weight layer produces the input"
    reason = _producer_reason(producer, channel_axis)
    if reason:
        return reason
    members = {id(n) for n in region} | {id(consumer)}
    for tensor in tensors:
        if is_graph_output(graph, tensor) or any(id(n) not in members for n in tensor.outputs):
            return f"'{tensor.name}' also feeds nodes outside the per-channel path"
    return FoldPlan(producer, region, tensors)


def _producer_reason(node: gs.Node, channel_axis: int) -> str | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(weight, gs.Constant):
        return f"producer '{node.name}' has no constant weight"
    if len(weight.outputs) > 1:
        return f"producer '{node.name}' shares its weight with another layer"
    if node.op == "Conv":
        if channel_axis != -3 or int(node.attrs.get("group", 1)) != 1:
            return f"producer '{node.name}' is a grouped conv or feeds a feature axis"
    elif channel_axis != -1 or (node.op == "Gemm" and int(node.attrs.get("transA", 0))):
        return f"producer '{node.name}' ({node.op}) does not produce the channel axis"
    extra = node.inputs[2:]
    if any(not isinstance(t, gs.Constant) and not t.is_empty() for t in extra):
        return f"producer '{node.name}' has a non-constant bias"
    return None


def apply_fold(graph: gs.Graph, fold: FoldPlan, keep: np.ndarray, channel_axis: int, old: int) -> list[str]:
    """Drop the producer's output channels not in ``keep`` and slice the per-channel constants on the path.

    Returns the names of the weight tensors replaced.
    """
    producer = fold.producer
    weight = producer.inputs[1]
    replaced = [weight.name]
    if producer.op == "Conv":
        producer.inputs[1] = constant(graph, weight.name, weight.values[keep])
    elif producer.op == "Gemm" and int(producer.attrs.get("transB", 0)):
        producer.inputs[1] = constant(graph, weight.name, weight.values[keep])
    else:
        producer.inputs[1] = constant(graph, weight.name, weight.values[:, keep])
    for index in range(2, len(producer.inputs)):
        tensor = producer.inputs[index]
        if isinstance(tensor, gs.Constant):
            producer.inputs[index] = _slice_const(graph, tensor, keep, -1, old)  # bias: [C] or [M, N]
    for node in fold.region:
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant):
                continue
            if node.op == "BatchNormalization":
                node.inputs[index] = constant(graph, tensor.name, tensor.values[keep])
            else:
                node.inputs[index] = _slice_const(graph, tensor, keep, channel_axis, old)
    for tensor in fold.tensors:
        if tensor.shape is not None and len(tensor.shape) >= -channel_axis:
            shape = list(tensor.shape)
            shape[channel_axis] = int(keep.size)
            tensor.shape = shape
    return replaced


def _slice_const(graph: gs.Graph, tensor: gs.Constant, keep: np.ndarray, axis_from_end: int, old: int) -> gs.Constant:
    values = tensor.values
    if values.ndim >= -axis_from_end and values.shape[axis_from_end] == old and old > 1:
        return constant(graph, tensor.name, np.take(values, keep, axis=values.ndim + axis_from_end))
    return tensor


# ----------------------------------------------------------------------------------------------
# groupwise-rewrite: the pass
# ----------------------------------------------------------------------------------------------

@register_pass
class GroupwiseRewrite(Pass):
    """Run group-wise pruned layers as Gather + smaller GEMM where that is faster (exact).

    Args:
        cost_model: "measured" (each candidate timed as a one-layer model on ONNX Runtime CPU) or
            "analytic" (MACs and moved elements, calibrated on ONNX Runtime CPU). Defaults to "measured".
        lowering: "auto" (the cost model picks) or one of channel-gather, tap-gather to force it
            where it applies (layers it does not apply to stay dense). Defaults to "auto".
        min_gain: A lowering must be estimated this much faster than dense (0.1 = 10%). Defaults to 0.1.
        runs: Timed runs per candidate for the measured cost model. Defaults to 5.
        threads: ONNX Runtime intra-op threads for measuring. Defaults to 2.
        fold: Fold unused input channels into the producing layer. Defaults to True.

    With the measured cost model choosing the lowerings, the whole rewritten model is finally
    timed against the graph it came from and the rewrite is undone if it is not faster (the
    report says so).
    """

    name = REWRITE
    exact = True
    # the one-hot depthwise Conv and the gathered planes are sized for the compile-time spatial dims
    specializes_shapes = True
    description = ("Group-wise pruned Conv/Gemm/MatMul -> Gather of kept channels or taps + smaller GEMM "
                   "(per-layer choice by cost model; unused channels folded into producers)")

    def __init__(self, cost_model: str = "measured", lowering: str = "auto", min_gain: float = 0.1,
                 runs: int = 5, threads: int = 2, fold: bool = True):
        if cost_model not in ("measured", "analytic"):
            raise OptionError(f"unknown cost_model '{cost_model}'", fix="use measured or analytic")
        if lowering not in ("auto",) + LOWERINGS:
            raise OptionError(f"unknown lowering '{lowering}'", fix=f"use auto or one of {list(LOWERINGS)}")
        if runs < 1:
            raise OptionError(f"runs must be at least 1, got {runs}")
        self.cost_model = cost_model
        self.lowering = lowering
        self.min_gain = float(min_gain)
        self.runs = int(runs)
        self.threads = int(threads)
        self.fold = bool(fold)

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        # a forced lowering is the user's call; only the cost model's own choices are checked
        before = model.copy() if self.cost_model == "measured" and self.lowering == "auto" else None
        graph = model.graph
        layers, unsupported = find_weight_layers(model)
        wanted = {name for layer in layers for name in (layer.input, layer.output)}
        try:
            shapes = infer_shapes(model, wanted)
        except ShapeError as err:
            shapes = {}
            shape_note = f"activation shapes unknown ({err.what}); Conv layers stay dense"
        else:
            shape_note = None
        layers, unsupported = find_weight_layers(model, shapes)
        self._check_plan(ctx, layers)
        # keyed by output tensor: unnamed nodes are layers too (find_weight_layers labels them)
        nodes = {layer.node: n for n in graph.nodes for layer in layers if n.outputs and n.outputs[0].name == layer.output}
        skipped = [Skipped(u.node, f"{u.op} not rewritten: {u.reason}") for u in unsupported]
        details: dict[str, Any] = {"cost_model": self.cost_model, "layers": {}}
        replaced: set[str] = set()
        folded = self._fold_all(graph, layers, nodes, shapes, details, replaced) if self.fold else 0
        rewrites = 0
        for layer in find_weight_layers(model, shapes)[0]:
            node = nodes[layer.node]
            if layer.kind == "depthwise":
                skipped.append(Skipped(layer.node, "depthwise conv: not group-wise (see the DEPrune passes)"))
                continue
            if layer.shared_with:
                skipped.append(Skipped(layer.node, f"weight shared with {layer.shared_with}"))
                continue
            chosen = self._lower(graph, node, layer, shapes, details, skipped)
            if chosen:
                replaced.add(layer.weight)
                rewrites += 1
        notes = []
        if before is not None and rewrites + folded > 0:
            check = self._model_check(before, model)
            details["model_check"] = check
            if not check["kept"]:
                model.graph = before.graph
                skipped.append(Skipped("(whole model)", check["reason"]))
                notes.append(check["reason"])
                replaced.clear()
                rewrites = folded = 0
        if ctx.plan is not None:
            for weight in replaced:
                ctx.plan.entries.pop(weight, None)
        ctx.state[REWRITE] = details  # per-layer lowerings and times, for reports and tools
        notes.insert(0, f"{rewrites} layer(s) lowered, {folded} producer(s) shrunk by folding unused channels")
        if shape_note:
            notes.append(shape_note)
        return PassResult(rewrites + folded > 0, rewrites + folded, skipped, notes, details)

    def _model_check(self, dense: Model, rewritten: Model) -> dict[str, Any]:
        """Time the whole rewritten graph against the graph it came from, interleaved.

        Layers are chosen one at a time, but a rewrite can win on each layer and lose in the
        model (layout changes between neighbours, cache effects): the rewrite is kept only if
        the whole model is faster on the target backend.
        """
        from sparsecc.backends.ort import OrtBackend
        from sparsecc.bench import time_interleaved
        from sparsecc.onnx_files import SessionFiles
        from sparsecc.verify import input_specs, random_feeds

        backend = OrtBackend(threads=self.threads)
        with SessionFiles() as files:  # loaded by path: no serialised copy of either model's weights
            sessions = {"dense": backend.load(files.write(dense.graph)),
                        "rewritten": backend.load(files.write(rewritten.graph))}
            feed = random_feeds(input_specs(rewritten), seed=0)[0]
            timings = time_interleaved(sessions, {"dense": feed, "rewritten": feed}, warmup=1, runs=self.runs)
            del sessions
        dense_ms, rewritten_ms = timings["dense"].median_ms, timings["rewritten"].median_ms
        kept = rewritten_ms < dense_ms
        verdict = "kept" if kept else "not faster, so every layer was left dense"
        return {"dense_ms": round(dense_ms, 4), "rewritten_ms": round(rewritten_ms, 4), "runs": self.runs,
                "kept": kept, "reason": f"whole model: rewritten {rewritten_ms:.3f} ms vs dense {dense_ms:.3f} ms "
                                        f"(median of {self.runs}, ONNX Runtime CPU): {verdict}"}

    @staticmethod
    def _check_plan(ctx: PassContext, layers: list[WeightLayer]) -> None:
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

    def _fold_all(self, graph: gs.Graph, layers: list[WeightLayer], nodes: dict[str, gs.Node],
                  shapes: dict, details: dict, replaced: set[str]) -> int:
        folded = 0
        for layer in layers:
            node = nodes[layer.node]
            if layer.shared_with or layer.kind == "depthwise" or layer.group != 1:
                continue
            values = node.inputs[1].values
            if layer.op == "Conv":
                used = np.flatnonzero(np.any(values != 0, axis=(0, 2, 3)))
                axis, old = -3, values.shape[1]
            else:
                used = np.flatnonzero(np.any(gemm_weight_kn(layer, values) != 0, axis=1))
                axis, old = -1, gemm_weight_kn(layer, values).shape[0]
            if used.size in (0, old):
                continue
            fold = find_fold(graph, node.inputs[0], node, axis)
            info = details["layers"].setdefault(layer.node, {})
            if isinstance(fold, str):
                info["fold"] = f"not folded: {fold}"
                continue
            replaced.update(apply_fold(graph, fold, used, axis, old))
            if layer.op == "Conv":
                node.inputs[1] = constant(graph, layer.weight, values[:, used])
            elif layer.op == "Gemm" and layer.trans_b:
                node.inputs[1] = constant(graph, layer.weight, values[:, used])
            else:
                node.inputs[1] = constant(graph, layer.weight, values[used])
            replaced.add(layer.weight)
            for tensor in fold.tensors:
                if tensor.name in shapes:
                    shape = list(shapes[tensor.name])
                    shape[axis] = int(used.size)
                    shapes[tensor.name] = tuple(shape)
            info["fold"] = (f"{old - used.size} unused input channel(s) folded into producer "
                            f"'{fold.producer.name}' ({old} -> {used.size})")
            folded += 1
        return folded

    def _lower(self, graph: gs.Graph, node: gs.Node, layer: WeightLayer, shapes: dict, details: dict,
               skipped: list[Skipped]) -> str | None:
        weight = node.inputs[1].values
        in_shape = shapes.get(layer.input)
        out_shape = shapes.get(layer.output)
        info = details["layers"].setdefault(layer.node, {})
        if layer.op == "Conv":
            if in_shape is None or out_shape is None:
                reason = "input/output shape unknown (give concrete input shapes with --shape)"
                candidates = []
            else:
                bias = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
                candidates, reason = conv_candidates(node, layer, weight, bias, in_shape)
        else:
            candidates, reason = gemm_candidates(node, layer, weight, in_shape)
        if not reason and any(not isinstance(t, gs.Constant) and not t.is_empty() for t in node.inputs[2:]):
            reason = "the bias is computed at run time (not a constant)"
        if reason:
            info.update(lowering="dense", reason=reason)
            skipped.append(Skipped(layer.node, reason))
            return None
        choice, why = self._choose(candidates, in_shape, out_shape)
        info.update(lowering=choice.name, reason=why, k=layer.k, **self._describe(candidates))
        if choice.name == "dense":
            skipped.append(Skipped(layer.node, why))
            return None
        x, y = node.inputs[0], node.outputs[0]
        node.outputs.clear()
        choice.emit(Emitter(graph, layer.node), x, y)
        node.inputs.clear()
        return choice.name

    def _choose(self, candidates: list[Candidate], in_shape, out_shape) -> tuple[Candidate, str]:
        dense = candidates[0]
        options = candidates[1:]
        if self.lowering != "auto":
            forced = [c for c in options if c.name == self.lowering]
            if not forced:
                available = [c.name for c in options] or ["none"]
                return dense, f"lowering '{self.lowering}' does not apply to this layer (applicable: {available})"
            return forced[0], f"forced by lowering: {self.lowering}"
        if self.cost_model == "measured" and in_shape is not None and out_shape is not None:
            measure_candidates(candidates, in_shape, out_shape, self.runs, self.threads)
            unit = "measured"
        else:
            for candidate in candidates:
                candidate.seconds = analytic_seconds(candidate)
            unit = "estimated"
        best = min(options, key=lambda c: c.seconds)
        if best.seconds * (1.0 + self.min_gain) < dense.seconds:
            return best, (f"{best.name} {unit} {best.seconds * 1e3:.3f} ms vs dense {dense.seconds * 1e3:.3f} ms "
                          f"({dense.seconds / best.seconds:.2f}x)")
        return dense, (f"no lowering is faster: best {best.name} {unit} {best.seconds * 1e3:.3f} ms vs dense "
                       f"{dense.seconds * 1e3:.3f} ms (needs {self.min_gain:.0%} gain)")

    @staticmethod
    def _describe(candidates: list[Candidate]) -> dict[str, Any]:
        return {"candidates_ms": {c.name: round(c.seconds * 1e3, 4) for c in candidates if c.seconds is not None},
                "macs": {c.name: c.macs for c in candidates}}

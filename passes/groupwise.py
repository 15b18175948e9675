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
zero by then) and lowers each layer with the lowerings of the ``groupwise`` family in
:mod:`sparsecc.lowering` (``channel-gather``, ``tap-gather``, and any registered later), choosing
per layer with a cost model (``dense``, the layer as it is, when none is faster). Measured
choices go through the timing cache, and the whole rewritten model must beat the dense one.

Before lowering, channels that no consumer reads are removed from the layers that make them,
with every coupled use (bias, BatchNorm, per-channel scales, depthwise convs, residual branches,
Concat/Split, Flatten into a Gemm), as the channel analysis :mod:`sparsecc.dependency` finds
them: the producer loses those output filters and the Gather disappears.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.dependency import build_channel_groups, consumer_weights, reindex_groups
from sparsecc.errors import OptionError, PlanError, ShapeError, UnsupportedModelError
from sparsecc.layers import WeightLayer, find_weight_layers
from sparsecc.lowering import (AnalyticCost, Candidate, Emitter, LayerToLower, MeasuredCost,
                              choose_lowering, describe_candidates, get_lowering, lowerings, propose_all,
                              undo_unless_faster)
from sparsecc.lowering.gather import FAMILY, conv_kept_rows, dense_candidate, gemm_kept_features
from sparsecc.onnx_files import release_to_files
from sparsecc.passmanager import Pass, PassContext, PassResult, Skipped, register_pass
from sparsecc.plan import LayerSelector, SparsityPlan, WeightPlan, merge_into
from sparsecc.shapes import infer_shapes
from sparsecc.sparsity.groupwise import CRITERIA, check_keep, global_groupwise_masks, groupwise_result

REWRITE = "groupwise-rewrite"


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
        ctx.plan, already = merge_into(ctx.plan, plan, "keep")
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
# groupwise-rewrite: the pass
# ----------------------------------------------------------------------------------------------

@register_pass
class GroupwiseRewrite(Pass):
    """Run group-wise pruned layers as Gather + smaller GEMM where that is faster (exact).

    Args:
        cost_model: "measured" (each candidate timed as a one-layer model on ONNX Runtime CPU,
            through the timing cache) or "analytic" (MACs and moved elements, calibrated on ONNX
            Runtime CPU). ``compile --cost-model`` overrides it. Defaults to "measured".
        lowering: "auto" (the cost model picks) or the name of a registered group-wise lowering
            (channel-gather, tap-gather, ...) to force it where it applies (layers it does not apply
            to stay dense). Defaults to "auto".
        min_gain: A lowering must be estimated this much faster than dense (0.1 = 10%). Defaults to 0.1.
        runs: Timed runs per candidate for the measured cost model. Defaults to 5.
        threads: ONNX Runtime intra-op threads for measuring. Defaults to 2.
        fold: Fold unused input channels into the producing layer. Defaults to True.

    With the measured cost model choosing the lowerings, the whole rewritten model is finally
    timed against the graph it came from and the rewrite is undone if it is not faster by more
    than the measured spread (the report says so).
    """

    name = REWRITE
    exact = True
    # every emitted node is shape-generic (explicit pads only where they do not follow the input size:
    # lowering.registry refuses the others on symbolic sizes); the compile checks a second shape
    description = ("Group-wise pruned Conv/Gemm/MatMul -> Gather of kept channels or taps + smaller GEMM "
                   "(per-layer choice by cost model; unused channels folded into producers)")

    def __init__(self, cost_model: str = "measured", lowering: str = "auto", min_gain: float = 0.1,
                 runs: int = 5, threads: int = 2, fold: bool = True):
        if cost_model not in ("measured", "analytic"):
            raise OptionError(f"unknown cost_model '{cost_model}'", fix="use measured or analytic")
        if lowering != "auto" and (get_lowering(lowering) is None or get_lowering(lowering).family != FAMILY):
            raise OptionError(f"unknown lowering '{lowering}'",
                              fix=f"use auto or one of {[lw.name for lw in lowerings(FAMILY)]}")
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
        cost_model = ctx.cost_model or self.cost_model
        cost = AnalyticCost() if cost_model == "analytic" else MeasuredCost(self.runs, self.threads, ctx.timing_cache)
        # a forced lowering is the user's call; only the cost model's own choices are checked
        before = model.copy() if cost_model == "measured" and self.lowering == "auto" else None
        if before is not None:  # timed from files: the arrays rewritten layers drop are freed
            release_to_files(before.graph)
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
        details: dict[str, Any] = {"cost_model": cost_model, "layers": {}}
        replaced: set[str] = set()
        folded = self._fold_all(model, details, replaced) if self.fold else 0
        if folded:
            shapes = infer_shapes(model, wanted)  # the folded layers are narrower
        rewrites = 0
        for layer in find_weight_layers(model, shapes)[0]:
            node = nodes[layer.node]
            if layer.kind == "depthwise":
                skipped.append(Skipped(layer.node, "depthwise conv: not group-wise (see the DEPrune passes)"))
                continue
            if layer.shared_with:
                skipped.append(Skipped(layer.node, f"weight shared with {layer.shared_with}"))
                continue
            if self._lower(graph, node, layer, shapes, details, skipped, cost):
                replaced.add(layer.weight)
                rewrites += 1
        notes = []
        if before is not None and rewrites + folded > 0 and not undo_unless_faster(
                before, model, self.runs, self.threads, ctx.timing_cache, details, skipped, notes):
            replaced.clear()
            rewrites = folded = 0
        if ctx.timing_cache is not None:
            ctx.timing_cache.save()
            details["timing_cache"] = ctx.timing_cache.describe()
        invalidated = ctx.plan.invalidate(replaced) if ctx.plan is not None else []
        ctx.state[REWRITE] = details  # per-layer lowerings and times, for reports and tools
        notes.insert(0, f"{rewrites} layer(s) lowered, {folded} producer(s) shrunk by folding unused channels")
        if invalidated:
            notes.append(f"{len(invalidated)} plan entr(ies) invalidated: their weights were replaced")
        if shape_note:
            notes.append(shape_note)
        return PassResult(rewrites + folded > 0, rewrites + folded, skipped, notes, details)

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

    @staticmethod
    def _fold_all(model, details: dict, replaced: set[str]) -> int:
        """Drop channels that no layer reads from the layers that make them; returns the groups shrunk.

        The channel analysis (:mod:`sparsecc.dependency`) gives, per set of coupled channels, every
        use: producers, per-channel parameters (bias, BatchNorm, scales), depthwise convs, counts
        and the consumers' weights. A channel every consumer weight ignores is removed from all of
        them at once, so its Gather never has to be emitted. Groups the analysis cannot edit say why.
        """
        try:
            groups = build_channel_groups(model)
        except ShapeError as err:
            details["fold"] = f"not folded: {err.what}"
            return 0
        edits = []
        for group in groups:
            reads = consumer_weights(model, group)
            if not reads:
                continue
            used = np.zeros(group.size, dtype=bool)
            for weight in reads:  # [K_out, C, ...]: channel c is read where any of its weights is non-zero
                used |= np.any(weight != 0, axis=tuple(a for a in range(weight.ndim) if a != 1))
            if used.all() or not used.any():
                continue
            readers = list(dict.fromkeys(u.node for u in group.consumers))
            if not group.editable():
                for node in readers:
                    details["layers"].setdefault(node, {})["fold"] = "not folded: " + "; ".join(group.blockers)
                continue
            edits.append((group, np.flatnonzero(used)))
            replaced.update(u.tensor for u in group.producers + group.consumers if u.kind in ("weight", "param"))
            makers = group.weight_nodes()
            into = f"producer '{makers[0]}'" if len(makers) == 1 else "producers " + ", ".join(f"'{m}'" for m in makers)
            for node in readers:
                details["layers"].setdefault(node, {})["fold"] = (
                    f"{group.size - int(used.sum())} unused input channel(s) folded into {into} "
                    f"({group.size} -> {int(used.sum())})")
        if edits:
            reindex_groups(model, edits)
        return len(edits)

    def _lower(self, graph: gs.Graph, node: gs.Node, layer: WeightLayer, shapes: dict, details: dict,
               skipped: list[Skipped], cost) -> str | None:
        weight = node.inputs[1].values
        in_shape = shapes.get(layer.input)
        out_shape = shapes.get(layer.output)
        info = details["layers"].setdefault(layer.node, {})
        reason = _why_dense(node, layer, weight, in_shape, out_shape)
        if reason:
            info.update(lowering="dense", reason=reason)
            skipped.append(Skipped(layer.node, reason))
            return None
        bias = node.inputs[2] if node.op == "Conv" and len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
        view = LayerToLower(node, layer, weight, bias, in_shape, out_shape)
        proposals = propose_all(view, dense_candidate(view), FAMILY)
        if proposals.not_applicable:
            info["not_applicable"] = proposals.not_applicable
        choice, why = self._choose(proposals.candidates, proposals.not_applicable, view, cost)
        info.update(lowering=choice.name, reason=why, k=layer.k, **describe_candidates(proposals.candidates))
        if choice.name == "dense":
            skipped.append(Skipped(layer.node, why))
            return None
        x, y = node.inputs[0], node.outputs[0]
        node.outputs.clear()
        choice.emit(Emitter(graph, layer.node, REWRITE, weight.dtype), x, y)
        node.inputs.clear()
        return choice.name

    def _choose(self, candidates: list[Candidate], not_applicable: dict[str, str], view: LayerToLower,
                cost) -> tuple[Candidate, str]:
        dense, options = candidates[0], candidates[1:]
        if self.lowering != "auto":
            forced = [c for c in options if c.name == self.lowering]
            if not forced:
                why = not_applicable.get(self.lowering, "it does not lower this op")
                available = [c.name for c in options] or ["none"]
                return dense, (f"lowering '{self.lowering}' does not apply to this layer: {why} "
                               f"(applicable: {available})")
            return forced[0], f"forced by lowering: {self.lowering}"
        if not options:
            return dense, "no lowering applies: " + "; ".join(f"{k}: {v}" for k, v in not_applicable.items())
        dtype = view.weight.dtype
        cost.time(candidates, view.node.op, view.in_shape, view.out_shape, dtype)

        def remeasure(chosen: list[Candidate]) -> None:
            cost.remeasure(chosen, view.node.op, view.in_shape, view.out_shape, dtype)

        return choose_lowering(candidates, self.min_gain, remeasure)


def _why_dense(node: gs.Node, layer: WeightLayer, weight: np.ndarray, in_shape, out_shape) -> str | None:
    """Why a layer cannot be lowered group-wise at all, or None."""
    if layer.op == "Conv":
        if in_shape is None or out_shape is None:
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

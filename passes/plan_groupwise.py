"""``plan-groupwise``: which groups of each layer to keep, by a group-wise criterion (analysis only).

A group is one im2col row of a Conv (the same (c_in, i, j) tap across the output channels) or one
input feature of a Gemm/MatMul; the criteria (:mod:`sparsecc.sparsity.groupwise`, and any
registered with :func:`sparsecc.sparsity.importance.register_group_criterion`) score each. Options::

    - plan-groupwise: {keep: 0.5, criterion: l1}          # every conv/gemm but the first and last
    - plan-groupwise:                                     # per-layer ratios
        ratios: {layer1.0.conv1: 0.25, layer1.0.conv2: 0.5, fc: 0.75}
        criterion: l2
    - plan-groupwise: {keep: 0.5, threshold: global, layers: {kinds: [conv, pointwise]}, alignment: 8}

``ratios`` maps layer names (``sparsecc inspect`` lists them) to the share of groups kept; alone,
it selects exactly those layers; with ``keep``, it overrides ``keep`` for the layers it names.
``groupwise-rewrite`` (:mod:`sparsecc.passes.groupwise_rewrite`) then runs the pruned layers as a
Gather and a smaller GEMM.
"""

from __future__ import annotations

from typing import Any

from sparsecc.errors import OptionError, UnsupportedModelError
from sparsecc.layers import find_weight_layers
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped, register_pass
from sparsecc.plan import LayerSelector, SparsityPlan, WeightPlan, merge_into
from sparsecc.sparsity.groupwise import check_keep, global_groupwise_masks, groupwise_result
from sparsecc.sparsity.importance import group_criterion_names


@register_pass
class PlanGroupwise(Pass):
    """Plan group-wise masks (analysis only: the graph is not changed).

    Args:
        keep: Share of the groups of each selected layer kept, in (0, 1). Defaults to none
            (then ``ratios`` is required).
        ratios: Per-layer share kept, {layer name: keep}. Defaults to none.
        criterion: "l1", "l2", "mean", "zeros" or another registered criterion
            (:mod:`sparsecc.sparsity.importance`). Defaults to "l1".
        threshold: "per-layer" (each layer keeps ``keep`` of its groups) or "global" (one
            threshold over all selected layers, on length-normalised scores). Defaults to "per-layer".
        layers: A layer selector (names, regex, kinds, exclude, exclude_first_last). Defaults to
            every conv, pointwise, grouped, gemm and matmul layer but the first and last.
        alignment: Kept counts are multiples of this. Defaults to 1.
    """

    name = "plan-groupwise"
    role = Role.PLAN
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
        if criterion not in group_criterion_names():
            raise OptionError(f"unknown criterion '{criterion}' for plan-groupwise",
                              fix=f"use one of {group_criterion_names()} (or register one in a module the recipe "
                                  "imports: sparsecc.sparsity.importance.register_group_criterion)")
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

    @classmethod
    def options_at(cls, options: dict[str, Any], fraction: float) -> dict[str, Any]:
        """``keep`` (and each of ``ratios``) becomes ``1 - fraction * (1 - keep)``."""
        options = dict(options)
        options["keep"] = 1.0 - fraction * (1.0 - float(options.get("keep", 0.5)))
        if options.get("ratios"):
            options["ratios"] = {k: 1.0 - fraction * (1.0 - v) for k, v in options["ratios"].items()}
        return options

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

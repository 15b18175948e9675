"""Filter pruning on the ONNX graph: plan which coupled channels go, then remove them.

``plan-filters`` is analysis: it finds the coupled channel groups
(:mod:`sparsecc.dependency`), scores every channel with a filter metric
(:mod:`sparsecc.sparsity.filter_metrics`, the hybrid filter + 2:4 paper's
metrics among them), ranks globally or per layer, and writes ``filter`` entries
into the sparsity plan. ``remove-filters`` is the exact rewrite: it removes the
planned channels physically, everywhere they are used.

What the masks hold, and why: zeroing a producer's filter does not make its
channel zero once the bias (BatchNorm folded into it) and the activation are
applied: the channel becomes a constant, and the next layer still reads it. So
the plan also zeroes the consumers' input channels (conv weight axis 1, the
Gemm rows a Flatten feeds from the channel). With both masked, the channel
contributes nothing anywhere, and the masked model computes exactly what the
model with the channel removed computes; ``remove-filters`` is therefore exact
with respect to the masked model, and the pass manager checks it numerically.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsecc.dependency import (ChannelGroup, ChannelUse, build_channel_groups, consumer_weights,
                                 producer_weights, reindex_groups)
from sparsecc.errors import OptionError, PlanError
from sparsecc.latency.target import SpeedTarget
from sparsecc.layers import WeightLayer, find_weight_layers
from sparsecc.model import Model
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped, register_pass
from sparsecc.plan import LayerSelector, SparsityPlan, WeightPlan, merge_into
from sparsecc.sparsity.filter_metrics import LAYOUTS, normalize_by_mean, rank_global, rank_per_layer
from sparsecc.sparsity.importance import FilterGroup, filter_importance_names, score_filter_groups
from sparsecc.sparsity.two_four import eligibility

SCOPES = ("global", "per-layer")


def group_label(group: ChannelGroup) -> str:
    """The layers that make a group's channels, as users know them ("conv1 + conv2")."""
    return " + ".join(group.weight_nodes()) or group.id


def two_four_prunable(model: Model, group: ChannelGroup, layers: dict[str, WeightLayer], layout: str
                      ) -> list[bool]:
    """For each producer weight of :func:`producer_weights`: will ``plan-24`` prune it?

    The same rule as ``plan-24`` (:func:`sparsecc.sparsity.two_four.eligibility`): depthwise and
    grouped convs, rows not a multiple of 4 long (a first conv with C_in = 3) and non-float
    weights are never 2:4, so the 2:4-aware metrics leave them out.
    """
    tensors = model.graph.tensors()
    flags = []
    for use in group.producers:
        if use.kind != "weight":
            continue
        layer = layers.get(use.tensor)
        flags.append(layer is not None and eligibility(layer, tensors[use.tensor].values.dtype, layout).eligible)
    return flags


def weight_uses(group: ChannelGroup) -> list[ChannelUse]:
    """The Conv/Gemm/MatMul weights that make or read the group's channels (what the plan masks)."""
    return [u for u in group.producers if u.kind == "weight"] + list(group.consumers)


@register_pass
class PlanFilters(Pass):
    """Choose the filters to remove, by a filter metric, over coupled channel groups.

    Args:
        metric: A registered filter importance (:mod:`sparsecc.sparsity.importance`): the metrics of
            :mod:`~sparsecc.sparsity.filter_metrics` ("l1", "l2", "output-l1", "hybrid2", ...) or one of
            the user's. Defaults to "l1".
        ratio: Share of the filters removed, in (0, 1). Defaults to 0.4.
        scope: "global" (one ranking over all groups) or "per-layer" (the ratio in every group).
            Defaults to "global".
        k: Weight of the 2:4 term of the hybrid metrics. Defaults to 0.5.
        round_to: Kept channels per group are a multiple of this. Defaults to 8.
        layers: Layer selector (names, regex, kinds, exclude, exclude_first_last); a group is
            pruned only if every layer making its channels is selected. Defaults to all but the
            first and last weight layers.
        layout: Where the 2:4 groups of 4 run for the 2:4-aware metrics: "input-channel"
            (TensorRT) or "kernel-width" (the paper). Defaults to "input-channel".
        normalize: "mean" divides each group's scores by the mean of their finite values before a
            global ranking (:func:`~sparsecc.sparsity.filter_metrics.normalize_by_mean`), so layers
            whose weights are larger overall (fan-in, initialisation) are not emptied first;
            "none" ranks the raw scores. The hybrid metrics are left as they are: their rank and
            distance-to-minimum transforms are taken over all groups together. Defaults to "mean".
        target_speedup: Instead of ``ratio``: prune to this speedup over the unpruned model, keeping
            the most importance per unit of latency saved (:mod:`sparsecc.latency`). Defaults to none.
        target_latency: Instead of ``ratio``: prune to this latency, ms (CPU time of one run at one
            thread with the measured timer). Defaults to none.
        target_share: Share of the saving to the target planned now (gradual schedules). Defaults to 1.0.
        timer: How the latency tables are made: "measured" (ONNX Runtime CPU, through the timing
            cache), "analytic" or "gpu-roofline" (``lower-tensorrt``'s GPU model). ``--cost-model
            analytic`` turns "measured" into "analytic". Defaults to "measured".
        min_keep: With a target, the least share of each group kept. Defaults to 0.1.
        target_rounds: With a target and the measured timer, rounds of measuring the pruned model and
            correcting the budget, at most. Defaults to 5.
        value: With a target, how a group's kept importance counts: "log" (diminishing returns: the
            less of a group is left, the more each of its channels is worth) or "sum". Defaults to "log".

    The 2:4-aware metrics see only the producer weights ``plan-24`` would prune (see
    :func:`two_four_prunable`). Weight-layer look-alikes that are not weight layers (Gemm
    transA=1, 1-D/3-D convs, non-constant weights) are listed as skipped with the reason.
    """

    name = "plan-filters"
    role = Role.PLAN
    exact = True
    description = "Score coupled channel groups with a filter metric and plan which filters to remove"

    def __init__(self, metric: str = "l1", ratio: float = 0.4, scope: str = "global", k: float = 0.5,
                 round_to: int = 8, layers: dict | None = None, layout: str = "input-channel",
                 normalize: str = "mean", target_speedup: float | None = None,
                 target_latency: float | None = None, target_share: float = 1.0, timer: str = "measured",
                 min_keep: float = 0.1, target_rounds: int = 5, value: str = "log"):
        if metric not in filter_importance_names():
            raise OptionError(f"unknown filter metric '{metric}'", where="plan-filters: metric",
                              fix=f"use one of {', '.join(filter_importance_names())} (or register one in a module "
                                  "the recipe imports: sparsecc.sparsity.importance.register_filter_importance)")
        if not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise OptionError(f"ratio {ratio!r} is not in (0, 1)", where="plan-filters: ratio",
                              fix="give the share of filters to remove, e.g. 0.4")
        if scope not in SCOPES:
            raise OptionError(f"unknown scope '{scope}'", where="plan-filters: scope", fix="use global or per-layer")
        if layout not in LAYOUTS:
            raise OptionError(f"unknown layout '{layout}'", where="plan-filters: layout",
                              fix=f"use one of {', '.join(LAYOUTS)}")
        if not isinstance(round_to, int) or round_to < 1:
            raise OptionError(f"round_to {round_to!r} is not a positive integer", where="plan-filters: round_to",
                              fix="use 1 for no rounding, 8 for tensor cores")
        if not 0.0 <= float(k) <= 1.0:
            raise OptionError(f"k {k!r} is not in [0, 1]", where="plan-filters: k", fix="e.g. k: 0.5")
        if normalize not in ("mean", "none"):
            raise OptionError(f"unknown normalize '{normalize}'", where="plan-filters: normalize",
                              fix="use mean or none")
        self.metric, self.ratio, self.scope, self.k = metric, float(ratio), scope, float(k)
        self.normalize = normalize
        self.round_to, self.layers, self.layout = round_to, dict(layers or {}), layout
        self.target_speedup, self.target_latency, self.target_share = target_speedup, target_latency, target_share
        self.timer, self.min_keep, self.target_rounds, self.value = timer, min_keep, target_rounds, value
        self._target = None
        if target_speedup is not None or target_latency is not None:
            if scope != "global":
                raise OptionError("a speed target allocates channels over all groups at once", where="plan-filters: "
                                  "scope", fix="use scope: global with target_speedup / target_latency")
            self._target = SpeedTarget(target_speedup, target_latency, target_share, timer, min_keep, target_rounds,
                                       value=value)

    @classmethod
    def options_at(cls, options: dict[str, Any], fraction: float) -> dict[str, Any]:
        """``ratio`` becomes ``fraction * ratio``; with a speed target, ``target_share`` (of the saving) instead."""
        if options.get("target_speedup") or options.get("target_latency"):
            return {**options, "target_share": fraction * float(options.get("target_share", 1.0))}
        return {**options, "ratio": fraction * float(options.get("ratio", 0.4))}

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        groups = build_channel_groups(model)
        candidates, skipped = self._candidates(ctx, groups)
        if not candidates:
            return PassResult(False, 0, skipped, notes=["no channel group can be filter-pruned"])
        layers = {layer.weight: layer for layer in find_weight_layers(model)[0]}
        scores = score_filter_groups(
            self.metric, {label: FilterGroup(producer_weights(model, g), consumer_weights(model, g),
                                             two_four_prunable(model, g, layers, self.layout), self.k, self.layout)
                          for label, g in candidates.items()}, scope=self.scope)
        if self.scope == "global" and self.normalize == "mean" and not self.metric.startswith("hybrid"):
            scores = {label: normalize_by_mean(s) for label, s in scores.items()}
        speed = None
        if self._target is not None:
            removed, speed = self._to_target(ctx, candidates, scores)
        else:
            rank = rank_global if self.scope == "global" else rank_per_layer
            removed = rank(scores, self.ratio, multiple=self.round_to)
        ctx.plan = self._plan(ctx, candidates, removed)
        total = sum(g.size for g in candidates.values())
        gone = sum(len(r) for r in removed.values())
        per_group = {label: {"before": candidates[label].size, "after": candidates[label].size - len(r),
                             "group": candidates[label].id} for label, r in removed.items()}
        how = f"to the speed target {self._target.describe()}" if self._target else self.scope
        details = {"groups": per_group, "removed": gone, "total": total}
        if speed is not None:
            details["speed_target"] = speed.details
        met = speed is not None and speed.details["result"].get("already_met", False)
        return PassResult(False, 0, skipped,
                          notes=[f"{gone} of {total} channels in {len(candidates)} group(s) planned for removal "
                                 f"({self.metric}, {how}, kept counts multiples of {self.round_to})"]
                          + (speed.notes if speed is not None else []), details=details,
                          empty_plan_reason=speed.notes[0] if met else "")

    def _to_target(self, ctx: PassContext, candidates: dict[str, ChannelGroup], scores: dict[str, np.ndarray]):
        """The channels to remove to meet the speed target (:func:`sparsecc.latency.plan_to_target`)."""
        from dataclasses import replace

        from sparsecc.latency.target import plan_to_target
        from sparsecc.log import progress

        target = self._target
        if ctx.cost_model == "analytic" and target.timer == "measured":
            target = replace(target, timer="analytic")  # --cost-model analytic: nothing is timed
        speed = plan_to_target(ctx.model, candidates, scores, self.round_to, target, ctx.timing_cache, progress)
        if ctx.timing_cache is not None:
            ctx.timing_cache.save()
        removed = {label: np.setdiff1d(np.arange(candidates[label].size), kept).astype(np.int64)
                   for label, kept in speed.kept.items()}
        return removed, speed

    def _candidates(self, ctx: PassContext, groups: list[ChannelGroup]):
        layers, unsupported = find_weight_layers(ctx.model)
        _, left_out = LayerSelector.from_options(self.layers).select(layers, ctx.model.source)
        not_selected = dict(left_out)
        candidates = {}
        skipped = [Skipped(u.node, f"{u.op} not a weight layer: {u.reason}") for u in unsupported]
        for group in groups:
            label = group_label(group)
            reason = None
            if group.blockers:
                reason = "; ".join(group.blockers)
            elif not group.weight_nodes():
                reason = "no Conv/Gemm/MatMul weight makes these channels"
            elif not group.consumers:
                reason = "no weight reads these channels"
            else:
                out = [f"{n}: {not_selected[n]}" for n in group.weight_nodes() if n in not_selected]
                reason = f"layer not selected ({'; '.join(out)})" if out else None
            if reason:
                skipped.append(Skipped(label, reason))
            else:
                candidates[label] = group
        return candidates, skipped

    def _plan(self, ctx: PassContext, candidates: dict[str, ChannelGroup], removed: dict[str, np.ndarray]
              ) -> SparsityPlan:
        tensors = ctx.model.graph.tensors()
        masks: dict[str, np.ndarray] = {}
        facts: dict[str, dict] = {}
        for label, channels in removed.items():
            if not len(channels):
                continue
            group = candidates[label]
            roles = [(u, "removed_filters") for u in group.producers if u.kind == "weight"] + \
                [(u, "removed_input_channels") for u in group.consumers]
            for use, key in roles:
                mask = masks.setdefault(use.tensor, np.ones(tensors[use.tensor].values.shape, dtype=bool))
                index = [slice(None)] * mask.ndim
                positions = use.positions(group.size, channels)
                index[use.axis] = positions
                mask[tuple(index)] = False
                fact = facts.setdefault(use.tensor, {"node": use.node, "removed_filters": 0,
                                                     "removed_input_channels": 0, "groups": []})
                fact[key] += len(positions) // use.stride
                fact["groups"].append(group.id)
        plan = SparsityPlan(source="plan-filters")
        for name, mask in masks.items():
            fact = facts[name]
            details = {k: v for k, v in fact.items() if k != "node"}
            plan.add(WeightPlan(name, fact["node"], "filter", mask, criterion=self.metric, ratio=self.ratio,
                                alignment=self.round_to, details=details))
        # e.g. 2:4 first, then filters (the paper's reversed order): both masks hold
        return merge_into(ctx.plan, plan, "intersect")[0]


@register_pass
class RemoveFilters(Pass):
    """Remove the planned channels physically (exact with respect to the masked model).

    A channel goes when every weight that makes or reads it has a ``filter`` plan entry
    masking it entirely. The plan entries of every edited weight are dropped (their shapes
    changed; ``apply-plan`` kept a copy in ``ctx.applied_plans``).
    """

    name = "remove-filters"
    role = Role.REWRITE
    exact = True
    description = "Physically remove the channels a filter plan masks, with all coupled uses"

    def requires(self, ctx: PassContext) -> None:
        if ctx.plan is None:
            raise PlanError("there is no sparsity plan to take the filters from",
                            fix="put plan-filters and apply-plan before remove-filters in the recipe")

    def run(self, ctx: PassContext) -> PassResult:
        model, plan = ctx.model, ctx.plan
        edits, skipped, details = [], [], {}
        for group in build_channel_groups(model):
            channels = self._planned(group, plan)
            if channels is None or not len(channels):
                continue
            label = group_label(group)
            if not group.editable():
                skipped.append(Skipped(label, "planned for removal but blocked: " + "; ".join(group.blockers)))
                continue
            kept = np.setdiff1d(np.arange(group.size), channels)
            if not len(kept):
                raise PlanError(f"the plan removes all {group.size} channels of layer(s) {label}",
                                where=model.source, fix="lower the ratio of the filter plan")
            edits.append((group, kept))
            details[label] = {"group": group.id, "before": group.size, "after": int(len(kept))}
        if not edits:
            return PassResult(False, 0, skipped, notes=["no channel is planned for removal"])
        edited = {u.tensor for group, _ in edits for u in group.producers + group.consumers
                  if u.kind in ("weight", "param")}
        reindex_groups(model, edits)
        dropped = plan.invalidate(edited)
        before = sum(d["before"] for d in details.values())
        after = sum(d["after"] for d in details.values())
        return PassResult(True, len(edits), skipped,
                          notes=[f"{before - after} of {before} channels removed in {len(edits)} group(s); "
                                 f"{len(dropped)} plan entr(y/ies) consumed"],
                          details={"groups": details, "dropped_plan_entries": dropped})

    @staticmethod
    def _planned(group: ChannelGroup, plan: SparsityPlan) -> np.ndarray | None:
        """Channels every weight use masks completely under a filter entry (None: not planned)."""
        uses = weight_uses(group)
        if not uses or any(plan.entries.get(u.tensor) is None or plan.entries[u.tensor].pattern != "filter"
                           for u in uses):
            return None
        gone = np.ones(group.size, dtype=bool)
        for use in uses:
            mask = np.moveaxis(plan.entries[use.tensor].mask, use.axis, 0)
            count = use.covered(group.size)
            block = mask[use.offset:use.offset + count * use.stride]
            channel_kept = block.reshape(count, -1).any(axis=1)
            covered = np.zeros(group.size, dtype=bool)
            covered[use.start:use.start + count] = ~channel_kept
            outside = np.ones(group.size, dtype=bool)
            outside[use.start:use.start + count] = False
            gone &= covered | outside
        return np.flatnonzero(gone)

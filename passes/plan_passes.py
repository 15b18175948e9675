"""Passes that make or apply a sparsity plan (see :mod:`sparsecc.plan`).

``plan-from-zeros`` and ``plan-filters-from-zeros`` are analysis: they read the zeros
already in the weights (element structure; dead channels with their coupled uses) and leave
the graph untouched. ``apply-plan`` zeroes the pruned weights: it
changes the function on purpose (it is the "masked original" every later
exact rewrite is verified against), so it is not exact.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from sparsecc.nothing_planned import empty_plan_intended, last_planner, nothing_planned_error
from sparsecc.layers import find_weight_layers
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped, register_pass
from sparsecc.plan import SparsityPlan, apply_plan, merge_into, plan_from_zeros


@register_pass
class PlanFromZeros(Pass):
    """Plan from the zeros already in the weights (models pruned and fine-tuned elsewhere)."""

    name = "plan-from-zeros"
    role = Role.PLAN
    detects = True
    exact = True
    description = "Detect the structure of zeros already in the weights and plan to keep the rest"

    def run(self, ctx: PassContext) -> PassResult:
        layers, _ = find_weight_layers(ctx.model)
        detected = plan_from_zeros(ctx.model, layers)
        ctx.plan, _ = merge_into(ctx.plan, detected, "keep")  # what an earlier pass planned stays
        patterns: dict[str, int] = {}
        for entry in detected.entries.values():
            patterns[entry.pattern] = patterns.get(entry.pattern, 0) + 1
        return PassResult(False, 0, notes=[f"{len(detected)} weight(s) already hold zeros: {patterns or 'none'}"],
                          details={"patterns": patterns})


@register_pass
class ApplyPlan(Pass):
    """Zero the weights the plan prunes: the masked original that rewrites are verified against."""

    name = "apply-plan"
    role = Role.APPLY
    exact = False
    description = "Zero the pruned weights of the plan (the masked original; changes outputs on purpose)"

    def requires(self, ctx: PassContext) -> None:
        # an empty plan from a detecting planner, or one that says why nothing needs pruning (a speed target
        # already met), is a dense model compiled as it is; from a pruning planner otherwise it means every
        # candidate was blocked, which the user must hear about
        planner = last_planner(ctx.history)
        if ctx.plan is None or (not len(ctx.plan) and planner is not None and not empty_plan_intended(ctx.history)):
            raise nothing_planned_error(ctx.history, where=ctx.model.source)

    def run(self, ctx: PassContext) -> PassResult:
        changed = apply_plan(ctx.model, ctx.plan)
        # Later rewrites may rename or reshape weights and drop their entries from ctx.plan;
        # the plan as applied is kept for plan.json and the report.
        ctx.applied_plans.append(ctx.plan.copy())
        ctx.masked = ctx.model.copy()
        return PassResult(changed > 0, changed, notes=[f"{changed} weight tensor(s) masked"])


@register_pass
class PlanFiltersFromZeros(Pass):
    """Plan the removal of channels that are already dead (models pruned elsewhere; no new pruning).

    A channel of a coupled group (:mod:`sparsecc.dependency`) is dead when every weight and
    per-channel parameter that makes it is zero there (it is zero everywhere it goes), or when
    every weight that reads it ignores it. Its filters and the consumers' input channels get a
    ``filter`` plan entry, combined with the element masks ``plan-from-zeros`` made, so
    ``remove-filters`` removes it physically. An activation that is not zero at zero (a Sigmoid
    gate) would make a zero filter a live constant channel: the masked model is therefore checked
    against the model as it came, and the filter entries are dropped if it differs.
    """

    name = "plan-filters-from-zeros"
    role = Role.PLAN
    detects = True
    exact = True
    description = "Plan the removal of channels whose filters (or whose every reader) are already all zero"

    def run(self, ctx: PassContext) -> PassResult:
        from sparsecc.dependency import build_channel_groups
        from sparsecc.dependency.constants import find_constant_channels, fold_constant_channels
        from sparsecc.passes.filter_prune import PlanFilters, group_label

        model = ctx.model
        groups = {group_label(g): g for g in build_channel_groups(model) if g.editable() and g.consumers}
        # zero filters with a bias (BatchNorm folded): constants moved into their readers' biases first
        found, kept_constants = find_constant_channels(model, list(groups.values()))
        folded = fold_constant_channels(model, found)
        if folded:
            groups = {group_label(g): g for g in build_channel_groups(model) if g.editable() and g.consumers}
        constants = {n: t for n, t in model.graph.tensors().items() if isinstance(t, gs.Constant)}
        notes = [f"{folded} constant channel(s) (zero filter, non-zero bias) folded into the layers reading them"] \
            if folded else []
        kept = [Skipped("(constant channels)", reason) for reason in kept_constants]
        dead = {label: channels for label, g in groups.items()
                if len(channels := dead_channels(g, constants)) and len(channels) < g.size}
        if not dead:
            return PassResult(folded > 0, folded, kept,
                              notes + ["no channel is dead (no all-zero filter or unread channel)"])
        before = ctx.plan.copy() if ctx.plan is not None else None
        planner = PlanFilters(metric="l1", ratio=0.5, round_to=1)
        plan = planner._plan(ctx, groups, dead)  # the same coupled masks as plan-filters makes
        planned = {u.tensor for label in dead for u in groups[label].producers + groups[label].consumers}
        for name in planned & set(plan.entries):
            entry = plan.entries[name]
            plan.entries[name] = replace(entry, criterion="zeros", ratio=None, alignment=None)
        check = _masking_changes_outputs(model, plan)
        if check:
            ctx.plan = before
            return PassResult(folded > 0, folded, kept + [Skipped(label, f"dead channels not removed: {check}")
                                                          for label in dead],
                              notes=notes + ["masking the dead channels changes the outputs; no filter is removed"])
        ctx.plan = plan
        count = sum(len(c) for c in dead.values())
        return PassResult(folded > 0, folded, kept,
                          notes=notes + [f"{count} dead channel(s) in {len(dead)} group(s) planned for removal"],
                          details={"groups": {label: {"group": groups[label].id, "before": groups[label].size,
                                                      "dead": int(len(c))} for label, c in dead.items()}})


def dead_channels(group, constants: dict) -> np.ndarray:
    """Channels of ``group`` that are zero wherever they are made, or read by no weight."""
    made_zero = _zero_channels(group, group.producers, constants, kinds=("weight", "param"), axis_first=True)
    unread = _zero_channels(group, group.consumers, constants, kinds=("weight",), axis_first=False)
    return np.flatnonzero(made_zero | unread)


def _zero_channels(group, uses, constants: dict, kinds: tuple[str, ...], axis_first: bool) -> np.ndarray:
    """True for each channel that every use of ``kinds`` holds only zeros for (False if there is no such use)."""
    zero = np.ones(group.size, dtype=bool)
    seen = False
    for use in uses:
        if use.kind not in kinds or use.tensor not in constants:
            continue
        values = np.moveaxis(constants[use.tensor].values, use.axis, 0)
        count = use.covered(group.size)
        part = values[use.offset:use.offset + count * use.stride].reshape(count, -1)
        zero[use.start:use.start + count] &= ~part.any(axis=1)
        seen = True
    return zero if seen else np.zeros(group.size, dtype=bool)


def _masking_changes_outputs(model, plan: SparsityPlan) -> str | None:
    """Why masking ``plan`` changes the model's outputs (beyond its float type's tolerance), or None."""
    from sparsecc.verify import VerifyConfig, compare_models, input_specs

    masked = model.copy()
    apply_plan(masked, plan)
    result = compare_models(model, masked, input_specs(model), VerifyConfig())
    return None if result.passed else result.describe_worst()

"""Passes that make or apply a sparsity plan (see :mod:`sparsecc.plan`).

``plan-from-zeros`` is analysis: it reads the zeros already in the weights and
leaves the graph untouched. ``apply-plan`` zeroes the pruned weights: it
changes the function on purpose (it is the "masked original" every later
exact rewrite is verified against), so it is not exact.
"""

from __future__ import annotations

from dataclasses import replace

from sparsecc.nothing_planned import last_planner, nothing_planned_error
from sparsecc.layers import find_weight_layers
from sparsecc.passmanager import Pass, PassContext, PassResult, register_pass
from sparsecc.plan import SparsityPlan, apply_plan, plan_from_zeros


@register_pass
class PlanFromZeros(Pass):
    """Plan from the zeros already in the weights (models pruned and fine-tuned elsewhere)."""

    name = "plan-from-zeros"
    exact = True
    description = "Detect the structure of zeros already in the weights and plan to keep the rest"

    def run(self, ctx: PassContext) -> PassResult:
        layers, _ = find_weight_layers(ctx.model)
        detected = plan_from_zeros(ctx.model, layers)
        ctx.plan = merge_plans(ctx.plan, detected)
        patterns: dict[str, int] = {}
        for entry in detected.entries.values():
            patterns[entry.pattern] = patterns.get(entry.pattern, 0) + 1
        return PassResult(False, 0, notes=[f"{len(detected)} weight(s) already hold zeros: {patterns or 'none'}"],
                          details={"patterns": patterns})


@register_pass
class ApplyPlan(Pass):
    """Zero the weights the plan prunes: the masked original that rewrites are verified against."""

    name = "apply-plan"
    exact = False
    description = "Zero the pruned weights of the plan (the masked original; changes outputs on purpose)"

    def requires(self, ctx: PassContext) -> None:
        # an empty plan from plan-from-zeros is a dense model compiled as it is; from a pruning
        # planner it means every candidate was blocked, which the user must hear about
        planner = last_planner(ctx.state.get("history"))
        if ctx.plan is None or (not len(ctx.plan) and planner is not None and planner.name != "plan-from-zeros"):
            raise nothing_planned_error(ctx.state.get("history"), where=ctx.model.source)

    def run(self, ctx: PassContext) -> PassResult:
        changed = apply_plan(ctx.model, ctx.plan)
        # Later rewrites may rename or reshape weights and drop their entries from ctx.plan;
        # the plan as applied is kept for plan.json and the report.
        ctx.state.setdefault("applied_plans", []).append(copy_plan(ctx.plan))
        ctx.state["masked"] = ctx.model.copy()
        return PassResult(changed > 0, changed, notes=[f"{changed} weight tensor(s) masked"])


def copy_plan(plan: SparsityPlan) -> SparsityPlan:
    return SparsityPlan({name: replace(entry, mask=entry.mask.copy(), details=dict(entry.details))
                         for name, entry in plan.entries.items()}, plan.source)


def merge_plans(first: SparsityPlan | None, second: SparsityPlan) -> SparsityPlan:
    """Entries of ``second`` added to ``first`` (``first`` wins where both plan a weight)."""
    if first is None:
        return second
    for name, entry in second.entries.items():
        first.entries.setdefault(name, entry)
    return first

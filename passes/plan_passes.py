"""Passes that make or apply a sparsity plan (see :mod:`sparsecc.plan`).

``plan-from-zeros`` is analysis: it reads the zeros already in the weights and
leaves the graph untouched. ``apply-plan`` zeroes the pruned weights: it
changes the function on purpose (it is the "masked original" every later
exact rewrite is verified against), so it is not exact.
"""

from __future__ import annotations

from sparsecc.errors import PlanError
from sparsecc.layers import find_weight_layers
from sparsecc.passmanager import Pass, PassContext, PassResult, register_pass
from sparsecc.plan import apply_plan, merge_into, plan_from_zeros


@register_pass
class PlanFromZeros(Pass):
    """Plan from the zeros already in the weights (models pruned and fine-tuned elsewhere)."""

    name = "plan-from-zeros"
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
    exact = False
    description = "Zero the pruned weights of the plan (the masked original; changes outputs on purpose)"

    def requires(self, ctx: PassContext) -> None:
        if ctx.plan is None:
            raise PlanError("there is no sparsity plan to apply",
                            fix="put a planning pass before apply-plan in the recipe, or pass --plan plan.json")

    def run(self, ctx: PassContext) -> PassResult:
        changed = apply_plan(ctx.model, ctx.plan)
        # Later rewrites may rename or reshape weights and drop their entries from ctx.plan;
        # the plan as applied is kept for plan.json and the report.
        ctx.state.setdefault("applied_plans", []).append(ctx.plan.copy())
        ctx.state["masked"] = ctx.model.copy()
        return PassResult(changed > 0, changed, notes=[f"{changed} weight tensor(s) masked"])


"""The error for a planning pass that planned nothing, with the count and the main reasons.

Planning passes record every layer or channel group they leave out (``Skipped``
with a reason). When ``apply-plan`` finds no plan, or an empty one, this turns
those records into one message: how many were considered, the commonest
reasons with their counts, and what to do — instead of "there is no sparsity
plan to apply".
"""

from __future__ import annotations

from collections import Counter

from sparsecc.errors import PlanError
from sparsecc.passmanager.contract import is_planner

# reasons longer than this are cut in the summary (the report lists them whole)
REASON_CHARS = 90
SHOWN_REASONS = 3


def last_planner(history) -> object | None:
    """The record of the planning pass (role ``plan``) that ran last (before apply-plan), or None."""
    for record in reversed(history or []):
        if is_planner(record) and record.status != "disabled":
            return record
    return None


def empty_plan_reason(history) -> str:
    """Why the last planner planned nothing on purpose (a speed target the model already meets), or ""."""
    planner = last_planner(history)
    return planner.result.empty_plan_reason if planner is not None and planner.result is not None else ""


def empty_plan_intended(history) -> bool:
    """Whether an empty plan is an answer rather than a failure: the last planner only detects zeros, or it
    said why nothing needs pruning."""
    planner = last_planner(history)
    return planner is not None and (planner.detects or bool(empty_plan_reason(history)))


def nothing_planned_error(history, where: str | None = None) -> PlanError:
    """A PlanError naming the planner, how many candidates it had, why each was left out, and the fix."""
    planner = last_planner(history)
    fix = ("select other layers (a `layers:` selector or `ratios:` in the recipe; `sparsecc inspect` lists them), "
           "use a recipe that prunes inside layers (groupwise-50 needs no channel coupling), or start from a plan "
           "made elsewhere with --plan plan.json")
    if planner is None:
        return PlanError("no planning pass ran, so there is nothing to prune",
                         where=where, fix="put a planning pass (plan-filters, plan-groupwise, plan-24, "
                                          "plan-from-zeros) before apply-plan in the recipe, or pass --plan plan.json")
    result = planner.result
    skipped = list(result.skipped) if result is not None else []
    notes = "; ".join(result.notes) if result is not None and result.notes else ""
    if not skipped:
        return PlanError(f"'{planner.name}' planned nothing to prune" + (f" ({notes})" if notes else ""),
                         where=where, fix="prune more (a larger ratio, or a smaller round_to/alignment), or " + fix)
    counts = Counter(_short(s.reason) for s in skipped)
    main = ", ".join(f"{n} by '{reason}'" for reason, n in counts.most_common(SHOWN_REASONS))
    others = len(counts) - SHOWN_REASONS
    if others > 0:
        main += f", and {sum(n for _, n in counts.most_common()[SHOWN_REASONS:])} by {others} other reason(s)"
    unit = "channel groups" if planner.name == "plan-filters" else "layers"
    return PlanError(f"'{planner.name}' planned nothing to prune: {len(skipped)} {unit} considered, all left out: "
                     f"{main}" + (f" ({notes})" if notes else ""), where=where,
                     fix=fix)


def _short(reason: str) -> str:
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 3] + "..."

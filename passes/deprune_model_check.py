"""``deprune-model-check``: the compiled graph timed against the masked model, for the report (exact).

The last step of the DEPrune recipes. What the passes before it did only removes work (PW2
filters, dead channels) or was timed where it was decided (the lowerings of ``deprune-rewrite``),
so nothing is put back here whatever the timing says (:mod:`sparsecc.policy`). The compiled and
masked models are timed paired, through the timing cache, and the report gives the speedup with
its interval (:func:`sparsecc.lowering.model_check.check_removed_work`); a conclusive slowdown is
fixed where it comes from, channel counts off the kernels' preferred multiples
(:func:`~sparsecc.lowering.model_check.fix_slowdown_by_alignment`), never by undoing.
"""

from __future__ import annotations

from sparsecc.errors import OptionError
from sparsecc.lowering.driver import COST_MODELS
from sparsecc.lowering.model_check import check_removed_work, fix_slowdown_by_alignment
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, register_pass


@register_pass
class DepruneModelCheck(Pass):
    """Time the compiled graph against the masked model, to report the speedup; never undo (exact).

    A conclusive slowdown is flagged (``slowdown`` in the details) and fixed where it comes from.
    With ``--cost-model analytic`` nothing is timed and no cache is read.

    Args:
        runs: Least paired runs. Defaults to 20.
        threads: ONNX Runtime intra-op threads. Defaults to 1.
        cost_model: "measured" (time the two) or "analytic" (time nothing); ``compile --cost-model``
            overrides it. Defaults to "measured".
        align: On a conclusive slowdown, the multiple the pruned channel counts are rounded up to
            with zero channels (exact), kept if timing finds it faster. Defaults to 8.
    """

    name = "deprune-model-check"
    role = Role.CHECK
    exact = True
    description = "Time the compiled graph against the masked model for the report (removed work is never undone)"

    def __init__(self, runs: int = 20, threads: int = 1, cost_model: str = "measured", align: int = 8):
        if not isinstance(runs, int) or runs < 1:
            raise OptionError(f"runs {runs!r} is not a positive integer", where=self.name)
        if not isinstance(align, int) or align < 1:
            raise OptionError(f"align {align!r} is not a positive integer", where=self.name)
        if cost_model not in COST_MODELS:
            raise OptionError(f"unknown cost_model '{cost_model}'", where=self.name, fix="use measured or analytic")
        self.runs, self.threads, self.cost_model, self.align = runs, int(threads), cost_model, align

    def run(self, ctx: PassContext) -> PassResult:
        masked = ctx.masked
        if masked is None:
            return PassResult(False, 0, notes=["no masked model to compare with (apply-plan did not run)"])
        cost_model = ctx.cost_model or self.cost_model
        check = check_removed_work(masked, ctx.model, cost_model, self.threads, ctx.timing_cache,
                                   min_pairs=self.runs)
        notes, changed = [check["reason"]], False
        if check["slowdown"]:  # fixed where it comes from: channel counts, not by undoing
            kept, check["alignment"] = fix_slowdown_by_alignment(masked, ctx.model, self.threads, ctx.timing_cache,
                                                                 self.align)
            notes.append(check["alignment"]["reason"])
            if kept is not ctx.model:
                ctx.model.graph, changed = kept.graph, True
        if ctx.timing_cache is not None and cost_model != "analytic":
            ctx.timing_cache.save()
        return PassResult(changed, int(changed), notes=notes, details=check)

"""``deprune-model-check``: keep the compiled graph only if it beats the masked model on ONNX Runtime (exact).

The last step of the DEPrune recipes: the compiled graph and the masked model (the same function)
are timed interleaved, through the timing cache, and the masked model is put back if the
compiled one is not faster (:func:`sparsecc.lowering.cost.whole_model_check`).
"""

from __future__ import annotations

from sparsecc.errors import OptionError
from sparsecc.lowering.cost import whole_model_check
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped, register_pass


@register_pass
class DepruneModelCheck(Pass):
    """Keep the compiled graph only if it is faster than the masked model on ONNX Runtime (exact).

    Channel removal (PW2 filters, dead channels) does less work, but a graph can still lose to the
    masked one in a whole model (channel counts that leave the blocked layout, extra nodes): the
    two are timed interleaved and the masked model (the same function) is kept if the compiled
    one is not faster.

    Args:
        runs: Timed runs of each. Defaults to 10.
        threads: ONNX Runtime intra-op threads. Defaults to 2.
    """

    name = "deprune-model-check"
    role = Role.CHECK
    exact = True
    description = "Time the compiled graph against the masked model; keep the masked one if it is not faster"

    def __init__(self, runs: int = 10, threads: int = 2):
        if not isinstance(runs, int) or runs < 1:
            raise OptionError(f"runs {runs!r} is not a positive integer", where=self.name)
        self.runs, self.threads = runs, int(threads)

    def run(self, ctx: PassContext) -> PassResult:
        masked = ctx.masked
        if masked is None:
            return PassResult(False, 0, notes=["no masked model to compare with (apply-plan did not run)"])
        check = whole_model_check(masked, ctx.model, self.runs, self.threads, ctx.timing_cache,
                                  labels=("masked", "compiled"), fallback="the masked model is kept")
        if ctx.timing_cache is not None:
            ctx.timing_cache.save()
        if check["kept"]:
            return PassResult(False, 0, notes=[check["reason"]], details=check)
        ctx.model.graph = masked.copy().graph
        return PassResult(True, 1, [Skipped("(whole model)", check["reason"])], [check["reason"]], check)

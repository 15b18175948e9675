"""``deprune-rewrite``: each depthwise layer as the DEPrune lowering the cost model picks (exact).

The candidates are the lowerings of the ``deprune`` family (:mod:`sparsecc.lowering.depthwise`:
the plain ``depthwise``, ``kernel-crop``, ``dr-grouped``, ``dr-compact``, and any registered
later), measured against the plain depthwise through the timing cache or estimated; why each did
not apply is recorded. With the measured cost model choosing, the whole rewritten model is then
timed against the graph before the lowerings; they are undone only if it is conclusively slower,
and an inconclusive timing defers to the analytic model. The loop is the lowering driver's
(:mod:`sparsecc.lowering.driver`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsecc.errors import OptionError
from sparsecc.layers import WeightLayer
from sparsecc.lowering import describe_candidates, get_lowering
from sparsecc.lowering.depthwise import DEPTHWISE, FAMILY
from sparsecc.lowering.driver import IGNORE, LoweringPass, LoweringRun
from sparsecc.passmanager import Skipped, register_pass

BASELINE = DEPTHWISE.name  # the plain depthwise Conv: what every other deprune lowering must beat


@register_pass
class DepruneRewrite(LoweringPass):
    """Lower each depthwise layer with the candidate the cost model picks (exact).

    The plain ``depthwise`` lowering is the baseline the others must beat.

    Args:
        lowering: "auto" (cost model) or the name of a ``deprune`` lowering to force where it
            applies. Defaults to "auto".
        cost_model: "measured" (ONNX Runtime CPU, one-layer models timed paired against the plain
            depthwise, through the timing cache) or "analytic". ``compile --cost-model`` overrides it.
            Defaults to "measured".
        width: DR sub-GEMM width (its largest divisor of M when it does not divide M). Defaults to 32.
        min_gain: A candidate must beat the plain depthwise by this share. Defaults to 0.1.
        runs: Least paired runs of each timing. Defaults to 20.
        threads: ONNX Runtime threads for timing. Defaults to 1 (CPU time then holds under load).
    """

    name = "deprune-rewrite"
    family = FAMILY
    specializes_shapes = False  # every emitted node is shape-generic; the compile checks a second shape
    # the depthwise weights it replaces keep their plan entries, as they always have (nothing reads them after)
    invalidates_plan = False
    description = "Depthwise layers -> plain depthwise / kernel crop / DR sub-GEMMs, chosen per layer by cost"

    def __init__(self, lowering: str = "auto", cost_model: str = "measured", width: int = 32,
                 min_gain: float = 0.1, runs: int = 20, threads: int = 1):
        if not isinstance(width, int) or width < 1:
            raise OptionError(f"width {width!r} is not a positive integer", where="deprune-rewrite")
        self.set_lowering_options(lowering, cost_model, min_gain, runs, threads)
        self.width = width

    def unsupported(self, item) -> None:
        return None  # only depthwise convs are its business

    def shapes_unknown(self, run: LoweringRun, error) -> None:
        run.skipped.append(Skipped("(all layers)", f"activation shapes unknown ({error.what})"))

    def consider(self, layer: WeightLayer, shapes: dict) -> Any:
        if layer.kind != "depthwise":
            return IGNORE
        if shapes.get(layer.input) is None or shapes.get(layer.output) is None:
            return "shapes unknown (give --shape)"
        return None

    def layer_options(self) -> dict[str, Any]:
        return {"width": self.width}

    def dense_candidate(self, view):
        return get_lowering(BASELINE).candidate(view)

    def decide(self, view, proposals, cost, info: dict[str, Any]):
        candidates, not_applicable = proposals.candidates, proposals.not_applicable
        plain = candidates[0]
        info.update(not_applicable=not_applicable, macs={c.name: c.macs for c in candidates},
                    zeros=round(1.0 - float(np.mean(view.weight != 0)), 4))
        if self.lowering != "auto":
            forced = next((c for c in candidates if c.name == self.lowering), None)
            if forced is None:
                why = not_applicable[self.lowering]
                info.update(lowering=BASELINE, reason=f"{self.lowering} does not apply: {why}")
                return plain, None
            info.update(lowering=forced.name, reason="forced")
            return forced, None
        if len(candidates) == 1:
            info.update(lowering=BASELINE, reason="no other lowering applies")
            return plain, None
        choice, decision = self.timed_choice(view, candidates, cost)
        info.update(lowering=choice.name, reason=decision.reason, **describe_candidates(candidates, decision))
        return choice, None

    def summary(self, run: LoweringRun) -> str:
        return f"{run.lowered} depthwise layer(s) lowered"

"""The lowering driver: the one per-layer loop every lowering pass is a configuration of.

A lowering pass runs each weight layer as other nodes where a cost model finds that faster. The
loop is the same for every family, so it is written once, here (:class:`LoweringPass`):

1. the cost model (``cost_model`` option, ``compile --cost-model`` overriding it);
2. layer discovery and activation shapes (a layer whose shapes are unknown stays as it is);
3. a check of the plan against the weights (:meth:`LoweringPass.check_plan`);
4. channels no layer reads folded into their producers (``fold``; :mod:`sparsecc.dependency.unread`);
5. per layer: the pass's skip rules, the proposals of its family's registered lowerings against
   its dense candidate, the choice (forced, or by the cost model), emission, reasons;
6. the whole rewritten model timed against the graph it came from and put back unless faster,
   when the measured cost model chose (:func:`~sparsecc.lowering.cost.undo_unless_faster`);
7. the timing cache saved, plan entries of replaced weights invalidated, the notes.

A pass sets ``family`` and supplies its skip rules (:meth:`~LoweringPass.consider`,
:meth:`~LoweringPass.why_dense`), its dense candidate and how it decides and describes a layer
(:meth:`~LoweringPass.decide`); every option a lowering needs reaches it through
:attr:`LayerToLower.options` (:meth:`~LoweringPass.layer_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_graphsurgeon as gs

from sparsecc.errors import OptionError, ShapeError
from sparsecc.graphutil import optional_input
from sparsecc.layers import Unsupported, WeightLayer, find_weight_layers
from sparsecc.lowering.cost import AnalyticCost, MeasuredCost, choose_lowering, undo_unless_faster
from sparsecc.lowering.emitter import Emitter
from sparsecc.lowering.registry import Candidate, LayerToLower, Proposals, get_lowering, lowerings, propose_all
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped
from sparsecc.shapes import infer_shapes

IGNORE = object()  # what consider() returns for a layer the pass does not handle at all (not listed)
COST_MODELS = ("measured", "analytic")


@dataclass
class LoweringRun:
    """What one run of a lowering pass collects: per-layer details, layers left, notes, replaced weights."""

    details: dict[str, Any]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    replaced: set[str] = field(default_factory=set)
    lowered: int = 0
    folded: int = 0

    def layer(self, node: str) -> dict[str, Any]:
        """The details of one layer (created empty)."""
        return self.details["layers"].setdefault(node, {})

    def leave(self, layer: str, info: dict[str, Any] | None, reason: str) -> None:
        """The layer stays as it is, for ``reason`` (in its details when it has any, and in the report)."""
        if info is not None:
            info.setdefault("lowering", "dense")
            info["reason"] = reason
        self.skipped.append(Skipped(layer, reason))


class LoweringPass(Pass):
    """Base of the lowering passes: the driver's loop, configured by a few methods (see the module).

    Subclasses set ``name``, ``family`` and their options (:meth:`set_lowering_options` checks the
    common ones), and may override the hooks below.
    """

    role = Role.LOWER
    exact = True
    specializes_shapes = True
    family: ClassVar[str] = ""
    invalidates_plan: ClassVar[bool] = True  # plan entries of the weights it replaces go
    keeps_timing_cache: ClassVar[bool] = True  # saves the cache and records its use in the details

    lowering: str = "auto"
    cost_model: str = "measured"
    min_gain: float = 0.1
    runs: int = 5
    threads: int = 2
    fold: bool = False

    def set_lowering_options(self, lowering: str = "auto", cost_model: str = "measured", min_gain: float = 0.1,
                             runs: int = 5, threads: int = 2, fold: bool = False) -> None:
        """Check and keep the options every lowering pass takes."""
        if cost_model not in COST_MODELS:
            raise OptionError(f"unknown cost_model '{cost_model}'", fix="use measured or analytic")
        known = get_lowering(lowering)
        if lowering != "auto" and (known is None or known.family != self.family):
            raise OptionError(f"unknown lowering '{lowering}'", where=self.name,
                              fix=f"use auto or one of {[lw.name for lw in lowerings(self.family)]}")
        if not isinstance(runs, int) or runs < 1:
            raise OptionError(f"runs must be at least 1, got {runs}")
        self.lowering, self.cost_model, self.min_gain = lowering, cost_model, float(min_gain)
        self.runs, self.threads, self.fold = int(runs), int(threads), bool(fold)

    # --- configuration: what a pass overrides --------------------------------------------------

    def make_cost(self, ctx: PassContext, run: LoweringRun):
        """The cost model candidates are timed with; the pass's option, ``compile --cost-model`` overriding it."""
        cost_model = ctx.cost_model or self.cost_model
        run.details["cost_model"] = cost_model
        return AnalyticCost() if cost_model == "analytic" else MeasuredCost(self.runs, self.threads, ctx.timing_cache)

    def unsupported(self, item: Unsupported) -> str | None:
        """What the report says of a look-alike that is no weight layer (None: nothing)."""
        return f"{item.op} not rewritten: {item.reason}"

    def shapes_unknown(self, run: LoweringRun, error: ShapeError) -> None:
        """Activation shapes could not be inferred: say so (each layer then finds its shapes unknown)."""
        run.notes.append(f"activation shapes unknown ({error.what})")

    def check_plan(self, ctx: PassContext, layers: list[WeightLayer]) -> None:
        """Raise when the plan and the weights disagree (e.g. apply-plan did not run)."""

    def consider(self, layer: WeightLayer, shapes: dict) -> Any:
        """None to consider the layer; a reason to leave it out (listed); ``IGNORE`` not to list it."""
        return None

    def why_dense(self, ctx: PassContext, layer: WeightLayer, node: gs.Node, shapes: dict) -> str | None:
        """Why the layer stays as it is before any lowering is asked, or None."""
        return None

    def dense_candidate(self, view: LayerToLower) -> Candidate:
        """The layer as it is, priced like the family's lowerings."""
        raise NotImplementedError(f"{type(self).__name__} has no dense candidate")

    def layer_options(self) -> dict[str, Any]:
        """Options of the pass that its family's lowerings read (``LayerToLower.options``)."""
        return {}

    def decide(self, view: LayerToLower, proposals: Proposals, cost, info: dict[str, Any]
               ) -> tuple[Candidate, str | None]:
        """The candidate to emit (``proposals.candidates[0]``: stay as it is) and, when the layer stays,
        why (listed in the report; None: not listed). Records what it weighed in ``info``."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it decides a layer (decide)")

    def summary(self, run: LoweringRun) -> str:
        """The first note: what the pass did."""
        return f"{run.lowered} layer(s) lowered, {run.folded} producer(s) shrunk by folding unused channels"

    # --- the driver ----------------------------------------------------------------------------

    def timed_choice(self, view: LayerToLower, candidates: list[Candidate], cost) -> tuple[Candidate, str]:
        """The cost model's choice among ``candidates`` (dense first), with its noise rule."""
        dtype, op = view.weight.dtype, view.node.op
        cost.time(candidates, op, view.in_shape, view.out_shape, dtype)
        return choose_lowering(candidates, self.min_gain,
                               lambda chosen: cost.remeasure(chosen, op, view.in_shape, view.out_shape, dtype))

    def run(self, ctx: PassContext) -> PassResult:
        from sparsecc.dependency.unread import fold_unread_channels
        from sparsecc.session_files import release_to_files

        model = ctx.model
        run = LoweringRun({})
        cost = self.make_cost(ctx, run)
        run.details["layers"] = {}
        # a forced lowering is the user's call; only the cost model's own choices are checked
        before = model.copy() if isinstance(cost, MeasuredCost) and self.lowering == "auto" else None
        if before is not None:  # timed from files: the arrays rewritten layers drop are freed
            release_to_files(before.graph)
        layers, unsupported = find_weight_layers(model)
        wanted = {name for layer in layers for name in (layer.input, layer.output)}
        try:
            shapes = infer_shapes(model, wanted)
        except ShapeError as err:
            shapes = None
            self.shapes_unknown(run, err)
        layers, unsupported = find_weight_layers(model, shapes)
        self.check_plan(ctx, layers)
        run.skipped += [Skipped(u.node, why) for u in unsupported if (why := self.unsupported(u)) is not None]
        if self.fold:
            fold = fold_unread_channels(model)
            if fold.error:
                run.details["fold"] = f"not folded: {fold.error}"
            for node, what in fold.readers.items():
                run.layer(node)["fold"] = what
            run.folded, run.replaced = fold.groups, set(fold.edited)
            if fold.groups and shapes is not None:
                shapes = infer_shapes(model, wanted)  # the folded layers are narrower
        nodes = {n.outputs[0].name: n for n in model.graph.nodes if n.outputs}
        for layer in find_weight_layers(model, shapes)[0]:
            self._layer(ctx, run, layer, nodes[layer.output], shapes or {}, cost)
        model.graph.cleanup().toposort()
        if before is not None and run.lowered + run.folded > 0 and not undo_unless_faster(
                before, model, self.runs, self.threads, ctx.timing_cache, run.details, run.skipped, run.notes):
            run.replaced.clear()
            run.lowered = run.folded = 0
        if self.keeps_timing_cache and ctx.timing_cache is not None:
            ctx.timing_cache.save()
            run.details["timing_cache"] = ctx.timing_cache.describe()
        invalidated = ctx.plan.invalidate(run.replaced) if self.invalidates_plan and ctx.plan is not None else []
        notes = [self.summary(run)] + run.notes
        if invalidated:
            notes.append(f"{len(invalidated)} plan entr(ies) invalidated: their weights were replaced")
        rewrites = run.lowered + run.folded
        return PassResult(rewrites > 0, rewrites, run.skipped, notes, run.details)

    def _layer(self, ctx: PassContext, run: LoweringRun, layer: WeightLayer, node: gs.Node, shapes: dict,
               cost) -> None:
        """Decide one layer, and lower it when a lowering was chosen."""
        reason = self.consider(layer, shapes)
        if reason is IGNORE:
            return
        if reason:
            run.skipped.append(Skipped(layer.node, reason))
            return
        info = run.layer(layer.node)
        reason = self.why_dense(ctx, layer, node, shapes)
        if reason:
            run.leave(layer.node, info, reason)
            return
        bias = optional_input(node, 2) if node.op == "Conv" else None
        view = LayerToLower(node, layer, node.inputs[1].values, bias, shapes.get(layer.input),
                            shapes.get(layer.output), self.layer_options())
        proposals = propose_all(view, self.dense_candidate(view), self.family)
        choice, why = self.decide(view, proposals, cost, info)
        if choice is proposals.candidates[0]:
            if why is not None:
                run.leave(layer.node, info, why)
            return
        x, y = node.inputs[0], node.outputs[0]
        node.outputs.clear()
        # emitted before the node lets go of its inputs: a Gemm's lowering re-reads its bias from them
        choice.emit(Emitter(ctx.model.graph, layer.node, self.name, view.weight.dtype), x, y)
        node.inputs.clear()
        run.replaced.add(layer.weight)
        run.lowered += 1

"""2:4 structured sparsity for TensorRT's sparse tensor cores: plan, check, permute.

- ``plan-24`` (analysis): a 2:4 mask for every selected eligible weight layer,
  in TensorRT's layout (groups of 4 along the input channels of a conv, along
  K of a Gemm/MatMul) or the hybrid paper's kernel-width layout. Layers
  TensorRT cannot run sparse are listed with the reason. ``apply-plan`` then
  zeroes the pruned weights.
- ``check-24`` (analysis): which weights already are 2:4 in TensorRT's layout,
  by the rule of ``polygraphy inspect sparsity``.
- ``permute-channels-24`` (exact rewrite): reorder the channels of each
  editable channel group so that 2:4 keeps more of its consumers' magnitude
  (Pool and Yu 2021, as in NVIDIA ASP), editing producers, per-channel
  parameters and consumers together so the model computes the same function.
  Run it before ``plan-24``.

Default layer selection: unlike the other pruning passes, the first and last
weight layers are included (``exclude_first_last: false``), as NVIDIA's ASP
recipe does: 2:4 is mild, and a first conv reading RGB is ineligible anyway
(C_in = 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsecc.errors import OptionError
from sparsecc.layers import WeightLayer, find_weight_layers
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped, register_pass
from sparsecc.plan import LayerSelector, SparsityPlan, WeightPlan, merge_into
from sparsecc.sparsity.permutation import search_permutation
from sparsecc.sparsity.two_four import (check_layout, check_two_four, eligibility, kept_magnitude, reduction_axis,
                                        two_four_mask)


def _selector(layers_option: dict[str, Any] | None) -> LayerSelector:
    options = dict(layers_option or {})
    options.setdefault("exclude_first_last", False)
    return LayerSelector.from_options(options)


def unsupported_skips(unsupported) -> list[Skipped]:
    """The weight-layer look-alikes :func:`find_weight_layers` could not treat, as report entries."""
    return [Skipped(u.node, f"{u.op} not a weight layer: {u.reason}") for u in unsupported]


def select_eligible(ctx: PassContext, layers_option: dict[str, Any] | None, layout: str
                    ) -> tuple[list[WeightLayer], list[Skipped], dict[str, str]]:
    """The selected layers TensorRT can run 2:4, the layers left out (with reasons), and caveats per layer.

    Layers whose weight is shared are left out by the selector (named ones are refused); nodes
    that look like weight layers but are not (Gemm transA=1, 1-D/3-D conv, a weight that is not
    a constant) are listed with the reason.
    """
    layers, unsupported = find_weight_layers(ctx.model)
    selector = _selector(layers_option)
    tensors = ctx.model.graph.tensors()
    selected, left_out = selector.select(layers, ctx.model.source)
    skipped = [Skipped(name, reason) for name, reason in left_out]
    skipped += unsupported_skips(unsupported)
    eligible, notes = [], {}
    for layer in selected:
        verdict = eligibility(layer, tensors[layer.weight].values.dtype, layout)
        if not verdict.eligible:
            skipped.append(Skipped(layer.node, verdict.reason))
            continue
        eligible.append(layer)
        if verdict.note:
            notes[layer.node] = verdict.note
    return eligible, skipped, notes


@register_pass
class PlanTwoFour(Pass):
    """Plan 2:4 masks (the 2 largest |w| of every 4 along the reduction) for eligible layers.

    Args:
        layers: Layer selector (names, regex, kinds, exclude, exclude_first_last). Defaults to
            every eligible conv, pointwise, gemm and matmul layer, first and last included.
        layout: "input-channel" (TensorRT's; groups along C_in of a conv, K of a GEMM) or
            "kernel-width" (the hybrid paper's; TensorRT does not read it as 2:4). Defaults to
            "input-channel".
    """

    name = "plan-24"
    role = Role.PLAN
    exact = True
    description = "Plan 2:4 masks (TensorRT layout) for the eligible Conv/Gemm/MatMul weights"

    def __init__(self, layers: dict[str, Any] | None = None, layout: str = "input-channel"):
        check_layout(layout, where="plan-24 layout option")
        self.layers = layers
        self.layout = layout

    @classmethod
    def options_at(cls, options: dict[str, Any], fraction: float) -> dict[str, Any]:
        raise OptionError("a gradual schedule cannot ramp 2:4 pruning (it keeps 2 of every 4)",
                          fix="use --schedule one-shot for 2:4 recipes")

    def run(self, ctx: PassContext) -> PassResult:
        eligible, skipped, caveats = select_eligible(ctx, self.layers, self.layout)
        tensors = ctx.model.graph.tensors()
        plan = SparsityPlan(source="plan-24")
        per_layer = {}
        for layer in eligible:
            values = tensors[layer.weight].values
            earlier = ctx.plan.entries.get(layer.weight) if ctx.plan is not None else None
            # an earlier plan for this weight is honoured: 2:4 is chosen among the weights it keeps
            kept_values = values if earlier is None else np.where(earlier.mask, values, 0)
            mask = two_four_mask(kept_values, layer.op, layer.trans_b, layout=self.layout, weight_name=layer.weight)
            if earlier is not None:
                mask &= earlier.mask  # what the merge below keeps; the kept share is measured on it
            total = float(np.abs(values).sum())
            kept = float(np.abs(values[mask]).sum())
            details = {"layout": self.layout, "axis": "C*kh*kw (memory order)"
                       if self.layout == "kernel-width" and layer.op == "Conv" else reduction_axis(layer.op,
                                                                                                   layer.trans_b),
                       "kept_magnitude_share": round(kept / total, 6) if total else 1.0}
            if layer.node in caveats:
                details["caveat"] = caveats[layer.node]
            plan.add(WeightPlan(layer.weight, layer.node, "2:4", mask, criterion="magnitude", ratio=0.5,
                                details=details))
            per_layer[layer.node] = details["kept_magnitude_share"]
        ctx.plan, _ = merge_into(ctx.plan, plan, "intersect")  # and merge records combined_with
        notes = [f"2:4 masks planned for {len(eligible)} layer(s), {len(skipped)} left out"]
        if self.layout == "kernel-width":
            notes.append("kernel-width layout: the masks follow the hybrid paper, not TensorRT's 2:4 layout; "
                         "check-24 and polygraphy will not report these weights as sparse")
        if caveats:
            notes.append(f"{len(caveats)} planned layer(s) have C_in or C_out below 256, where TensorRT "
                         "often keeps the dense kernel")
        return PassResult(False, 0, skipped=skipped, notes=notes,
                          details={"layout": self.layout, "kept_magnitude_share": per_layer,
                                   "small_channel_layers": caveats})


@register_pass
class CheckTwoFour(Pass):
    """Report which weights are 2:4 in TensorRT's layout (the rule of ``polygraphy inspect sparsity``)."""

    name = "check-24"
    role = Role.CHECK
    exact = True
    description = "Report per weight whether it is 2:4 sparse in TensorRT's layout (polygraphy's rule)"

    def run(self, ctx: PassContext) -> PassResult:
        layers, unsupported = find_weight_layers(ctx.model)
        tensors = ctx.model.graph.tensors()
        weights: dict[str, dict[str, Any]] = {}
        skipped = unsupported_skips(unsupported)
        for layer in layers:
            values = tensors[layer.weight].values
            verdict = eligibility(layer, values.dtype)
            weights[layer.weight] = {"layer": layer.node, "op": layer.op,
                                     "two_four": check_two_four(values, layer.op, layer.trans_b),
                                     "eligible": verdict.eligible}
            if not verdict.eligible:
                weights[layer.weight]["reason"] = verdict.reason
                skipped.append(Skipped(layer.node, verdict.reason))
        sparse = sorted(name for name, info in weights.items() if info["two_four"])
        return PassResult(False, 0, skipped=skipped,
                          notes=[f"{len(sparse)} of {len(weights)} weight(s) are 2:4 in TensorRT's layout "
                                 "(TensorRT-ready: build the engine with sparse weights enabled)"],
                          details={"weights": weights, "two_four": sparse})


def _permuted(values: np.ndarray, use, size: int, permutation: np.ndarray) -> np.ndarray:
    """``values`` with the group's channels reordered along the use's axis (what reindex_channels does).

    Only for uses that cover the whole group (``_unpermutable`` refuses the others).
    """
    order = np.arange(values.shape[use.axis])
    order[use.offset:use.offset + size * use.stride] = use.positions(size, permutation)
    return np.take(values, order, axis=use.axis)


@register_pass
class PermuteChannelsTwoFour(Pass):
    """Reorder coupled channels so that 2:4 pruning keeps more magnitude (exact).

    Args:
        layers: Which layers count as 2:4 targets, as for ``plan-24``. Defaults to every eligible
            layer, first and last included.
        seed: Seed of the permutation search. Defaults to 0.
        restarts: Random kicks per search window. Defaults to 2.
        max_swaps: Improving moves per search window. Defaults to 50 x channels.
        window: Channels searched together. Defaults to 256.
    """

    name = "permute-channels-24"
    role = Role.REWRITE
    exact = True
    description = "Permute channels (producers + consumers together) to raise the magnitude 2:4 keeps"

    def __init__(self, layers: dict[str, Any] | None = None, seed: int = 0, restarts: int = 2,
                 max_swaps: int | None = None, window: int = 256):
        self.layers = layers
        self.seed = seed
        self.restarts = restarts
        self.max_swaps = max_swaps
        self.window = window

    def run(self, ctx: PassContext) -> PassResult:
        from sparsecc.dependency import build_channel_groups, reindex_channels

        eligible, _, _ = select_eligible(ctx, self.layers, "input-channel")
        targets = {layer.node: layer for layer in eligible}
        tensors = ctx.model.graph.tensors()
        skipped: list[Skipped] = []
        per_layer: dict[str, dict[str, float]] = {}
        dropped: list[str] = []
        permuted = 0
        for group in build_channel_groups(ctx.model):
            uses = [u for u in group.consumers if u.kind == "weight" and u.node in targets
                    and u.tensor == targets[u.node].weight
                    and u.axis == reduction_axis(targets[u.node].op, targets[u.node].trans_b)]
            if not uses:
                continue
            reason = self._unpermutable(group)
            if reason:
                skipped.append(Skipped(group.id, reason))
                continue
            # the search sees the consumers whose 2:4 groups are made of this group's channels alone
            aligned = [np.moveaxis(tensors[u.tensor].values, u.axis, 1)[:, u.offset:u.offset + group.size]
                       for u in uses if u.stride == 1 and u.offset % 4 == 0]
            if not aligned:
                skipped.append(Skipped(group.id, "no consumer's 2:4 groups line up with these channels "
                                                 "(offset or Flatten block not a multiple of 4)"))
                continue
            found = search_permutation(aligned, seed=self.seed, max_swaps=self.max_swaps,
                                       restarts=self.restarts, window=self.window)
            # judge on every target layer's whole weight, misaligned readers included
            gains = {}
            for use in uses:
                layer = targets[use.node]
                values = tensors[use.tensor].values
                before = kept_magnitude(values, layer.op, layer.trans_b)
                after = kept_magnitude(_permuted(values, use, group.size, found.permutation), layer.op,
                                       layer.trans_b)
                gains[use.node] = (before, after)
            total_before = sum(b for b, _ in gains.values())
            total_after = sum(a for _, a in gains.values())
            if found.is_identity or not total_after > total_before:
                skipped.append(Skipped(group.id, "no channel order keeps more magnitude under 2:4"))
                continue
            touched = {u.tensor for u in group.producers + group.consumers if u.kind in ("weight", "param")}
            reindex_channels(ctx.model, group, found.permutation)
            tensors = ctx.model.graph.tensors()
            dropped += ctx.plan.invalidate(touched) if ctx.plan is not None else []
            permuted += 1
            for node, (before, after) in gains.items():
                per_layer[node] = {"kept_before": round(before, 6), "kept_after": round(after, 6),
                                   "gain": round((after - before) / before, 6) if before else 0.0}
        average = float(np.mean([v["gain"] for v in per_layer.values()])) if per_layer else 0.0
        notes = [f"{permuted} channel group(s) permuted; 2:4 kept magnitude up {average:.2%} on average over "
                 f"{len(per_layer)} layer(s)"]
        details: dict[str, Any] = {"groups_permuted": permuted, "per_layer": per_layer, "average_gain": average}
        if dropped:
            details["plan_entries_dropped"] = dropped
            notes.append(f"{len(dropped)} plan entr(ies) dropped: their weights were reordered "
                         "(run permute-channels-24 before planning)")
        return PassResult(permuted > 0, permuted, skipped=skipped, notes=notes, details=details)

    @staticmethod
    def _unpermutable(group) -> str:
        if not group.editable():
            return "; ".join(group.blockers)
        if group.size % 4:
            return f"{group.size} channels: not a multiple of 4"
        if any(u.start or u.covered(group.size) != group.size for u in group.producers + group.consumers):
            return "some uses cover only part of the channels (Split/Slice): a permutation would cross parts"
        return ""

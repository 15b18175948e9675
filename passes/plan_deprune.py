"""``plan-deprune``: DEPrune's masks for depthwise-separable networks (analysis only).

It finds the PW1 -> DW -> PW2 blocks (:mod:`sparsecc.dsc`), masks each depthwise weight with DCP,
BWT or BWT + HSR (:mod:`sparsecc.sparsity.deprune`; pattern ``depthwise-taps``, the name
zero-detection gives the same structure), and plans l2 filter pruning of every PW2 through
``plan-filters`` (coupled channel groups: BN, bias, residual stream), which ``remove-filters`` then
removes physically::

    - plan-deprune: {method: bwt-hsr, dw_ratio: 0.8, pw_ratio: 0.5, ratios: {<dw layer>: 0.7}}

The rest of DEPrune: ``deprune-dead-channels`` (:mod:`sparsecc.passes.deprune_dead_channels`),
``deprune-rewrite`` (:mod:`sparsecc.passes.deprune_rewrite`) and ``deprune-model-check``
(:mod:`sparsecc.passes.deprune_model_check`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsecc.dsc import DscBlock, find_dsc_blocks
from sparsecc.errors import OptionError, UnsupportedModelError
from sparsecc.layers import WeightLayer, analyse_layers
from sparsecc.passmanager import Pass, PassContext, PassResult, Role, Skipped, register_pass
from sparsecc.plan import SparsityPlan, WeightPlan
from sparsecc.sparsity.deprune import (HsrLayer, bwt_mask, channel_first_mask, dcp_mask, hsr_counts,
                                       imbalance_overhead, real_dw_ratio, subgemm_ratios, tapless_channels)

PATTERN = "depthwise-taps"
METHODS = ("dcp", "bwt", "bwt-hsr")


@register_pass
class PlanDeprune(Pass):
    """Plan DEPrune masks: depthwise taps (DCP / BWT / BWT+HSR) and PW2 l2 filter pruning.

    Args:
        method: "dcp", "bwt" or "bwt-hsr". Defaults to "bwt-hsr".
        dw_ratio: Share of depthwise weights pruned in every layer. Defaults to 0.8.
        ratios: Per-layer depthwise ratios (node name -> ratio), overriding ``dw_ratio``.
        pw_ratio: Share of each PW2's filters removed (l2 norm; 0 leaves PW2 alone). Defaults to 0.5.
        pw_round_to: Kept PW2 filter counts are multiples of this. Defaults to 8 (the paper's GPU
            tile is 32; 8 is ONNX Runtime's NCHWc block).
        width: Channels per DR sub-GEMM. Defaults to 32.
        tile: HSR's tile. Defaults to 32.
        exclude: Depthwise layer names left dense. Defaults to none.
        channel_share: Share of each layer's pruning budget spent on whole channels first (lowest
            l2 norm; :func:`~sparsecc.sparsity.deprune.channel_first_mask`), so that dead channels
            leave PW1, DW and PW2 on backends where pruned taps alone do not pay (CPUs). Not the
            paper's method (it prunes taps only); with "dcp" or "bwt". Defaults to 0.
    """

    name = "plan-deprune"
    role = Role.PLAN
    exact = True
    description = "Plan DEPrune masks (depthwise taps by DCP/BWT/HSR, PW2 filters by l2) for PW1-DW-PW2 blocks"

    def __init__(self, method: str = "bwt-hsr", dw_ratio: float = 0.8, ratios: dict[str, float] | None = None,
                 pw_ratio: float = 0.5, pw_round_to: int = 8, width: int = 32, tile: int = 32,
                 exclude: list[str] | None = None, channel_share: float = 0.0):
        if method not in METHODS:
            raise OptionError(f"unknown method '{method}'", where="plan-deprune: method", fix=f"use one of {METHODS}")
        for what, value in [("dw_ratio", dw_ratio)] + [(f"ratios[{k}]", v) for k, v in (ratios or {}).items()]:
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise OptionError(f"{what} {value!r} is not in [0, 1)", where="plan-deprune",
                                  fix="give the share of depthwise weights pruned, e.g. 0.8")
        if not isinstance(pw_ratio, (int, float)) or not 0.0 <= pw_ratio < 1.0:
            raise OptionError(f"pw_ratio {pw_ratio!r} is not in [0, 1)", where="plan-deprune",
                              fix="e.g. 0.5; 0 leaves the pointwise convs alone")
        for what, value in (("width", width), ("tile", tile), ("pw_round_to", pw_round_to)):
            if not isinstance(value, int) or value < 1:
                raise OptionError(f"{what} {value!r} is not a positive integer", where="plan-deprune")
        self.method, self.dw_ratio, self.ratios = method, float(dw_ratio), dict(ratios or {})
        self.pw_ratio, self.pw_round_to = float(pw_ratio), pw_round_to
        self.width, self.tile, self.exclude = width, tile, list(exclude or [])
        if not isinstance(channel_share, (int, float)) or not 0.0 <= channel_share <= 1.0:
            raise OptionError(f"channel_share {channel_share!r} is not in [0, 1]", where="plan-deprune")
        if channel_share and method == "bwt-hsr":
            raise OptionError("channel_share works with method dcp or bwt, not bwt-hsr", where="plan-deprune",
                              fix="use method: bwt with channel_share, or channel_share: 0 with bwt-hsr")
        self.channel_share = float(channel_share)

    @classmethod
    def options_at(cls, options: dict[str, Any], fraction: float) -> dict[str, Any]:
        """Depthwise taps and PW2 filters ramp together: every ratio becomes ``fraction * ratio``."""
        options = dict(options)
        options["dw_ratio"] = fraction * float(options.get("dw_ratio", 0.8))
        options["pw_ratio"] = fraction * float(options.get("pw_ratio", 0.5))
        if options.get("ratios"):
            options["ratios"] = {k: fraction * v for k, v in options["ratios"].items()}
        return options

    def run(self, ctx: PassContext) -> PassResult:
        model = ctx.model
        layers, _ = analyse_layers(model)
        if not any(layer.kind == "depthwise" or (layer.kind == "grouped" and layer.weight_shape[1] == 1)
                   for layer in layers):  # depth multipliers above 1 are listed with their reason below
            kinds = sorted({layer.kind for layer in layers})
            raise UnsupportedModelError(
                f"the model has no depthwise convolution (its weight layers are {', '.join(kinds) or 'none'}): "
                "DEPrune prunes depthwise convs", where=model.source,
                fix="use a recipe for plain convolutions: filter-l2, groupwise-50 or hybrid-24")
        by_node = {layer.node: layer for layer in layers}
        blocks, others = find_dsc_blocks(model, layers)
        skipped = [Skipped(o.layer, o.reason) for o in others]
        unknown = sorted(set(self.ratios) - {b.dw for b in blocks})
        if unknown:
            raise OptionError(f"ratios name {unknown}, which are not depthwise layers of the model",
                              where="plan-deprune: ratios", fix="run `sparsecc inspect` for the depthwise layer names")
        chosen: list[tuple[DscBlock, WeightLayer, float]] = []
        for block in blocks:
            layer = by_node[block.dw]
            if block.dw in self.exclude:
                skipped.append(Skipped(block.dw, "excluded"))
            elif layer.shared_with:
                skipped.append(Skipped(block.dw, f"weight shared with {layer.shared_with}"))
            else:
                chosen.append((block, layer, self.ratios.get(block.dw, self.dw_ratio)))
        tensors = model.graph.tensors()
        counts = self._hsr(chosen) if self.method == "bwt-hsr" else {}
        plan = ctx.plan if ctx.plan is not None else SparsityPlan(source=f"plan-deprune ({self.method})")
        table = {}
        for block, layer, ratio in chosen:
            weight = tensors[layer.weight].values
            if self.channel_share:
                mask = channel_first_mask(weight, ratio, self.channel_share, self.width, self.method == "bwt")
            elif self.method == "dcp":
                mask = dcp_mask(weight, ratio)
            else:
                mask = bwt_mask(weight, ratio, self.width, counts.get(block.dw, (None, None))[1])
            pattern = counts.get(block.dw, ("-",))[0]
            facts = {"method": self.method, "channel_share": self.channel_share, "width": self.width,
                     "dw_ratio": round(1.0 - float(mask.mean()), 4),
                     "real_dw": round(real_dw_ratio(mask, self.width), 4),
                     "imbalance": round(imbalance_overhead(mask, self.width), 4), "hsr": pattern,
                     "sub_gemm_ratios": [round(float(r), 4) for r in subgemm_ratios(mask, self.width)],
                     "dead_channels": int(tapless_channels(mask).size), "pw2": block.pw2}
            plan.add(WeightPlan(layer.weight, layer.node, PATTERN, mask, criterion="magnitude", ratio=ratio,
                                alignment=self.tile if self.method == "bwt-hsr" else None, details=facts))
            table[block.dw] = facts
        ctx.plan = plan
        notes = [f"{len(chosen)} depthwise layer(s) planned ({self.method}), {len(skipped)} left out"]
        pw = {}
        if self.pw_ratio > 0:
            pw = self._plan_pw2(ctx, [b.pw2 for b, _, _ in chosen if b.pw2], skipped, notes)
        return PassResult(False, 0, skipped, notes, {"dw": table, "pw": pw,
                                                     "blocks": [b.describe() for b in blocks]})

    def _hsr(self, chosen) -> dict[str, tuple[str, list[int]]]:
        hsr_layers = []
        for block, layer, ratio in chosen:
            out = layer.output_shape or (1, 1, 1, 1)
            hsr_layers.append(HsrLayer(block.dw, block.channels, block.kernel[0] * block.kernel[1], ratio,
                                       int(out[0] * np.prod(out[2:]))))
        return {c.name: (c.pattern, c.counts) for c in hsr_counts(hsr_layers, self.width, self.tile)}

    def _plan_pw2(self, ctx: PassContext, names: list[str], skipped: list[Skipped], notes: list[str]) -> dict:
        from sparsecc.passes.filter_prune import PlanFilters

        if not names:
            notes.append("no PW2 to filter-prune")
            return {}
        result = PlanFilters(metric="l2", ratio=self.pw_ratio, scope="per-layer", round_to=self.pw_round_to,
                             layers={"names": names, "exclude_first_last": False}).run(ctx)
        # groups whose channels are made by layers other than PW2s (the stem) are not DEPrune's
        skipped.extend(s for s in result.skipped if any(n in s.layer.split(" + ") for n in names))
        notes.extend(result.notes)
        return result.details.get("groups", {})

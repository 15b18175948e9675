"""Whole-model checks: a rewritten model timed against the graph before it, and what the policy makes of it.

Layers are lowered one at a time, but a lowering can win on its layer and lose in the model
(layout changes between neighbours, cache effects), so a lowering pass ends by timing the whole
model (paired, CPU time beside wall clock, through the timing cache: :mod:`sparsecc.measure`).
The lowerings are a trade-off (a Gather and a smaller GEMM instead of one dense layer): a
conclusive timing keeps or undoes them, an inconclusive one defers to the analytic model. Work
removed before them (filters, dead channels, folded channels) is never at stake
(:func:`check_removed_work` reports it and flags a conclusive slowdown; :mod:`sparsecc.policy`).
"""

from __future__ import annotations

from typing import Any

from sparsecc.lowering.cost import timing_environment
from sparsecc.lowering.registry import Candidate
from sparsecc.lowering.timing_cache import TimingCache, graph_signature
from sparsecc.measure import MeasureSettings, Verdict, judge
from sparsecc.measure.cached import Sourced, compare_through_cache
from sparsecc.policy import (ANALYTIC, Decision, Option, WorkProfile, choose, judge_removal, keep_or_undo, op_counts,
                             removes_work)

# a whole model: at least 20 pairs, more while the interval straddles 1, for 15 s at most
MODEL_SETTINGS = MeasureSettings(min_pairs=20, max_pairs=200, batch=10, budget_s=15.0)


def work_profile(model) -> WorkProfile:
    """Op counts and per-layer MACs of a model (for :func:`sparsecc.policy.removes_work`)."""
    from sparsecc.layers import analyse_layers

    layers, _ = analyse_layers(model)
    return WorkProfile(op_counts(n.op for n in model.graph.nodes), {layer.node: layer.macs or 0 for layer in layers})


def model_evidence(before, after, threads: int, cache: TimingCache | None,
                   labels: tuple[str, str] = ("dense", "rewritten"), min_pairs: int | None = None) -> Sourced:
    """Paired timing of two whole models (``after`` against ``before``), from the cache or measured
    (at least ``min_pairs`` pairs; defaults to :data:`MODEL_SETTINGS`'s 20)."""
    from dataclasses import replace

    from sparsecc.measure import measure_models

    cache = cache if cache is not None else TimingCache(None)
    what = {"what": "model-pair", "baseline": labels[0], "candidate": labels[1]}
    key = TimingCache.key({**what, "baseline_graph": graph_signature(before.graph),
                           "graph": graph_signature(after.graph), **timing_environment(threads)})

    settings = MODEL_SETTINGS if min_pairs is None else replace(
        MODEL_SETTINGS, min_pairs=min_pairs, max_pairs=max(min_pairs, MODEL_SETTINGS.max_pairs))

    def measure_missing(_labels):
        return measure_models({labels[0]: before, labels[1]: after}, labels[0], 1.0, threads, settings)

    return compare_through_cache(cache, {labels[1]: key}, {labels[1]: what}, measure_missing)[labels[1]]


def _record(sourced: Sourced | None, verdict: Verdict | None, decision: Decision, reason: str) -> dict[str, Any]:
    record: dict[str, Any] = {"kept": decision.choice == "keep", "decided_by": decision.by,
                              "fallback": decision.fallback, "reason": reason}
    if sourced is not None:
        record.update(evidence=sourced.evidence.to_dict(), source=sourced.source, source_note=sourced.note,
                      verdict=verdict.outcome)
    return record


def keep_lowerings_unless_slower(before, model, threads: int, cache: TimingCache | None,
                                 lowered: list[tuple[Candidate, Candidate]], cost, details: dict, skipped: list,
                                 notes: list) -> bool:
    """A lowering pass's last step: keep its lowerings unless the whole model is conclusively slower.

    ``before`` is the model before the lowerings (after any work the pass removed first, which
    stays); ``lowered`` pairs each lowered layer's baseline candidate with the one taken (for the
    analytic estimate when the timing is inconclusive). Records ``details["model_check"]``; when
    the lowerings are undone, puts ``before``'s graph back and lists the reason in ``skipped``
    and ``notes``. True when kept.
    """
    from sparsecc.passmanager import Skipped

    sourced = model_evidence(before, model, threads, cache)
    verdict = judge(sourced.evidence, 1.0)
    estimate, label = None, ANALYTIC
    if not verdict.conclusive:
        fallback = cost.fallback()
        fallback.estimate([c for pair in lowered for c in pair])
        estimate = sum(b.estimate_s for b, _ in lowered) / sum(c.estimate_s for _, c in lowered)
        label = fallback.label
    decision = keep_or_undo(verdict, estimate, 1.0, label)
    kept = decision.choice == "keep"
    outcome = "kept" if kept else "the lowerings are undone (work removed before them stays)"
    if decision.fallback:
        reason = (f"whole model: timing inconclusive ({verdict.reason}), so the {label} decides: "
                  f"{estimate:.3f}x over the {len(lowered)} lowered layer(s): {outcome}")
    else:
        reason = f"whole model, rewritten vs dense: {verdict.reason}: {outcome}"
    details["model_check"] = _record(sourced, verdict, decision, reason)
    if kept:
        return True
    model.graph = before.graph
    skipped.append(Skipped("(whole model)", reason))
    notes.append(reason)
    return False


def check_removed_work(reference, model, cost_model: str, threads: int, cache: TimingCache | None,
                       labels: tuple[str, str] = ("masked", "compiled"), min_pairs: int | None = None
                       ) -> dict[str, Any]:
    """The compiled model against the masked one: kept whatever a timing says, timed to report the speedup.

    With ``cost_model == "analytic"`` nothing is timed and no cache is read. A conclusive
    slowdown is flagged (``slowdown``) for a fix where it comes from; it is never undone.
    """
    less, why = removes_work(work_profile(reference), work_profile(model))
    sourced = verdict = None
    if cost_model != "analytic":
        sourced = model_evidence(reference, model, threads, cache, labels, min_pairs)
        verdict = judge(sourced.evidence, 1.0)
    decision = judge_removal(verdict)
    if less:
        reason = f"whole model, {labels[1]} vs {labels[0]}: {decision.reason}"
    else:
        # dead channels under a squeeze-excitation leave a small side branch; lowerings were timed by their pass
        reason = (f"whole model, {labels[1]} vs {labels[0]}: {why}; each part was decided where it was made "
                  f"(removed work kept, lowerings timed by their pass), so nothing is undone here"
                  + (f" ({verdict.reason})" if verdict is not None else " (not timed: analytic cost model)"))
    record = _record(sourced, verdict, decision, reason)
    record.update(removes_work=less, slowdown=decision.slowdown)
    return record


def fix_slowdown_by_alignment(reference, model, threads: int, cache: TimingCache | None, multiple: int = 8
                              ) -> tuple[Any, dict[str, Any]]:
    """A conclusive slowdown from removed channels, fixed where it comes from: counts off ``multiple``.

    The groups pruning shrank get zero channels back up to the next multiple
    (:func:`sparsecc.dependency.padding.align_pruned_channels`, exact). That is a trade-off (a
    few more MACs for kernels that run faster), so timing decides between the two, and an
    inconclusive timing defers to the analytic model (fewer MACs: no padding). Returns the model
    to keep (``model`` or the padded copy) and a record of what was tried.
    """
    from sparsecc.dependency.padding import align_pruned_channels

    padded = model.copy()
    changes = align_pruned_channels(padded, reference, multiple)
    if not any("not_padded" not in c for c in changes):
        return model, {"applied": False, "changes": changes,
                       "reason": f"no pruned channel count to round up to a multiple of {multiple}"}
    sourced = model_evidence(model, padded, threads, cache, ("compiled", "aligned"))
    verdict = judge(sourced.evidence, 1.0)
    estimate = work_profile(model).macs / max(1, work_profile(padded).macs)
    decision = choose("compiled", [Option("aligned", verdict, estimate)], 1.0)
    applied = decision.choice == "aligned"
    record = {"applied": applied, "changes": changes, "evidence": sourced.evidence.to_dict(),
              "decided_by": decision.by, "reason": f"channel counts rounded up to multiples of {multiple} with zero "
                                                   f"channels: {'kept' if applied else 'not kept'} ({decision.reason})"}
    return (padded if applied else model), record

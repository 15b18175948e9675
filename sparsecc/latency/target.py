"""Filter pruning to a speed target: tables, allocation, removal on a copy, measurement, correction.

What ``plan-filters`` does with ``target_speedup`` or ``target_latency``:

1. Latency tables of every layer whose channels a candidate group makes or reads
   (:mod:`~sparsecc.latency.sampling`), on the target backend at the compile shapes.
2. Allowed kept counts per group: multiples of the alignment asked for (``round_to``) and of the
   steps the group's kernels were found to prefer, at least ``min_keep`` of the group, and none
   that would bring back a dead channel (a channel whose filters are all zero stays removed).
3. The allocation (:func:`~sparsecc.latency.allocate.allocate`): the most importance (the filter
   metric's scores) within ``budget = tables' dense latency / target``.
4. With a measuring timer, the allocation is checked: the filters are removed on a copy, the copy
   is timed against the unpruned model (paired, interleaved, CPU time at one thread: the stable
   measure; wall clock reported beside it; through the timing cache), and the budget is corrected
   by what was measured (a model is more than its tables: other ops, caches) for a few rounds.
   The round whose measured speedup reaches the target with the most importance kept is taken.

A target the unpruned model already meets removes nothing: a latency target at or above its latency
(measured first with a measuring timer, the tables' sum otherwise), or a speedup within the 1% by which a
measured speedup may fall short of its target (``REACHED``: the unpruned model, at 1x, would count as
reaching it, and it keeps all the importance).

The result reports the target, what the tables predicted, what was measured (with its interval
and the load) and the ideal (MAC ratio), for every round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from sparsecc.dependency import ChannelGroup, reindex_groups
from sparsecc.errors import OptionError
from sparsecc.latency.allocate import VALUES, Allocation, GroupOptions, allocate, network_seconds
from sparsecc.latency.network import PrunableLayer, layer_costs, prunable_layers
from sparsecc.latency.sampling import build_tables
from sparsecc.latency.tables import LayerTable
from sparsecc.latency.timers import TIMERS, make_timer
from sparsecc.model import Model

__all__ = ["SpeedTarget", "TargetResult", "plan_to_target", "allowed_counts", "group_steps", "speedup_problem",
           "latency_problem"]

MAX_SPEEDUP = 1e3  # a larger target is a typo (or a latency given as a speedup), not a plan
REACHED = 0.99  # a measured speedup within 1% under the target counts as reaching it (the intervals are wider)


def speedup_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a target speedup (None: nothing). The one rule for the pass option
    ``target_speedup`` and the ``--target-speedup`` flag, each of which says it in its own words."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "is not a number"
    if value <= 1.0:
        return "is not above 1 (a speedup is how many times faster the model runs; 1 is the model as it is)"
    if value >= MAX_SPEEDUP:
        return f"is not below {MAX_SPEEDUP:g} (the largest target sparsecc plans for)"
    return None


def latency_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a target latency in ms (None: nothing); see :func:`speedup_problem`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "is not a number"
    if not 0.0 < value < math.inf:
        return "is not a positive, finite number of milliseconds"
    return None


@dataclass(frozen=True)
class SpeedTarget:
    """What to reach, and how to get there.

    Attributes:
        speedup: Target speedup over the unpruned model (e.g. 2.0), or None.
        latency_ms: Target latency in ms (CPU time of one run at one thread with a measuring
            timer; the timer's unit otherwise), or None. Exactly one of the two is given.
        share: Share of the saving to the target to plan now (gradual schedules ramp it). Defaults to 1.0.
        timer: "measured" (ONNX Runtime CPU), "analytic" or "gpu-roofline" (lower-tensorrt's GPU
            model). Defaults to "measured".
        min_keep: Least share of a group's channels kept. Defaults to 0.1.
        rounds: Measured rounds of correction at most (0: take the tables' allocation as it is).
            Defaults to 5.
        tolerance: A measured speedup up to this much over the target is accepted without another
            round. Defaults to 0.04.
        value: How a group's kept importance counts in the knapsack: "sum" or "log" (diminishing
            returns; see :class:`~sparsecc.latency.allocate.GroupOptions`). Defaults to "log".
    """

    speedup: float | None = None
    latency_ms: float | None = None
    share: float = 1.0
    timer: str = "measured"
    min_keep: float = 0.1
    rounds: int = 5
    tolerance: float = 0.04
    value: str = "log"

    def __post_init__(self):
        where = "plan-filters"
        if (self.speedup is None) == (self.latency_ms is None):
            raise OptionError("give one of target_speedup and target_latency", where=where,
                              fix="e.g. --target-speedup 2, or --target-latency 5 (ms)")
        if self.speedup is not None and (problem := speedup_problem(self.speedup)):
            raise OptionError(f"target speedup {self.speedup!r} {problem}", where=f"{where}: target_speedup",
                              fix="e.g. 2 for twice as fast")
        if self.latency_ms is not None and (problem := latency_problem(self.latency_ms)):
            raise OptionError(f"target latency {self.latency_ms!r} {problem}", where=f"{where}: target_latency",
                              fix="give milliseconds, e.g. 5")
        if not 0.0 < self.share <= 1.0:
            raise OptionError(f"target share {self.share!r} is not in (0, 1]", where=f"{where}: target_share")
        if self.timer not in TIMERS:
            raise OptionError(f"unknown latency timer {self.timer!r}", where=f"{where}: timer",
                              fix=f"use one of {', '.join(TIMERS)}")
        if not 0.0 < self.min_keep <= 1.0:
            raise OptionError(f"min_keep {self.min_keep!r} is not in (0, 1]", where=f"{where}: min_keep",
                              fix="e.g. 0.1: every group keeps at least 10% of its channels")
        if self.value not in VALUES:
            raise OptionError(f"unknown value {self.value!r}", where=f"{where}: value",
                              fix=f"use one of {', '.join(VALUES)}")
        if not isinstance(self.rounds, int) or self.rounds < 0 or not 0.0 <= self.tolerance < 1.0:
            raise OptionError("target rounds must be an integer >= 0 and tolerance in [0, 1)", where=where)

    def describe(self) -> str:
        what = f"{self.speedup:g}x faster" if self.speedup is not None else f"{self.latency_ms:g} ms"
        return what + (f" ({self.share:.0%} of the way there)" if self.share < 1.0 else "")


@dataclass
class TargetResult:
    """The channels to keep per group, and how the target was met (for the pass's report)."""

    kept: dict[str, np.ndarray]
    details: dict[str, Any]
    notes: list[str]


def group_steps(layers: list[PrunableLayer], tables: Mapping[str, LayerTable]) -> dict[str, int]:
    """Per group, the largest step any of its layers' kernels was found to prefer on the group's side."""
    steps: dict[str, int] = {}
    for layer in layers:
        table = tables.get(layer.name)
        if table is None:
            continue
        sides = [(layer.outputs, table.outputs)] + ([] if layer.geometry.depthwise else [(layer.inputs, table.inputs)])
        for terms, axis in sides:
            if axis is None or len(terms) != 1 or terms[0].stride != 1:
                continue  # a side made of several groups, or a Flatten: no one group's step
            steps[terms[0].group] = max(steps.get(terms[0].group, 1), axis.step)
    return steps


def allowed_counts(size: int, alignment: int, min_keep: float, dead: int = 0) -> np.ndarray:
    """Kept counts a group may take: multiples of ``alignment`` from ``min_keep`` of the group up, plus
    the whole group, none above ``size - dead`` (dead channels stay removed); never empty."""
    ceiling = size - dead
    low = max(alignment, int(math.ceil(min_keep * size / alignment)) * alignment)
    counts = [c for c in range(low, ceiling + 1, alignment)]
    if ceiling == size:
        counts.append(size)
    if not counts:  # the group is smaller than one multiple, or the dead channels leave less than one
        counts = [max(1, min(ceiling, alignment))]
    return np.unique(np.asarray(counts, dtype=np.int64))


def _options(candidates: Mapping[str, ChannelGroup], scores: Mapping[str, np.ndarray], steps: Mapping[str, int],
             round_to: int, min_keep: float, value: str = "sum") -> tuple[list[GroupOptions], dict[str, dict]]:
    options, described = [], {}
    for label, group in candidates.items():
        found = steps.get(label, 1)
        alignment = math.lcm(max(1, round_to), found)
        dead = int(np.count_nonzero(np.asarray(scores[label]) == 0.0))
        counts = allowed_counts(group.size, alignment, min_keep, dead)
        options.append(GroupOptions(label, scores[label], counts, value))
        described[label] = {"size": group.size, "step_found": found, "alignment": alignment, "dead": dead,
                            "counts": f"{counts[0]}..{counts[-1]}" if len(counts) > 1 else str(counts[0])}
    return options, described


def _kept_channels(scores: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The ``count`` highest-scoring channels of each group, in channel order (ties: lower index kept)."""
    kept = {}
    for label, count in counts.items():
        order = np.argsort(-np.asarray(scores[label], dtype=np.float64), kind="stable")
        kept[label] = np.sort(order[:count]).astype(np.int64)
    return kept


def pruned_copy(model: Model, candidates: Mapping[str, ChannelGroup], kept: Mapping[str, np.ndarray]) -> Model:
    """A copy of ``model`` with only the ``kept`` channels of each group (the edit ``remove-filters`` makes)."""
    copy = model.copy()
    edits = [(candidates[label], indices) for label, indices in kept.items() if len(indices) < candidates[label].size]
    if edits:
        reindex_groups(copy, edits)
    return copy


def _macs(model: Model) -> int:
    from sparsecc.layers import analyse_layers

    return sum(layer.macs or 0 for layer in analyse_layers(model)[0])


def plan_to_target(model: Model, candidates: Mapping[str, ChannelGroup], scores: Mapping[str, np.ndarray],
                   round_to: int, target: SpeedTarget, cache=None,
                   progress: Callable[[str], None] | None = None) -> TargetResult:
    """The channels each candidate group keeps to meet ``target`` with the most importance kept.

    Args:
        model: The model (canonical; not modified).
        candidates: Label -> the editable channel groups that may be pruned.
        scores: Label -> importance of each channel (higher = keep), comparable across groups.
        round_to: Kept counts are multiples of this (and of the step the kernels were found to prefer).
        target: What to reach.
        cache: The timing cache. Defaults to one kept in memory.
        progress: Called with progress lines. Defaults to none.
    """
    timer = make_timer(target.timer, cache=cache)
    layers = prunable_layers(model, candidates)
    tables = build_tables(layers, timer, progress)
    costs = layer_costs(layers, tables)
    options, groups_described = _options(candidates, scores, group_steps(layers, tables), round_to, target.min_keep,
                                         target.value)
    dense_kept = {g.id: g.size for g in options}
    dense_seconds = network_seconds(costs, dense_kept)
    details: dict[str, Any] = {
        "target": target.describe(), "timer": timer.describe(), "layers_timed": len(tables),
        "tables": {name: table.to_dict() for name, table in tables.items()}, "groups": groups_described,
        "tables_dense_ms": round(dense_seconds * 1e3, 4), "rounds": []}
    measuring = timer.measured and target.rounds > 0
    dense_macs = _macs(model)
    dense_ms = None
    if measuring and target.latency_ms is not None:
        # the latency target is on the measured scale: time the unpruned model first (paired with itself)
        dense_ms = _measure(model, model, cache, _pairs(dense_seconds))["cpu_ms"][0]
    speedup = _planned_speedup(target, dense_seconds, dense_ms)
    if speedup * REACHED <= 1.0:
        met = _already_met(target, speedup, dense_ms if dense_ms is not None else dense_seconds * 1e3, measuring)
        details.update(chosen_round=0, result=met)
        kept = {label: np.arange(group.size, dtype=np.int64) for label, group in candidates.items()}
        return TargetResult(kept, details, [met["summary"]])
    share, rounds = 1.0 / speedup, []
    for index in range(max(1, target.rounds if measuring else 1)):
        found = _unseen_allocation(options, costs, share, dense_seconds, rounds, speedup)
        if found is None:
            break  # every budget left gives an allocation already measured: nothing new to learn
        share, allocation = found
        kept = _kept_channels(scores, allocation.kept)
        pruned = pruned_copy(model, candidates, kept)
        row = _round_row(index, share, allocation, dense_seconds, dense_macs, _macs(pruned))
        if measuring:
            evidence = _measure(model, pruned, cache, _pairs(dense_seconds))
            row["measured"] = evidence
            row["target_speedup"] = round(speedup, 4)
        rounds.append((row, allocation, kept))
        if progress:
            progress(_round_line(row))
        achieved = row["measured"]["cpu"]["estimate"] if measuring else None
        if not allocation.feasible and (achieved is None or achieved < speedup * REACHED):
            _unreachable(target, speedup, dense_seconds / allocation.least_seconds, achieved, model.source)
        if not measuring or speedup * REACHED <= achieved <= speedup * (1 + target.tolerance):
            break
        share = _corrected_share(rounds, dense_seconds, speedup)
    chosen = _choose(rounds, speedup, measuring)
    row, allocation, kept = rounds[chosen]
    details["rounds"] = [r for r, _, _ in rounds]
    details["chosen_round"] = chosen
    details["result"] = _result(row, speedup, target, measuring, allocation)
    return TargetResult(kept, details, [_summary(details["result"], target)])


def _unseen_allocation(options: list[GroupOptions], costs, share: float, dense_seconds: float, rounds: list,
                       speedup: float) -> tuple[float, Allocation] | None:
    """The allocation for ``share`` of the tables' dense latency, unless it was measured already.

    When it was and no round has reached the target yet, the budget is tightened (5% at a time) until an
    allocation not yet measured comes; None when there is none, or when the target was reached already.
    """
    reached = any(r["measured"]["cpu"]["estimate"] >= speedup * REACHED for r, _, _ in rounds if "measured" in r)
    for _ in range(40):
        allocation = allocate(options, costs, share * dense_seconds)
        if not any(allocation.kept == earlier.kept for _, earlier, _ in rounds):
            return share, allocation
        if reached or not allocation.feasible:
            return None
        share *= 0.95
    return None


def _unreachable(target: SpeedTarget, speedup: float, most: float, achieved: float | None, where: str) -> None:
    """Refuse a target that removing filters cannot reach (rather than prune everything for less)."""
    measured = f", measured {achieved:.3f}x" if achieved is not None else ""
    raise OptionError(f"the speed target {target.describe()} (= {speedup:.3f}x) cannot be reached by removing "
                      f"filters: with every group at its smallest allowed count (min_keep {target.min_keep:g}, "
                      f"aligned) the latency tables predict {most:.3f}x{measured}", where=where,
                      fix="lower the target, lower min_keep, or let more layers be pruned (plan-filters layers: "
                          "{exclude_first_last: false}); layers that no channel group reaches, and a small model's "
                          "per-run overhead, do not shrink")


def _corrected_share(rounds: list, dense_seconds: float, speedup: float) -> float:
    """The next budget, as a share of the tables' dense latency, from what was measured so far.

    A model is more than its tables (a per-run overhead, ops no table covers, caches), so its measured
    time (relative to dense) is taken as affine in the tables' latency: between the two closest rounds
    on either side of the target when there are such, else through the dense model (time 1) and the
    round closest to the target; the budget is where the line meets ``1 / speedup``.
    """
    goal = 1.0 / speedup
    points = [(allocation.seconds / dense_seconds, 1.0 / row["measured"]["cpu"]["estimate"])
              for row, allocation, _ in rounds]
    slower = [p for p in points if p[1] > goal]
    faster = [p for p in points if p[1] <= goal]
    if slower and faster:
        (x0, y0), (x1, y1) = min(slower, key=lambda p: p[1] - goal), min(faster, key=lambda p: goal - p[1])
    else:
        (x0, y0), (x1, y1) = (1.0, 1.0), min(points, key=lambda p: abs(p[1] - goal))
    least = rounds[0][1].least_seconds / dense_seconds
    if abs(y1 - y0) < 1e-9 or abs(x1 - x0) < 1e-9:
        return max(least, 0.8 * x1)  # no slope to follow: a fifth more of the way
    share = x0 + (goal - y0) * (x1 - x0) / (y1 - y0)
    return float(np.clip(share, least, 1.0))


def _planned_speedup(target: SpeedTarget, dense_seconds: float, dense_ms: float | None = None) -> float:
    """The speedup to plan for: the target's, ramped by ``share``. A latency target is taken against the
    measured unpruned model (``dense_ms``) when there is one, else on the tables' scale (their dense sum);
    at or under 1 when the unpruned model already meets it."""
    if target.speedup is not None:
        return 1.0 / (1.0 - target.share * (1.0 - 1.0 / target.speedup))
    dense = dense_ms if dense_ms is not None else dense_seconds * 1e3
    return dense / (dense - target.share * (dense - target.latency_ms))


def _already_met(target: SpeedTarget, speedup: float, dense_ms: float, measured: bool) -> dict[str, Any]:
    """The result for a target the unpruned model meets: a latency at or above its own, or a speedup within
    the share ``REACHED`` by which a measured speedup may fall short of its target (a round that measured 1.0x
    would count as reaching it, and the unpruned model keeps the most importance)."""
    scale = "measured CPU time, 1 thread" if measured else "on the latency tables' scale"
    if target.latency_ms is not None:
        goal_ms = dense_ms / speedup  # the target latency, ramped by ``share``
        relation = "<=" if dense_ms <= goal_ms else f"within {1 - REACHED:.0%} of"
        why = f"dense {dense_ms:.3f} ms {relation} target {goal_ms:.4g} ms, {scale}"
    else:
        why = (f"{speedup:.4g}x is within the {1 - REACHED:.0%} a speedup may fall short of its target, so the "
               "unpruned model (1x) reaches it")
    summary = f"speed target {target.describe()}: the model already meets the target ({why}); nothing removed"
    return {"target": target.describe(), "target_speedup": round(speedup, 4), "already_met": True,
            "dense_ms": round(dense_ms, 5), "predicted": 1.0, "ideal": 1.0, "feasible": True, "round": 0,
            "reached": True, "summary": summary}


def _round_row(index: int, share: float, allocation: Allocation, dense_seconds: float, dense_macs: int,
               macs: int) -> dict[str, Any]:
    return {"round": index + 1, "budget_share": round(share, 5),
            "predicted_speedup": round(dense_seconds / allocation.seconds, 4) if allocation.seconds else None,
            "ideal": round(dense_macs / macs, 4) if macs else None, "macs": macs, "kept": dict(allocation.kept),
            "importance_kept": round(allocation.value, 4), "feasible": allocation.feasible}


def _measure(dense: Model, pruned: Model, cache, pairs: int) -> dict[str, Any]:
    """Paired timing of the pruned copy against the unpruned model (one thread), through the timing cache.

    A fixed number of pairs (a small model's runs are short and noisy, so it gets more), whatever the
    load: the decision reads CPU time, which load leaves steady at one thread. The cache keeps the
    evidence and reuses it by :func:`sparsecc.measure.cached.reuse_rule`.
    """
    from sparsecc.lowering.cost import timing_environment
    from sparsecc.lowering.timing_cache import TimingCache, graph_signature
    from sparsecc.measure import MeasureSettings, measure_models
    from sparsecc.measure.cached import compare_through_cache

    cache = cache if cache is not None else TimingCache(None)
    what = {"what": "speed-target model", "baseline": "dense", "candidate": "pruned"}
    key = TimingCache.key({**what, "baseline_graph": graph_signature(dense.graph),
                           "graph": graph_signature(pruned.graph), **timing_environment(1)})

    def measure_missing(_labels):
        return measure_models({"dense": dense, "pruned": pruned}, "dense", None, 1, MeasureSettings.fixed(pairs))

    sourced = compare_through_cache(cache, {"pruned": key}, {"pruned": what}, measure_missing)["pruned"]
    return {**sourced.evidence.to_dict(), "source": sourced.source}


def _pairs(dense_seconds: float) -> int:
    """Pairs for a whole-model measurement: about 4 s of runs, 20 to 200 pairs."""
    return int(np.clip(4.0 / max(2 * dense_seconds, 1e-6), 20, 200))


def _choose(rounds: list, speedup: float, measuring: bool) -> int:
    """The round that reaches the target with the most importance kept; else the fastest measured."""
    if not measuring:
        return len(rounds) - 1
    reached = [i for i, (row, _, _) in enumerate(rounds) if row["measured"]["cpu"]["estimate"] >= speedup * REACHED]
    if reached:
        return max(reached, key=lambda i: (rounds[i][0]["importance_kept"], -i))
    return max(range(len(rounds)), key=lambda i: (rounds[i][0]["measured"]["cpu"]["estimate"], -i))


def _result(row: dict, speedup: float, target: SpeedTarget, measuring: bool, allocation: Allocation) -> dict[str, Any]:
    result = {"target": target.describe(), "target_speedup": round(speedup, 4), "predicted": row["predicted_speedup"],
              "ideal": row["ideal"], "feasible": allocation.feasible, "round": row["round"]}
    if measuring:
        measured = row["measured"]
        result.update(achieved=measured["cpu"]["estimate"], achieved_interval=[measured["cpu"]["low"],
                                                                               measured["cpu"]["high"]],
                      wall=measured["wall"]["estimate"], dense_ms=measured["cpu_ms"][0],
                      pruned_ms=measured["cpu_ms"][1], load=measured["load"], pairs=measured["pairs"],
                      source=measured["source"], reached=measured["cpu"]["estimate"] >= speedup * REACHED)
    return result


def _round_line(row: dict[str, Any]) -> str:
    line = (f"speed target round {row['round']}: budget {row['budget_share']:.3f} of the timed layers, predicted "
            f"{row['predicted_speedup']}x, ideal {row['ideal']}x")
    if "measured" in row:
        m = row["measured"]
        line += (f", measured {m['cpu']['estimate']:.3f}x [{m['cpu']['low']:.3f}, {m['cpu']['high']:.3f}] CPU time "
                 f"(wall {m['wall']['estimate']:.3f}x, load {m['load']['before'][0]:.2f}->{m['load']['after'][0]:.2f},"
                 f" {m['source']})")
    return line


def _summary(result: dict[str, Any], target: SpeedTarget) -> str:
    if "achieved" not in result:
        return (f"speed target {result['target']}: predicted {result['predicted']}x by the {target.timer} tables "
                f"(not measured), ideal {result['ideal']}x")
    low, high = result["achieved_interval"]
    verdict = "reached" if result["reached"] else "NOT reached"
    # the speedup is the median of the paired runs' ratios; the two times are each model's own median run,
    # so they need not divide to it
    return (f"speed target {result['target']} (= {result['target_speedup']:.3f}x): {verdict}: achieved "
            f"{result['achieved']:.3f}x [{low:.3f}, {high:.3f}] (median of paired CPU-time ratios, 1 thread; wall "
            f"clock {result['wall']:.3f}x; median CPU time per run: unpruned {result['dense_ms']:.3f} ms, pruned "
            f"{result['pruned_ms']:.3f} ms; load "
            f"{result['load']['before'][0]:.2f}->{result['load']['after'][0]:.2f}), predicted {result['predicted']}x, "
            f"ideal {result['ideal']}x")

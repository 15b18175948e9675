"""Latency-aware channel allocation: keep the most importance within a latency budget (pure numpy).

The problem, as in latency-aware pruning (HALP, Shen et al. 2022): every prunable channel group
``g`` keeps ``k_g`` of its channels, one of its allowed counts (multiples of the step its kernels
prefer and of the alignment asked for); keeping ``k`` channels keeps the importance of its ``k``
best channels, ``V_g(k)``; the network's latency is the sum of its layers' latencies, each a
function of the channels its input and output keep, ``T_l(c_in, c_out)``. Maximise ``sum V_g``
subject to ``sum T_l <= budget``.

A layer between two groups couples them (its latency is about the product of its two counts), so
the problem is a multiple-choice knapsack only once the other groups are held fixed. As HALP does,
the budget is approached in stages: at each stage the latency is linearised around the current
counts (each group's options priced with the other groups where they are), the multiple-choice
knapsack is solved exactly by dynamic programming over a discretised budget, and the counts move
to its solution. Last, the true (table) latency is brought under the budget by removing what
costs the least importance per second saved, and any budget left is spent on what keeps the most
importance per second. With independent groups (no layer shared) the stages agree with the
exact knapsack, up to the discretisation.

Nothing here times anything: the tables are functions given by the caller
(:mod:`sparsecc.latency.tables`), so the allocation is tested on hand-made tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["Term", "LayerCost", "GroupOptions", "Allocation", "allocate", "network_seconds", "kept_value"]

Seconds = Callable[[np.ndarray, np.ndarray], np.ndarray]
VALUES = ("sum", "log")


@dataclass(frozen=True)
class Term:
    """How one group's kept count enters a layer's channel dimension: ``stride`` elements per channel
    (a Flatten into a Gemm makes each channel a block of H*W features; a layer that reads part of a
    group gets that share of it)."""

    group: str
    stride: float = 1


@dataclass
class LayerCost:
    """One layer's latency as a function of its channel counts.

    Attributes:
        name: The layer (for reports).
        seconds: ``seconds(c_in, c_out)``, vectorised over arrays of counts.
        inputs: The groups its input channels are made of. Defaults to none (all fixed).
        outputs: The groups its output channels are made of. A depthwise conv has the same group
            on both sides. Defaults to none.
        fixed_in: Input channels that belong to no prunable group. Defaults to 0.
        fixed_out: Output channels that belong to no prunable group. Defaults to 0.
    """

    name: str
    seconds: Seconds
    inputs: tuple[Term, ...] = ()
    outputs: tuple[Term, ...] = ()
    fixed_in: int = 0
    fixed_out: int = 0

    def groups(self) -> set[str]:
        return {t.group for t in self.inputs + self.outputs}

    def dims(self, kept: Mapping[str, int | np.ndarray]) -> tuple:
        c_in = self.fixed_in + sum(t.stride * np.asarray(kept[t.group]) for t in self.inputs)
        c_out = self.fixed_out + sum(t.stride * np.asarray(kept[t.group]) for t in self.outputs)
        return np.round(c_in, 6), np.round(c_out, 6)  # a share of a group can leave 63.9999999

    def at(self, kept: Mapping[str, int | np.ndarray]):
        c_in, c_out = self.dims(kept)
        return self.seconds(np.asarray(c_in), np.asarray(c_out))


@dataclass
class GroupOptions:
    """One channel group: its channels' importance and the kept counts it may take.

    Attributes:
        id: The group.
        scores: Importance of each channel (higher = keep); +inf is taken as larger than any finite score.
        counts: Allowed kept counts, ascending (aligned; the largest is where the allocation starts).
        value: How kept importance counts: "sum" (the sum of the kept channels' scores) or "log"
            (``W log(kept / W)``, W the group's whole importance: the same as "sum" for the first channels
            removed, then each further channel of a group is worth more the less of the group is left, so
            no layer is emptied to save time where a little of every layer would do). Defaults to "sum".
    """

    id: str
    scores: np.ndarray
    counts: np.ndarray
    value: str = "sum"

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.counts = np.unique(np.asarray(self.counts, dtype=np.int64))
        if not self.counts.size or self.counts[0] < 0 or self.counts[-1] > self.scores.size:
            raise ValueError(f"group {self.id!r}: allowed counts {self.counts.tolist()} do not fit its "
                             f"{self.scores.size} channels")
        if np.isnan(self.scores).any():
            raise ValueError(f"group {self.id!r}: importance scores contain NaN")
        if self.value not in VALUES:
            raise ValueError(f"group {self.id!r}: unknown value {self.value!r}; use one of {VALUES}")

    @property
    def size(self) -> int:
        return int(self.scores.size)

    def values(self) -> np.ndarray:
        """Importance kept at each allowed count: the sum of that many of the best scores (see ``value``)."""
        kept = kept_value(self.scores)
        if self.value == "sum":
            return kept[self.counts]
        whole = kept[-1]
        if whole <= 0:
            return np.zeros(self.counts.shape)
        return whole * np.log(np.maximum(kept[self.counts], 1e-12 * whole) / whole)


def kept_value(scores: np.ndarray) -> np.ndarray:
    """``out[k]`` = the sum of the ``k`` highest scores (k = 0..n); +inf counts as 10x the largest finite score."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    top = 10.0 * (float(np.abs(finite).max()) if finite.size else 1.0) + 1.0
    ordered = np.sort(np.where(np.isposinf(scores), top, scores))[::-1]
    return np.concatenate([[0.0], np.cumsum(ordered)])


@dataclass
class Allocation:
    """The kept count of every group, and what the tables predict for it.

    Attributes:
        kept: Group id -> kept channels.
        seconds: Predicted latency of the layers at ``kept``.
        dense_seconds: Predicted latency with every group at its largest count.
        least_seconds: Predicted latency with every group at its smallest count (the most pruning can give).
        budget: The budget asked for.
        value: Importance kept.
        feasible: Whether ``seconds <= budget``.
        stages: Knapsack stages run.
    """

    kept: dict[str, int]
    seconds: float
    dense_seconds: float
    least_seconds: float
    budget: float
    value: float
    feasible: bool
    stages: int = 0
    notes: list[str] = field(default_factory=list)


def network_seconds(layers: Sequence[LayerCost], kept: Mapping[str, int]) -> float:
    """Predicted latency of all ``layers`` at the kept counts."""
    return float(sum(float(layer.at(kept)) for layer in layers))


class _Problem:
    def __init__(self, groups: Sequence[GroupOptions], layers: Sequence[LayerCost]):
        self.groups = {g.id: g for g in groups}
        unknown = {name for layer in layers for name in layer.groups()} - set(self.groups)
        if unknown:
            raise ValueError(f"layers refer to groups that have no options: {sorted(unknown)}")
        self.layers = list(layers)
        self.touching = {gid: [layer for layer in layers if gid in layer.groups()] for gid in self.groups}
        self.values = {gid: g.values() for gid, g in self.groups.items()}

    def seconds(self, kept: Mapping[str, int]) -> float:
        return network_seconds(self.layers, kept)

    def option_seconds(self, gid: str, kept: Mapping[str, int], counts: np.ndarray | None = None) -> np.ndarray:
        """Latency of the layers touching ``gid`` for each of its counts, the other groups as in ``kept``."""
        counts = self.groups[gid].counts if counts is None else counts
        trial = dict(kept)
        trial[gid] = counts
        total = np.zeros(counts.shape, dtype=np.float64)
        for layer in self.touching[gid]:
            total = total + np.broadcast_to(np.asarray(layer.at(trial), dtype=np.float64), counts.shape)
        return total

    def value(self, kept: Mapping[str, int]) -> float:
        return float(sum(self.values[gid][self._index(gid, k)] for gid, k in kept.items()))

    def _index(self, gid: str, count: int) -> int:
        return int(np.searchsorted(self.groups[gid].counts, count))


def _knapsack(costs: list[np.ndarray], values: list[np.ndarray], capacity: float, resolution: int) -> list[int]:
    """Multiple-choice knapsack: one option per item, total cost <= capacity, most value.

    Costs are rounded up to ``capacity / resolution`` units, so the answer always fits. Returns
    the chosen option index of each item; ties go to the later option (the larger count).
    """
    unit = capacity / resolution if capacity > 0 else 1.0
    steps = resolution if capacity > 0 else 0
    dp = np.zeros(steps + 1)
    choices = []
    for cost, value in zip(costs, values):
        units = np.ceil(np.maximum(cost, 0.0) / unit - 1e-9).astype(np.int64) if capacity > 0 else \
            np.where(cost <= 0, 0, steps + 1)
        best = np.full(steps + 1, -np.inf)
        pick = np.full(steps + 1, -1, dtype=np.int64)
        for index in range(len(cost) - 1, -1, -1):
            need = int(units[index])
            if need > steps:
                continue
            candidate = np.full(steps + 1, -np.inf)
            candidate[need:] = dp[:steps + 1 - need] + value[index]
            better = candidate > best
            best = np.where(better, candidate, best)
            pick = np.where(better, index, pick)
        dp = best
        choices.append(pick)
    if not np.isfinite(dp[steps]):
        raise ValueError("no combination of options fits the capacity")
    chosen, remaining = [], steps
    for cost, pick in zip(reversed(costs), reversed(choices)):
        index = int(pick[remaining])
        chosen.append(index)
        if capacity > 0:
            remaining -= int(np.ceil(max(float(cost[index]), 0.0) / unit - 1e-9))
    return chosen[::-1]


def allocate(groups: Sequence[GroupOptions], layers: Sequence[LayerCost], budget: float, *, stages: int = 8,
             resolution: int = 2000) -> Allocation:
    """The kept count of every group that keeps the most importance with the layers' latency within ``budget``.

    Args:
        groups: Every prunable group with its scores and allowed counts.
        layers: Every layer whose latency depends on some group (layers on no group add a constant
            and can be left out; the budget is then for these layers only).
        budget: Latency the layers may take, in the tables' unit.
        stages: Knapsack stages from the dense latency down to the budget. Defaults to 8.
        resolution: Steps the budget of one knapsack is divided into. Defaults to 2000.

    Returns:
        The :class:`Allocation`; ``feasible`` is False when even the smallest counts exceed the
        budget (the allocation is then the smallest counts).
    """
    problem = _Problem(groups, layers)
    ids = list(problem.groups)
    largest = {gid: int(problem.groups[gid].counts[-1]) for gid in ids}
    smallest = {gid: int(problem.groups[gid].counts[0]) for gid in ids}
    dense, least = problem.seconds(largest), problem.seconds(smallest)

    def result(kept, feasible, ran, notes=()):
        seconds = problem.seconds(kept)
        return Allocation(dict(kept), seconds, dense, least, float(budget), problem.value(kept), feasible, ran,
                          list(notes))

    if dense <= budget:
        return result(largest, True, 0, ["the dense counts already meet the budget"])
    if least > budget:
        return result(smallest, False, 0, [f"even the smallest allowed counts take {least:.6g} s, over the "
                                           f"budget {budget:.6g} s"])
    kept = dict(largest)
    ran = 0
    for stage in range(1, stages + 1):
        target = dense - stage / stages * (dense - budget)
        kept = _stage(problem, ids, kept, target, resolution)
        ran += 1
    kept = _repair(problem, kept, budget)
    kept = _fill(problem, kept, budget)
    single = _single_move(problem, largest, budget)
    if single is not None and problem.value(single) > problem.value(kept) + 1e-12 * max(1.0, abs(problem.value(kept))):
        kept = single  # the budget is close to dense: one group cut alone loses less than the staged answer
    return result(kept, problem.seconds(kept) <= budget * (1 + 1e-9), ran)


def _single_move(problem: _Problem, largest: dict[str, int], budget: float) -> dict[str, int] | None:
    """The dense counts with one group cut, as little as meets ``budget``, losing the least importance;
    None when no one group reaches it. (Near dense, the staged knapsack's rounded costs can make it cut
    more than a budget this close needs, and growing back one step at a time cannot undo a coarse cut.)"""
    best, best_lost = None, None
    for gid, count, lost, saved in _moves(problem, largest, down=True):
        kept = {**largest, gid: count}
        if saved > 0 and problem.seconds(kept) <= budget and (best_lost is None or lost < best_lost):
            best, best_lost = kept, lost
    return best


def _stage(problem: _Problem, ids: list[str], kept: dict[str, int], target: float, resolution: int) -> dict[str, int]:
    """One knapsack on the latency linearised at ``kept``: each group priced with the others held."""
    now = problem.seconds(kept)
    own = {gid: problem.option_seconds(gid, kept) for gid in ids}
    current = {gid: float(own[gid][problem._index(gid, kept[gid])]) for gid in ids}
    floor = {gid: float(own[gid].min()) for gid in ids}
    constant = now - sum(current.values()) + sum(floor.values())
    capacity = target - constant
    if capacity < 0:
        return {gid: int(problem.groups[gid].counts[int(np.argmin(own[gid]))]) for gid in ids}
    costs = [own[gid] - floor[gid] for gid in ids]
    chosen = _knapsack(costs, [problem.values[gid] for gid in ids], capacity, resolution)
    return {gid: int(problem.groups[gid].counts[index]) for gid, index in zip(ids, chosen)}


def _moves(problem: _Problem, kept: dict[str, int], down: bool):
    """Every change of one group's count (down: to any smaller allowed count; up: to the next larger)
    with (importance lost or gained, seconds saved or added)."""
    now_value = problem.values
    for gid, group in problem.groups.items():
        index = problem._index(gid, kept[gid])
        options = np.arange(index) if down else np.arange(index + 1, min(index + 2, group.counts.size))
        if not options.size:
            continue
        seconds = problem.option_seconds(gid, kept, group.counts[options])
        here = float(problem.option_seconds(gid, kept, group.counts[[index]])[0])
        for option, option_seconds in zip(options, seconds):
            yield gid, int(group.counts[option]), abs(now_value[gid][index] - now_value[gid][option]), \
                here - float(option_seconds)


def _repair(problem: _Problem, kept: dict[str, int], budget: float) -> dict[str, int]:
    """Remove, one move at a time, what loses the least importance per second saved, until within budget."""
    kept = dict(kept)
    while problem.seconds(kept) > budget:
        over = problem.seconds(kept) - budget
        cheapest, reaching = None, None  # (key, move): best loss per second; least loss among moves that suffice
        for gid, count, lost, saved in _moves(problem, kept, down=True):
            if saved <= 0:
                continue
            if cheapest is None or (lost / saved, -saved) < cheapest[0]:
                cheapest = ((lost / saved, -saved), (gid, count, lost))
            if saved >= over and (reaching is None or (lost, -saved) < reaching[0]):
                reaching = ((lost, -saved), (gid, count, lost))
        if cheapest is None:
            break  # nothing left to remove that saves time
        # one move that reaches the budget beats a first step that loses more than it does
        gid, count, _ = reaching[1] if reaching is not None and reaching[1][2] <= cheapest[1][2] else cheapest[1]
        kept[gid] = count
    return kept


def _fill(problem: _Problem, kept: dict[str, int], budget: float) -> dict[str, int]:
    """Spend what is left of the budget: grow, one step at a time, what adds the most importance per second."""
    kept = dict(kept)
    while True:
        now = problem.seconds(kept)
        best, best_key = None, None
        for gid, count, gained, saved in _moves(problem, kept, down=False):
            added = -saved
            if now + added > budget or gained <= 0:
                continue
            key = gained / added if added > 0 else np.inf
            if best_key is None or key > best_key:
                best, best_key = (gid, count), key
        if best is None:
            return kept
        kept[best[0]] = best[1]

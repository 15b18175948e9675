"""The latency-aware allocator on small hand-made tables (no timing anywhere)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sparsecc.latency.allocate import GroupOptions, LayerCost, Term, allocate, kept_value, network_seconds


def linear(per_channel: float, base: float = 0.0):
    """A one-sided table: ``base + per_channel * c`` of the group's side (the other side is fixed)."""
    return lambda c_in, c_out: base + per_channel * np.asarray(c_out, dtype=np.float64)


def steps_of(step: int, per_step: float):
    """Latency that only grows at multiples of ``step`` (a kernel that pads channels up to it)."""
    return lambda c_in, c_out: per_step * np.ceil(np.asarray(c_out, dtype=np.float64) / step)


def one_layer(gid: str, seconds) -> LayerCost:
    return LayerCost(f"conv-{gid}", seconds, inputs=(), outputs=(Term(gid),), fixed_in=3)


def brute_force(groups, layers, budget):
    best = None
    for combo in itertools.product(*[g.counts for g in groups]):
        kept = {g.id: int(k) for g, k in zip(groups, combo)}
        if network_seconds(layers, kept) <= budget + 1e-12:
            value = sum(kept_value(g.scores)[kept[g.id]] for g in groups)
            if best is None or value > best[0] + 1e-12:
                best = (value, kept)
    return best


def test_kept_value_sums_the_best_scores_and_ranks_inf_first():
    values = kept_value(np.array([1.0, 5.0, np.inf, 2.0]))
    assert values[0] == 0.0
    assert values[1] == 51.0  # +inf counts as 10 x the largest finite score + 1
    assert values[2] == 56.0 and values[4] == 59.0


def test_removes_where_a_second_costs_least_importance():
    # same importance per channel; group "slow" saves 3x the time per channel removed
    groups = [GroupOptions("slow", np.ones(16), np.arange(4, 17, 4)),
              GroupOptions("fast", np.ones(16), np.arange(4, 17, 4))]
    layers = [one_layer("slow", linear(3.0)), one_layer("fast", linear(1.0))]
    dense = network_seconds(layers, {"slow": 16, "fast": 16})
    result = allocate(groups, layers, budget=dense - 24.0)
    assert result.feasible
    assert result.kept == {"slow": 8, "fast": 16}  # 8 slow channels save 24 s and lose 8 of importance


def test_keeps_important_channels_even_where_they_are_slow():
    # the slow group's channels are 10x more important: removing them costs more per second saved
    groups = [GroupOptions("slow", np.full(16, 10.0), np.arange(4, 17, 4)),
              GroupOptions("fast", np.ones(16), np.arange(4, 17, 4))]
    layers = [one_layer("slow", linear(3.0)), one_layer("fast", linear(1.0))]
    result = allocate(groups, layers, budget=network_seconds(layers, {"slow": 16, "fast": 16}) - 8.0)
    assert result.kept == {"slow": 16, "fast": 8}


def test_a_kernel_that_pads_to_16_gets_multiples_of_16_even_when_8_are_allowed():
    # the allowed counts are multiples of 8 (alignment), but the table only drops at multiples of 16:
    # keeping 24 costs what 32 costs, so the knapsack keeps 32 (more importance for the same time)
    scores = np.linspace(1.0, 2.0, 64)
    groups = [GroupOptions("a", scores, np.arange(8, 65, 8)), GroupOptions("b", scores[::-1], np.arange(8, 65, 8))]
    layers = [one_layer("a", steps_of(16, 5.0)), one_layer("b", linear(1.0))]
    dense = network_seconds(layers, {"a": 64, "b": 64})
    result = allocate(groups, layers, budget=dense - 20.0)
    assert result.feasible and result.seconds <= dense - 20.0
    assert result.kept["a"] % 16 == 0
    assert result.kept == brute_force(groups, layers, dense - 20.0)[1]


def test_only_allowed_counts_are_chosen():
    rng = np.random.default_rng(3)
    groups = [GroupOptions(f"g{i}", rng.random(48), np.arange(16, 49, 16)) for i in range(4)]
    layers = [one_layer(g.id, linear(float(rng.integers(1, 5)))) for g in groups]
    result = allocate(groups, layers, budget=0.6 * network_seconds(layers, {g.id: 48 for g in groups}))
    for group in groups:
        assert result.kept[group.id] in group.counts.tolist()


@pytest.mark.parametrize("seed", range(8))
def test_independent_groups_match_the_exact_knapsack(seed):
    # integer costs and a budget that is a whole number of resolution steps: the staged knapsack must
    # find the brute-force optimum exactly
    rng = np.random.default_rng(seed)
    groups, layers = [], []
    for index in range(4):
        size = int(rng.choice([8, 12, 16]))
        groups.append(GroupOptions(f"g{index}", rng.random(size) * rng.choice([1, 5]), np.arange(4, size + 1, 4)))
        layers.append(one_layer(f"g{index}", linear(float(rng.integers(1, 6)))))
    dense = network_seconds(layers, {g.id: g.size for g in groups})
    budget = float(np.floor(dense * rng.uniform(0.45, 0.8)))
    result = allocate(groups, layers, budget, resolution=int(budget))
    expected = brute_force(groups, layers, budget)
    assert result.feasible
    assert result.value == pytest.approx(expected[0])


def test_coupled_layer_prices_both_of_its_groups():
    # a layer between groups "a" and "b" costs c_in * c_out; "a" also feeds a cheap layer, "c" only a cheap one.
    # Removing from a or b shrinks the product layer; c saves little. The allocator must account for the
    # product layer on both sides and stay within the budget measured on the true (non-linear) tables.
    product = LayerCost("a->b", lambda c_in, c_out: 0.01 * np.asarray(c_in) * np.asarray(c_out),
                        inputs=(Term("a"),), outputs=(Term("b"),))
    reader = LayerCost("b->out", lambda c_in, c_out: 0.1 * np.asarray(c_in), inputs=(Term("b"),), fixed_out=10)
    layers = [one_layer("a", linear(0.1)), product, reader, one_layer("c", linear(0.1))]
    groups = [GroupOptions(g, np.ones(32), np.arange(8, 33, 8)) for g in ("a", "b", "c")]
    dense = network_seconds(layers, {"a": 32, "b": 32, "c": 32})
    budget = 0.55 * dense
    result = allocate(groups, layers, budget)
    assert result.feasible and result.seconds <= budget
    assert result.kept["c"] == 32  # removing from c saves 0.1 s a channel, from a or b up to 0.42 s
    best = brute_force(groups, layers, budget)
    assert result.value == pytest.approx(best[0])


def test_a_budget_below_the_smallest_counts_is_reported_infeasible():
    groups = [GroupOptions("a", np.ones(16), [8, 16])]
    layers = [one_layer("a", linear(1.0, base=100.0))]
    result = allocate(groups, layers, budget=50.0)
    assert not result.feasible
    assert result.kept == {"a": 8} and result.least_seconds == pytest.approx(108.0)
    assert "smallest" in result.notes[0]


def test_a_budget_above_dense_keeps_everything():
    groups = [GroupOptions("a", np.ones(16), [8, 16])]
    result = allocate(groups, [one_layer("a", linear(1.0))], budget=100.0)
    assert result.kept == {"a": 16} and result.feasible and result.stages == 0


def test_options_must_fit_the_group():
    with pytest.raises(ValueError, match="do not fit"):
        GroupOptions("a", np.ones(8), [4, 16])
    with pytest.raises(ValueError, match="NaN"):
        GroupOptions("a", np.array([1.0, np.nan]), [1, 2])
    with pytest.raises(ValueError, match="no options"):
        allocate([GroupOptions("a", np.ones(8), [8])], [one_layer("b", linear(1.0))], 1.0)


def test_log_value_spreads_the_cut_where_sum_empties_the_slowest_group():
    # "slow" saves twice the time per channel; with importance summed, the whole cut comes from it (down to its
    # floor); with diminishing returns (log), the last channels of a shrinking group are worth more, so the
    # other group gives some too
    def groups(value):
        return [GroupOptions("slow", np.ones(32), np.arange(4, 33, 4), value),
                GroupOptions("fast", np.ones(32), np.arange(4, 33, 4), value)]
    layers = [one_layer("slow", linear(2.0)), one_layer("fast", linear(1.0))]
    budget = network_seconds(layers, {"slow": 32, "fast": 32}) - 48.0
    summed = allocate(groups("sum"), layers, budget)
    assert summed.kept == {"slow": 8, "fast": 32}
    logged = allocate(groups("log"), layers, budget)
    assert logged.feasible and logged.kept["fast"] < 32 and logged.kept["slow"] > 8


def test_log_value_at_the_first_channel_removed_matches_the_score():
    group = GroupOptions("g", np.array([4.0, 3.0, 2.0, 1.0]), [3, 4], "log")
    values = group.values()
    assert values[1] == pytest.approx(0.0)
    assert values[0] == pytest.approx(10.0 * np.log(9.0 / 10.0))  # about -1: what the removed channel scored
    with pytest.raises(ValueError, match="unknown value"):
        GroupOptions("g", np.ones(4), [4], "max")


def chain_of_groups(rng, sizes):
    """Groups in a chain of layers (each layer reads the group before it), random scores and per-MAC times."""
    groups = [GroupOptions(f"g{i}", rng.random(size) + 0.1, np.arange(8, size + 1, 8), "log")
              for i, size in enumerate(sizes)]
    layers = []
    for i in range(len(sizes)):
        per = float(rng.random() * 3 + 0.1)
        layers.append(LayerCost(f"l{i}", lambda c_in, c_out, per=per: per * np.asarray(c_in, float) * c_out,
                                inputs=(Term(f"g{i - 1}"),) if i else (), outputs=(Term(f"g{i}"),),
                                fixed_in=0 if i else 3))
    return groups, layers


def test_a_budget_near_dense_loses_no_more_than_the_cheapest_single_cut():
    """Close to the dense latency, the answer is never worse than cutting one group alone, as little as
    meets the budget (what a small target asks for), whatever the staged knapsack's rounding did."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        groups, layers = chain_of_groups(rng, [int(rng.choice([16, 32, 64])) for _ in range(int(rng.integers(2, 5)))])
        dense_kept = {g.id: g.size for g in groups}
        values = {g.id: dict(zip(g.counts.tolist(), g.values())) for g in groups}
        budget = network_seconds(layers, dense_kept) / float(1 + rng.random() * 0.05)
        single = [sum(values[h.id][kept[h.id]] for h in groups)
                  for g in groups for count in g.counts[:-1].tolist()
                  for kept in [{**dense_kept, g.id: count}] if network_seconds(layers, kept) <= budget]
        result = allocate(groups, layers, budget)
        assert result.feasible
        if single:
            assert result.value >= max(single) - 1e-9, (result.kept, result.value, max(single))

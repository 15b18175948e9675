"""The hybrid filter + 2:4 paper's metrics (Eqs. 2-9), each against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sparsecc.errors import OptionError
from sparsecc.sparsity.filter_metrics import (METRICS, NEUTRAL, dominant_ratio, filter_scores,
                                              filter_scores_by_group, group_magnitudes, hybrid1, hybrid2, input_l1,
                                              l1, l2, normalize_by_mean, output_l1, preservation, rank_global,
                                              rank_per_layer, rank_transform, remanent_l1)
from sparsecc.sparsity.two_four import two_four_mask

# Producer: 2 filters, C_in = 4, 1x2 kernel -> weight [2, 4, 1, 2].
# Input-channel groups: for each (r, s) the 4 input channels.
#   filter 0, s=0: channels (1, -2, 3, 0)    -> w = 6,  w' = 3+2 = 5
#   filter 0, s=1: channels (4, 0, 0, -1)    -> w = 5,  w' = 4+1 = 5
#   filter 1, s=0: channels (1, 1, 1, 1)     -> w = 4,  w' = 2
#   filter 1, s=1: channels (2, -2, 0.5, 0.5)-> w = 5,  w' = 4
# Kernel-width groups (memory order c, r, s: pairs (s0, s1) per channel):
#   filter 0: (1, 4, -2, 0) w=7 w'=6 ; (3, 0, 0, -1) w=4 w'=4
#   filter 1: (1, 2, 1, -2) w=6 w'=4 ; (1, 0.5, 1, 0.5) w=3 w'=2
PRODUCER = np.array([
    [[[1, 4]], [[-2, 0]], [[3, 0]], [[0, -1]]],
    [[[1, 2]], [[1, -2]], [[1, 0.5]], [[1, 0.5]]],
], dtype=np.float32)

# Consumer reading the 2 channels: [K_out=2, C=2, 1, 1]
CONSUMER = np.array([[[[1.0]], [[-3.0]]], [[[2.0]], [[1.0]]]], dtype=np.float32)


def test_group_magnitudes_input_channel_layout():
    total, kept = group_magnitudes([PRODUCER])
    np.testing.assert_allclose(total, [[6, 5], [4, 5]])
    np.testing.assert_allclose(kept, [[5, 5], [2, 4]])


def test_group_magnitudes_kernel_width_layout():
    total, kept = group_magnitudes([PRODUCER], layout="kernel-width")
    np.testing.assert_allclose(total, [[7, 4], [6, 3]])
    np.testing.assert_allclose(kept, [[6, 4], [4, 2]])


def test_l1_l2_and_input_l1_eq2():
    np.testing.assert_allclose(l1([PRODUCER]), [11, 9])
    np.testing.assert_allclose(l2([PRODUCER]), [np.sqrt(1 + 16 + 4 + 9 + 1),
                                                np.sqrt(1 + 4 + 1 + 4 + 1 + 0.25 + 1 + 0.25)])
    # Eq. 2: ||F|| / (c s^2) with c s^2 = 4 * 2 = 8 weights per filter
    np.testing.assert_allclose(input_l1([PRODUCER]), [11 / 8, 9 / 8])


def test_output_l1_eq3():
    # channel 0 read by (1, 2), channel 1 by (-3, 1); c_{l+2} s^2 = 2 * 1
    np.testing.assert_allclose(output_l1([CONSUMER]), [3 / 2, 4 / 2])


def test_output_l1_averages_over_all_consumers():
    second = np.array([[[[4.0]], [[0.0]]]], dtype=np.float32)  # one more output reading the channels
    np.testing.assert_allclose(output_l1([CONSUMER, second]), [7 / 3, 4 / 3])


def test_remanent_l1_eq4():
    np.testing.assert_allclose(remanent_l1([PRODUCER]), [10, 6])
    np.testing.assert_allclose(remanent_l1([PRODUCER], layout="kernel-width"), [10, 6])


def test_dominant_ratio_eq5():
    # filter 0: 11 / (1 + 0) ; filter 1: 9 / (2 + 1)
    np.testing.assert_allclose(dominant_ratio([PRODUCER]), [11.0, 3.0])


def test_dominant_ratio_is_infinite_when_nothing_is_pruned():
    exact = np.zeros((1, 4, 1, 1), np.float32)
    exact[0, :2] = 1.0
    assert dominant_ratio([exact])[0] == np.inf


def test_preservation_eqs6_7_harmonic_mean():
    # filter 0: alphas 5/6, 1 -> 2 / (6/5 + 1) = 10/11 ; filter 1: alphas 1/2, 4/5 -> 2 / (2 + 5/4) = 8/13
    np.testing.assert_allclose(preservation([PRODUCER]), [10 / 11, 8 / 13])


def test_preservation_counts_all_zero_groups_as_kept():
    weight = np.zeros((1, 4, 1, 2), np.float32)
    weight[0, :, 0, 0] = [1, 1, 1, 1]  # alpha 1/2; the other group is all zero (alpha 1)
    np.testing.assert_allclose(preservation([weight]), [2 / (2 + 1)])


def test_short_rows_are_not_pruned():
    depthwise = np.array([[[[1.0, 2.0, 3.0]]]], np.float32)  # [1, 1, 1, 3]: C_in = 1, never 2:4
    # 2:4 touches none of this group's weights: the 2:4 metrics are neutral (the same for every live filter)
    np.testing.assert_allclose(preservation([depthwise]), [NEUTRAL])
    np.testing.assert_allclose(remanent_l1([depthwise]), [NEUTRAL])
    np.testing.assert_allclose(dominant_ratio([depthwise]), [NEUTRAL])


def test_two_four_metrics_see_only_the_rows_two_four_prunes():
    # a depthwise producer in the group (rows of length 1) must not pull preservation towards 1
    depthwise = np.array([[[[1.0, 2.0]]], [[[3.0, 0.5]]]], np.float32)  # [2, 1, 1, 2]
    for metric in (preservation, remanent_l1, dominant_ratio):
        np.testing.assert_allclose(metric([PRODUCER, depthwise]), metric([PRODUCER]))
    np.testing.assert_allclose(preservation([PRODUCER, depthwise]), [10 / 11, 8 / 13])
    # explicit flags (plan-24's eligibility) override the length rule: a kernel-width depthwise
    # [2, 1, 2, 2] has rows of 4, but TensorRT never runs depthwise convs sparse
    depthwise4 = np.ones((2, 1, 2, 2), np.float32)
    assert group_magnitudes([PRODUCER, depthwise4], layout="kernel-width")[0].shape == (2, 3)
    np.testing.assert_allclose(preservation([PRODUCER, depthwise4], layout="kernel-width", prunable=[True, False]),
                               preservation([PRODUCER], layout="kernel-width"))
    with pytest.raises(ValueError, match="flag"):
        preservation([PRODUCER], prunable=[True, False])


def test_dead_filter_scores_zero_under_every_metric():
    producer = PRODUCER.copy()
    producer[1] = 0.0  # filter 1 is dead: it carries nothing
    for name in METRICS:
        scores = filter_scores(name, [producer], [CONSUMER])
        assert scores[1] == 0.0 and scores[0] > 0, name
    assert dominant_ratio([producer])[1] == 0.0  # not +inf: 2:4 prunes nothing from it, but it holds nothing
    assert preservation([producer])[1] == 0.0


def test_dead_filter_is_removed_first_in_a_normalised_global_ranking():
    # before the fix the dead filter scored +inf, mean normalisation turned its group into NaN,
    # and the global ranking kept it while removing live filters
    producer = np.concatenate([PRODUCER, np.zeros((1, 4, 1, 2), np.float32)])
    groups = {"a": ([producer], [np.ones((2, 3, 1, 1), np.float32)]), "b": ([PRODUCER * 3], [CONSUMER])}
    scores = filter_scores_by_group("dominant-ratio", groups)
    normalised = {gid: normalize_by_mean(s) for gid, s in scores.items()}
    assert not any(np.isnan(s).any() for s in normalised.values())
    removed = rank_global(normalised, 0.2, multiple=None)  # 1 of 5
    np.testing.assert_array_equal(removed["a"], [2])
    assert removed["b"].size == 0


def test_already_two_four_group_is_finite_or_inf_never_nan():
    # 24-then-filter: every weight is already 2:4 when filters are scored
    sparse = np.where(two_four_mask(PRODUCER, "Conv"), PRODUCER, 0)
    np.testing.assert_array_equal(dominant_ratio([sparse]), [np.inf, np.inf])
    np.testing.assert_allclose(preservation([sparse]), [1.0, 1.0])
    np.testing.assert_allclose(remanent_l1([sparse]), l1([sparse]))
    scores = filter_scores_by_group("dominant-ratio", {"sparse": ([sparse], [CONSUMER]),
                                                       "dense": ([PRODUCER], [CONSUMER])})
    normalised = {gid: normalize_by_mean(s) for gid, s in scores.items()}
    np.testing.assert_array_equal(normalised["sparse"], [np.inf, np.inf])
    np.testing.assert_allclose(normalised["dense"], np.array([11.0, 3.0]) / 7.0)
    removed = rank_global(normalised, 0.25, multiple=None)
    assert removed["sparse"].size == 0
    np.testing.assert_array_equal(removed["dense"], [1])


def test_normalize_by_mean_uses_the_finite_mean():
    np.testing.assert_allclose(normalize_by_mean(np.array([0.0, 2.0, 7.0])), [0.0, 2 / 3, 7 / 3])
    np.testing.assert_array_equal(normalize_by_mean(np.array([0.0, np.inf, 2.0])), [0.0, np.inf, 2.0])
    np.testing.assert_array_equal(normalize_by_mean(np.array([np.inf, np.inf])), [np.inf, np.inf])
    np.testing.assert_array_equal(normalize_by_mean(np.zeros(3)), np.zeros(3))


def test_group_two_four_does_not_touch_is_neutral_in_a_global_hybrid_ranking():
    # "first": a first conv with C_in = 3 (never 2:4); "c3": a 2:4-prunable layer. Before the fix
    # every filter of "first" had preservation 1 and a global ranking on preservation emptied "c3".
    rng = np.random.default_rng(0)
    first = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    c3 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    reader = np.ones((4, 8, 1, 1), np.float32)  # equal output L1 everywhere: preservation decides
    groups = {"first": ([first], [reader]), "c3": ([c3], [reader])}
    for metric in ("preservation", "hybrid1", "hybrid2"):
        scores = filter_scores_by_group(metric, groups, k=1.0)
        assert np.unique(scores["first"]).size == 1, metric  # neutral: no order among its filters
        below = np.count_nonzero(scores["c3"] < scores["first"][0])
        assert below == 4, metric  # the median of the prunable channels: half of them rank below
        removed = rank_global(scores, 0.5, multiple=None)
        assert 0 < removed["c3"].size < 8, metric
    v = preservation([c3])
    np.testing.assert_allclose(filter_scores_by_group("preservation", groups)["first"], np.median(v))
    # explicit flags: the same "c3" weight, declared not prunable, is neutral too
    flagged = filter_scores_by_group("preservation", {"first": ([c3], [reader], [False]), "c3": ([c3], [reader])})
    np.testing.assert_allclose(flagged["first"], np.median(v))


def test_rank_transform_ascending_with_average_ties():
    np.testing.assert_allclose(rank_transform([0.3, 0.1, 0.2]), [3, 1, 2])
    np.testing.assert_allclose(rank_transform([5.0, 1.0, 5.0]), [2.5, 1, 2.5])


def test_hybrid1_eq8_on_ranks():
    u = np.array([0.5, 0.1, 0.9])   # ranks 2, 1, 3
    v = np.array([0.6, 0.9, 0.7])   # ranks 1, 3, 2
    np.testing.assert_allclose(hybrid1(u, v, k=0.25), [0.75 * 2 + 0.25 * 1, 0.75 * 1 + 0.25 * 3,
                                                        0.75 * 3 + 0.25 * 2])


def test_hybrid2_eqs8_9_squared_distance_to_minimum():
    u = np.array([2.0, 1.0, 4.0])   # (u - 1)^2 = 1, 0, 9
    v = np.array([0.6, 0.9, 0.7])
    np.testing.assert_allclose(hybrid2(u, v, k=0.5, normalize_u=False), [0.5 * 1 + 0.3, 0.0 + 0.45, 0.5 * 9 + 0.35])
    # normalised: u' = u / mean(u) = (6/7, 3/7, 12/7); (u' - 3/7)^2 = (9/49, 0, 81/49)
    np.testing.assert_allclose(hybrid2(u, v, k=0.5), [0.5 * 9 / 49 + 0.3, 0.45, 0.5 * 81 / 49 + 0.35])


def test_hybrid2_lets_output_l1_dominate_at_realistic_weight_scales():
    u = np.array([0.010, 0.012, 0.020, 0.030])  # average |w|, as Eq. 3 gives for trained weights
    v = np.array([0.95, 0.90, 0.60, 0.55])      # preservation prefers the low-u filters
    assert np.argsort(hybrid2(u, v, normalize_u=False))[-1] == 0  # literal: v decides alone
    assert np.argsort(hybrid2(u, v))[-1] == 3                     # normalised: u leads, as in the paper


def test_filter_scores_dispatches_every_metric():
    assert set(METRICS) == {"l1", "l2", "input-l1", "output-l1", "remanent-l1", "dominant-ratio",
                            "preservation", "hybrid1", "hybrid2"}
    # u = output-l1 = (1.5, 2.0): ranks (1, 2); v = preservation = (10/11, 8/13): ranks (2, 1)
    np.testing.assert_allclose(filter_scores("hybrid1", [PRODUCER], [CONSUMER], k=0.5), [1.5, 1.5])
    # u' = (1.5, 2.0) / 1.75 -> (u' - min)^2 = (0, (0.5 / 1.75)^2)
    np.testing.assert_allclose(filter_scores("hybrid2", [PRODUCER], [CONSUMER], k=0.5),
                               [0.5 * 10 / 11, 0.5 * (0.5 / 1.75) ** 2 + 0.5 * 8 / 13])
    bias = np.array([5.0, -5.0], np.float32)  # 1-D producers carry no filter weights
    np.testing.assert_allclose(filter_scores("input-l1", [PRODUCER, bias], []), [11 / 8, 9 / 8])
    for name in METRICS:
        assert filter_scores(name, [PRODUCER], [CONSUMER]).shape == (2,)


def test_filter_scores_rejects_unknown_metric_layout_and_k():
    with pytest.raises(OptionError, match="unknown filter metric"):
        filter_scores("entropy", [PRODUCER], [CONSUMER])
    with pytest.raises(OptionError, match="layout"):
        filter_scores("preservation", [PRODUCER], [CONSUMER], layout="rows")
    with pytest.raises(OptionError, match="outside"):
        filter_scores("hybrid1", [PRODUCER], [CONSUMER], k=1.5)


def test_global_hybrid_ranks_span_all_groups():
    wide = CONSUMER.copy()
    wide[:, 1] *= 3  # group b: output-l1 (1.5, 6.0) where group a has (1.5, 2.0)
    groups = {"a": ([PRODUCER], [CONSUMER]), "b": ([PRODUCER * 2], [wide])}
    scores = filter_scores_by_group("hybrid1", groups, k=0.0)
    # k = 0: ranks of output-l1, each group divided by its mean first:
    # a (1.5, 2.0) / 1.75 = (0.857, 1.143); b (1.5, 6.0) / 3.75 = (0.4, 1.6) -> ranks over all four
    np.testing.assert_allclose(scores["a"], [2, 3])
    np.testing.assert_allclose(scores["b"], [1, 4])
    per_layer = filter_scores_by_group("hybrid1", groups, k=0.0, scope="per-layer")
    np.testing.assert_allclose(per_layer["b"], [1, 2])


def test_rank_global_removes_lowest_across_groups():
    scores = {"conv1": np.array([0.1, 0.9, 0.5, 0.8]), "conv2": np.array([0.2, 0.3, 0.7, 0.6])}
    removed = rank_global(scores, 0.25, multiple=None)   # 2 of 8: 0.1 and 0.2
    np.testing.assert_array_equal(removed["conv1"], [0])
    np.testing.assert_array_equal(removed["conv2"], [0])


def test_rank_global_refuses_to_empty_a_layer():
    scores = {"conv1": np.array([0.1, 0.2]), "conv2": np.array([0.7, 0.8, 0.9, 0.95])}
    with pytest.raises(OptionError, match="conv1"):
        rank_global(scores, 0.34, multiple=None)


def test_rank_global_aligns_before_refusing():
    # every channel of "conv1" is below the global threshold, but alignment keeps a group no
    # larger than one multiple whole, so there is nothing to refuse
    scores = {"conv1": np.array([0.1, 0.2]), "conv2": np.array([0.7, 0.8, 0.9, 0.95])}
    removed = rank_global(scores, 0.34, multiple=8)
    assert removed["conv1"].size == 0 and removed["conv2"].size == 0
    # a 16-channel group entirely below the threshold keeps one multiple (its 8 best)
    c3 = np.arange(16, dtype=float)
    removed = rank_global({"c3": c3, "other": 100 + np.arange(24, dtype=float)}, 0.4, multiple=8)
    np.testing.assert_array_equal(removed["c3"], np.arange(8))
    assert removed["other"].size == 0


def test_rank_refuses_nan_scores():
    with pytest.raises(ValueError, match="conv1"):
        rank_global({"conv1": np.array([0.1, np.nan])}, 0.5, multiple=None)
    with pytest.raises(ValueError, match="conv1"):
        rank_per_layer({"conv1": np.array([0.1, np.nan])}, 0.5, multiple=None)


def test_rank_per_layer_and_alignment():
    scores = {"wide": np.arange(32, dtype=float), "narrow": np.arange(6, dtype=float)}
    removed = rank_per_layer(scores, 0.4, multiple=8)
    # wide: keep 32 - 13 = 19 -> nearest multiple of 8 is 16 -> remove the 16 lowest
    np.testing.assert_array_equal(removed["wide"], np.arange(16))
    # narrow: no larger than one multiple, left whole
    assert removed["narrow"].size == 0
    unaligned = rank_per_layer(scores, 0.5, multiple=None)
    np.testing.assert_array_equal(unaligned["narrow"], [0, 1, 2])
    with pytest.raises(OptionError, match="narrow"):
        rank_per_layer({"narrow": np.arange(2.0)}, 0.9, multiple=None)
    # aligned first: a group no larger than one multiple is kept whole rather than refused
    assert rank_per_layer({"narrow": np.arange(2.0)}, 0.9)["narrow"].size == 0
    with pytest.raises(OptionError, match="outside"):
        rank_per_layer(scores, 1.0)


def test_global_hybrid_ranking_compares_output_l1_within_each_layer_scale():
    """A group read by small weights (a classifier) must not be emptied by a global hybrid ranking."""
    from sparsecc.sparsity.filter_metrics import filter_scores_by_group, rank_global

    rng = np.random.default_rng(0)
    producers = [rng.standard_normal((8, 8, 1, 1)).astype(np.float32) for _ in range(2)]
    loud = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)           # a conv reading group a
    quiet = 0.01 * rng.standard_normal((10, 8)).astype(np.float32)[:, :, None, None]  # a small fc reading b
    scores = filter_scores_by_group("hybrid2", {"a": ([producers[0]], [loud]), "b": ([producers[1]], [quiet])})
    removed = rank_global(scores, 0.5, multiple=None)
    assert 2 <= len(removed.get("b", [])) <= 6  # both layers lose some filters; neither is emptied

"""Group-wise scores and masks (pure numpy), checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from sparsecc.errors import OptionError, PlanError
from sparsecc.model import Model
from sparsecc.plan import SparsityPlan, WeightPlan
from sparsecc.sparsity.groupwise import (aligned_count, global_groupwise_masks, group_scores, groupwise_mask,
                                         groupwise_result)

# Gemm weight W[K=4, N=2]: rows are the groups (input features)
W_KN = np.array([[1.0, -1.0],    # l1 2, l2 1.414, mean 1
                 [0.0, 0.0],     # all zero
                 [3.0, 0.0],     # l1 3, l2 3, mean 1.5
                 [-1.0, 2.0]],   # l1 3, l2 2.236, mean 1.5
                dtype=np.float32)


def test_gemm_scores_by_criterion():
    np.testing.assert_allclose(group_scores(W_KN, "gemm", criterion="l1"), [[2, 0, 3, 3]])
    np.testing.assert_allclose(group_scores(W_KN, "gemm", criterion="l2"), [[np.sqrt(2), 0, 3, np.sqrt(5)]])
    np.testing.assert_allclose(group_scores(W_KN, "gemm", criterion="mean"), [[1, 0, 1.5, 1.5]])
    np.testing.assert_allclose(group_scores(W_KN, "gemm", criterion="zeros"), [[1, 0, 1, 1]])
    # transB=1 stores the same weight as [N, K]
    np.testing.assert_allclose(group_scores(W_KN.T, "gemm", criterion="l1", trans_b=True), [[2, 0, 3, 3]])
    np.testing.assert_allclose(group_scores(W_KN, "matmul", criterion="l1", normalized=True), [[1, 0, 1.5, 1.5]])


def test_gemm_masks_keep_the_best_rows():
    # l1: rows 2 and 3 tie at 3 and are the best half
    assert groupwise_mask(W_KN, "gemm", keep=0.5, criterion="l1").tolist() == [[False, False], [False, False],
                                                                             [True, True], [True, True]]
    # l2: 3 > 2.236 > 1.414 -> keep 3 of 4 = rows 0, 2, 3
    mask = groupwise_mask(W_KN, "gemm", keep=0.75, criterion="l2")
    assert mask[:, 0].tolist() == [True, False, True, True]
    # zeros: keep exactly the non-zero rows, whatever keep says
    assert groupwise_mask(W_KN, "gemm", criterion="zeros")[:, 1].tolist() == [True, False, True, True]
    mask_t = groupwise_mask(W_KN.T, "gemm", keep=0.25, criterion="l1", trans_b=True)
    assert mask_t.shape == (2, 4) and mask_t[0].tolist() == [False, False, True, False]  # tie: earlier row wins


def test_threshold_rule_is_score_above_layer_threshold():
    result = groupwise_result(W_KN, "gemm", keep=0.5, criterion="mean")
    # DST rule: kept iff score > t; t is the best pruned score (row 0: mean 1.0)
    assert result.threshold == [1.0]
    scores = result.scores[0]
    assert (scores > result.threshold[0]).tolist() == result.kept_rows[0].tolist()
    assert result.kept_groups == 2 and result.total_groups == 4


def test_conv_groups_are_im2col_rows():
    weight = np.zeros((2, 2, 1, 2), np.float32)  # C_out 2, C_in 2, kernel 1x2 -> 4 rows of length 2
    weight[:, 0, 0, 0] = [1.0, 1.0]    # row (c0, 0, 0): l1 2
    weight[:, 0, 0, 1] = [0.5, 0.0]    # row (c0, 0, 1): l1 0.5
    weight[:, 1, 0, 0] = [-4.0, 0.0]   # row (c1, 0, 0): l1 4
    weight[:, 1, 0, 1] = [0.0, -1.0]   # row (c1, 0, 1): l1 1
    np.testing.assert_allclose(group_scores(weight, "conv", criterion="l1"), [[2, 0.5, 4, 1]])
    mask = groupwise_mask(weight, "conv", keep=0.5)
    assert mask.shape == weight.shape
    # the same tap is kept or pruned across all output channels
    assert mask[0].tolist() == mask[1].tolist() == [[[True, False]], [[True, False]]]


def test_grouped_conv_thresholds_each_group():
    weight = np.ones((4, 2, 1, 1), np.float32)  # group 2: each conv group has 2 rows (its 2 input channels)
    weight[0:2, 1] = 5.0  # group 0 prefers its channel 1
    weight[2:4, 0] = 5.0  # group 1 prefers its channel 0
    result = groupwise_result(weight, "grouped", group=2, keep=0.5)
    assert result.kept_rows.tolist() == [[False, True], [True, False]]
    assert result.mask[:, :, 0, 0].tolist() == [[False, True], [False, True], [True, False], [True, False]]


def test_alignment_rounds_kept_count():
    assert aligned_count(72, 0.25, 1) == 18
    assert aligned_count(72, 0.25, 4) == 20  # 18 -> nearest multiple of 4, halves up
    assert aligned_count(72, 0.25, 8) == 16
    assert aligned_count(10, 0.05, 8) == 8  # never below one aligned tile
    weight = np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32)
    result = groupwise_result(weight, "conv", keep=0.3, alignment=8)
    assert result.kept_groups == 24  # 72 * 0.3 = 21.6 -> 24


@pytest.mark.parametrize("keep", [0.0, 1.0, -0.2, 1.5, "half"])
def test_bad_keep_ratio(keep):
    with pytest.raises(OptionError, match="strictly between 0 and 1"):
        groupwise_mask(W_KN, "gemm", keep=keep)


def test_bad_criterion_and_kind():
    with pytest.raises(OptionError, match="criterion"):
        groupwise_mask(W_KN, "gemm", criterion="taylor")
    with pytest.raises(OptionError, match="kind"):
        groupwise_mask(W_KN, "lstm")


def test_global_threshold_shares_one_threshold():
    small = np.full((4, 4), 0.1, np.float32)   # 4 rows of l1 0.4
    big = np.full((4, 4), 1.0, np.float32)
    big[0] = 0.01                              # one weak row in the big layer
    masks, threshold = global_groupwise_masks({"a": (small, "gemm", 1, False), "b": (big, "gemm", 1, False)},
                                              keep=0.5, criterion="l1")
    # pooled normalised scores: a 0.1 x4, b 0.01, 1, 1, 1 -> keep 4 of 8: b's three strong rows + one of a
    assert masks["b"].kept_rows.tolist() == [[False, True, True, True]]
    assert masks["a"].kept_groups == 1
    assert threshold == pytest.approx(0.1)
    with pytest.raises(OptionError, match="zeros"):
        global_groupwise_masks({"a": (small, "gemm", 1, False)}, keep=0.5, criterion="zeros")


def test_mask_shape_mismatch_is_a_plan_error():
    weight = gs.Constant("W", np.ones((4, 3), np.float32))
    graph = gs.Graph(nodes=[gs.Node("MatMul", "mm", inputs=[gs.Variable("x", np.float32, [2, 4]), weight],
                                    outputs=[gs.Variable("y", np.float32, [2, 3])])])
    mask = groupwise_mask(np.ones((3, 4), np.float32), "gemm", keep=0.5)  # shaped for the transposed weight
    plan = SparsityPlan({"W": WeightPlan("W", "mm", "group-wise", mask)})
    with pytest.raises(PlanError, match="has shape"):
        plan.validate(Model(graph))


def test_one_alignment_rule_for_groupwise_and_filter_pruning():
    from sparsecc.sparsity.alignment import align_count
    from sparsecc.sparsity.filter_metrics import rank_per_layer

    assert align_count(72, 18, 4) == 20 and align_count(72, 18, 8) == 16  # halves round up
    assert align_count(10, 0.5, 8) == 8 and align_count(6, 3, 8) == 6   # at least one tile, at most all
    for size, ratio in ((40, 0.3), (72, 0.55), (20, 0.5), (6, 0.5)):
        removed = rank_per_layer({"l": np.arange(float(size))}, ratio, multiple=8)["l"]
        assert size - removed.size == aligned_count(size, 1 - ratio, 8)

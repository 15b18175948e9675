"""2:4 masks in TensorRT's layout, the check against Polygraphy's own function, eligibility."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import numpy_helper

from sparsecc.errors import OptionError, ShapeError
from sparsecc.layers import WeightLayer
from sparsecc.sparsity.two_four import (check_layout, check_two_four, eligibility, kept_magnitude, kept_per_group,
                                        reduction_axis, to_rows, two_four_mask)

RNG = np.random.default_rng(7)


def polygraphy_says_sparse(weight: np.ndarray, axis: int) -> bool:
    """Polygraphy's own per-tensor check (``polygraphy inspect sparsity`` calls it for each weight)."""
    sparse = pytest.importorskip("polygraphy.tools.sparse")
    if weight.shape[axis] % 4:
        return False  # polygraphy skips such tensors before checking: never reported sparse
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # polygraphy casts float max into float32 lists
        return bool(sparse.process_tensor(sparse.PruneInfo("w", axis), numpy_helper.from_array(weight, "w"), True))


def test_conv_mask_groups_four_input_channels_per_position():
    weight = np.zeros((1, 4, 1, 2), np.float32)
    weight[0, :, 0, 0] = [0.1, -3.0, 2.0, 0.5]
    weight[0, :, 0, 1] = [4.0, 0.2, -0.3, 1.0]
    mask = two_four_mask(weight, "Conv")
    assert mask.shape == weight.shape
    np.testing.assert_array_equal(mask[0, :, 0, 0], [False, True, True, False])
    np.testing.assert_array_equal(mask[0, :, 0, 1], [True, False, False, True])


def test_mask_keeps_exactly_two_of_four_and_passes_the_check():
    weight = RNG.standard_normal((8, 16, 3, 3)).astype(np.float32)
    mask = two_four_mask(weight, "Conv")
    groups = np.moveaxis(mask, 1, -1).reshape(-1, 4)
    assert np.all(groups.sum(axis=1) == 2)
    assert check_two_four(weight * mask, "Conv")
    assert not check_two_four(weight, "Conv")


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_mask_runs_along_k_for_both_transb(trans_b):
    kn = RNG.standard_normal((8, 3)).astype(np.float32)       # [K, N]
    stored = kn.T.copy() if trans_b else kn
    mask = two_four_mask(stored, "Gemm", trans_b)
    assert mask.shape == stored.shape
    mask_kn = mask.T if trans_b else mask
    for n in range(3):  # each output column: 2 kept in each 4 consecutive k, the largest ones
        for k0 in (0, 4):
            column = np.abs(kn[k0:k0 + 4, n])
            np.testing.assert_array_equal(np.flatnonzero(mask_kn[k0:k0 + 4, n]), np.sort(np.argsort(-column)[:2]))
    assert check_two_four(stored * mask, "Gemm", trans_b)


def test_matmul_axis_and_unknown_op():
    assert reduction_axis("MatMul") == 0
    assert reduction_axis("Gemm", True) == 1 and reduction_axis("Gemm", False) == 0
    assert reduction_axis("Conv") == 1
    with pytest.raises(OptionError, match="Conv, Gemm and MatMul"):
        reduction_axis("Add")


def test_kernel_width_layout_runs_along_the_filter_in_memory_order():
    weight = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 1, 4)  # filter: 1..8 in memory order
    mask = two_four_mask(weight, "Conv", layout="kernel-width")
    np.testing.assert_array_equal(mask.reshape(-1), [False, False, True, True] * 2)
    # not TensorRT's layout: along C_in (length 2) polygraphy does not even look at it
    assert not check_two_four(weight * mask, "Conv")


def test_mask_rejects_lengths_not_multiple_of_four():
    with pytest.raises(ShapeError, match="multiple of 4"):
        two_four_mask(np.ones((4, 3, 3, 3), np.float32), "Conv", weight_name="conv1.weight")


def test_ties_keep_the_earlier_elements():
    mask = two_four_mask(np.ones((1, 4, 1, 1), np.float32), "Conv")
    np.testing.assert_array_equal(mask.reshape(-1), [True, True, False, False])


@pytest.mark.parametrize("op, trans_b, shape", [
    ("Conv", False, (4, 8, 3, 3)), ("Conv", False, (2, 12, 1, 1)), ("Gemm", False, (8, 5)),
    ("Gemm", True, (5, 8)), ("MatMul", False, (12, 3)), ("Conv", False, (4, 6, 1, 1)), ("Gemm", True, (8, 6)),
])
def test_check_matches_polygraphy(op, trans_b, shape):
    weight = RNG.standard_normal(shape).astype(np.float32)
    axis = reduction_axis(op, trans_b)
    pruned = weight
    if weight.shape[axis] % 4 == 0:
        pruned = weight * two_four_mask(weight, op, trans_b)
    more_zeros = pruned.copy()
    np.moveaxis(more_zeros, axis, -1)[..., 1] = 0.0  # extra zeros keep it 2:4
    almost = pruned.copy()
    first_group = (0,) * (weight.ndim - 1) + (slice(0, 4),)
    np.moveaxis(almost, axis, -1)[first_group] = np.moveaxis(weight, axis, -1)[first_group]  # one dense group
    for tensor in (weight, pruned, more_zeros, almost):
        assert check_two_four(tensor, op, trans_b) == polygraphy_says_sparse(tensor, axis)


def test_check_skips_non_float_like_polygraphy():
    assert not check_two_four(np.zeros((4, 8, 1, 1), np.int8), "Conv")
    assert check_two_four(np.zeros((4, 8, 1, 1), np.float16), "Conv")


def test_kept_magnitude():
    weight = np.array([[[[1.0]], [[-4.0]], [[2.0]], [[3.0]]]], np.float32)  # [1, 4, 1, 1]
    assert kept_magnitude(weight, "Conv") == pytest.approx(7.0)
    assert kept_magnitude(np.ones((1, 3, 1, 1), np.float32), "Conv") == pytest.approx(3.0)  # not prunable


def _layer(kind, shape, group=1, op="Conv", trans_b=False):
    return WeightLayer("n", op, kind, "w", shape, group=group, trans_b=trans_b)


def test_eligibility_reasons():
    assert not eligibility(_layer("depthwise", (32, 1, 3, 3), group=32)).eligible
    assert "depthwise" in eligibility(_layer("depthwise", (32, 1, 3, 3), group=32)).reason
    assert "grouped" in eligibility(_layer("grouped", (32, 8, 3, 3), group=4)).reason
    first = eligibility(_layer("conv", (16, 3, 3, 3)))
    assert not first.eligible and "C_in = 3" in first.reason
    assert "K = 5" in eligibility(_layer("gemm", (10, 5), op="Gemm", trans_b=True)).reason  # [N, K]
    assert eligibility(_layer("gemm", (8, 5), op="Gemm", trans_b=False)).eligible         # [K, N]
    assert "int8" in eligibility(_layer("conv", (16, 16, 3, 3)), np.int8).reason
    small = eligibility(_layer("pointwise", (64, 64, 1, 1)))
    assert small.eligible and "256" in small.note
    big = eligibility(_layer("conv", (256, 512, 3, 3)))
    assert big.eligible and big.note == ""
    # kernel-width: the whole filter length counts (3 * 3 * 3 = 27 is not a multiple of 4)
    assert not eligibility(_layer("conv", (16, 3, 3, 3)), layout="kernel-width").eligible
    assert eligibility(_layer("conv", (16, 4, 3, 3)), layout="kernel-width").eligible


def test_one_implementation_of_the_two_four_helpers():
    from sparsecc.sparsity import filter_metrics, permutation, two_four

    assert filter_metrics.LAYOUTS is two_four.LAYOUTS
    assert permutation.top2_sum is two_four.top2_sum
    magnitudes = np.abs(RNG.standard_normal((5, 12)))
    np.testing.assert_allclose(kept_per_group(magnitudes),
                               np.sort(magnitudes.reshape(5, 3, 4), axis=2)[:, :, 2:].sum(axis=2))
    weight = RNG.standard_normal((2, 8, 1, 2)).astype(np.float32)
    rows, back = to_rows(weight)
    assert rows.shape == (4, 8) and np.array_equal(rows[:2], np.moveaxis(weight[0], 0, -1).reshape(2, 8))
    assert np.array_equal(back(rows), weight)
    with pytest.raises(OptionError, match="plan-24 layout option"):
        check_layout("rows", where="plan-24 layout option")

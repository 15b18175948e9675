"""Mask generators of the characterisation study: exact structure and counts on small weights."""

import numpy as np
import pytest

from sparsecc.errors import OptionError, ShapeError
from sparsecc.sparsity.patterns import block_wise_mask, element_wise_mask, kept_count, vector_wise_mask


def test_kept_count_rounds_and_bounds():
    assert kept_count(8, 0.5) == 4
    assert kept_count(10, 0.25) == 2  # round(2.5) -> 2 (banker's rounding of Python)
    assert kept_count(4, 0.1, minimum=1) == 1
    assert kept_count(4, 1.0) == 4
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(OptionError):
            kept_count(4, bad)


def test_element_wise_keeps_global_largest_magnitudes():
    weight = np.array([[0.1, -5.0, 0.3],
                       [2.0, -0.2, 4.0]], dtype=np.float32)
    expected = np.array([[False, True, False],
                         [True, False, True]])
    np.testing.assert_array_equal(element_wise_mask(weight, 0.5), expected)
    assert element_wise_mask(weight, 1.0).all()


def test_element_wise_ties_go_to_lower_index():
    mask = element_wise_mask(np.ones((2, 2)), 0.5)
    np.testing.assert_array_equal(mask, [[True, True], [False, False]])


def test_vector_wise_hand_computed():
    # K = 4, N = 2, one vector of 4 per column; keep 0.5 -> 2 per vector.
    weight = np.array([[1.0, -8.0],
                       [-3.0, 1.0],
                       [2.0, 0.5],
                       [0.0, 7.0]])
    expected = np.array([[False, True],
                         [True, False],
                         [True, False],
                         [False, True]])
    np.testing.assert_array_equal(vector_wise_mask(weight, 0.5, vector=4), expected)


@pytest.mark.parametrize("keep,vector,per_vector", [(0.75, 4, 3), (0.5, 4, 2), (0.25, 4, 1), (0.5, 8, 4),
                                                    (0.25, 16, 4), (0.05, 4, 1)])
def test_vector_wise_equal_count_in_every_vector(keep, vector, per_vector):
    weight = np.random.default_rng(0).normal(size=(32, 6))
    mask = vector_wise_mask(weight, keep, vector=vector)
    counts = mask.reshape(32 // vector, vector, 6).sum(axis=1)
    assert (counts == per_vector).all()
    # The kept elements of each vector are its largest magnitudes.
    vectors = np.abs(weight).reshape(32 // vector, vector, 6)
    kept_min = np.where(mask.reshape(vectors.shape), vectors, np.inf).min(axis=1)
    pruned_max = np.where(mask.reshape(vectors.shape), -np.inf, vectors).max(axis=1)
    assert (kept_min >= pruned_max).all()


def test_vector_wise_rejects_k_not_multiple_and_bad_vector():
    with pytest.raises(ShapeError, match="not a multiple"):
        vector_wise_mask(np.ones((6, 2)), 0.5, vector=4)
    with pytest.raises(OptionError):
        vector_wise_mask(np.ones((8, 2)), 0.5, vector=0)
    with pytest.raises(ShapeError, match=r"\[K, N\]"):
        vector_wise_mask(np.ones((8, 2, 1)), 0.5)


def test_block_wise_hand_computed_l1_and_l2():
    # 4 x 4 weight, 2 x 2 blocks: L1 scores [[4, 8], [6, 5]]; keep 0.5 -> blocks (0,1) and (1,0).
    weight = np.array([[1, 1, 2, 2],
                       [1, 1, 2, 2],
                       [3, 0, 1, 1],
                       [3, 0, 1, 2]], dtype=np.float32)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0:2, 2:4] = True
    expected[2:4, 0:2] = True
    np.testing.assert_array_equal(block_wise_mask(weight, 0.5, block=(2, 2), norm="l1"), expected)
    # L2 scores: [[2, 4], [4.24, 2.65]] -> same two blocks; keep 0.25 -> only block (1,0).
    only = np.zeros((4, 4), dtype=bool)
    only[2:4, 0:2] = True
    np.testing.assert_array_equal(block_wise_mask(weight, 0.25, block=(2, 2), norm="l2"), only)


@pytest.mark.parametrize("keep,block", [(0.75, (4, 4)), (0.5, (8, 2)), (0.25, (2, 8))])
def test_block_wise_whole_blocks_and_count(keep, block):
    weight = np.random.default_rng(1).normal(size=(16, 16))
    mask = block_wise_mask(weight, keep, block=block)
    m, n = block
    tiles = mask.reshape(16 // m, m, 16 // n, n)
    per_block = tiles.sum(axis=(1, 3))
    assert set(np.unique(per_block)) <= {0, m * n}  # every block kept or removed whole
    assert int((per_block > 0).sum()) == round(keep * per_block.size)
    assert mask.sum() == round(keep * per_block.size) * m * n


def test_block_wise_rejects_bad_tiling_norm_and_block():
    with pytest.raises(ShapeError, match="does not tile"):
        block_wise_mask(np.ones((6, 8)), 0.5, block=(4, 4))
    with pytest.raises(OptionError, match="norm"):
        block_wise_mask(np.ones((8, 8)), 0.5, norm="linf")
    with pytest.raises(OptionError):
        block_wise_mask(np.ones((8, 8)), 0.5, block=(4,))

"""Channel permutation search for 2:4: never worse, finds known optima, exact when propagated."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from sparsecc.errors import ShapeError
from sparsecc.sparsity.permutation import kept_by_permutation, search_matrix, search_permutation
from sparsecc.sparsity.two_four import kept_magnitude


def test_kept_by_permutation_by_hand():
    matrix = np.array([[1.0, 2.0, 3.0, 4.0, 8.0, 7.0, 6.0, 5.0]])
    assert kept_by_permutation(matrix) == pytest.approx(7 + 15)
    # pair the two largest with the two smallest in each stripe: 8+7 | 6+5 ... kept 8+7+6+5 = 26
    assert kept_by_permutation(matrix, np.array([4, 5, 0, 1, 6, 7, 2, 3])) == pytest.approx(26)


def test_search_matrix_rows_follow_tensorrt_layout():
    conv = np.arange(2 * 4 * 1 * 2, dtype=np.float32).reshape(2, 4, 1, 2)
    matrix = search_matrix([conv, -np.ones((3, 4), np.float32)])
    assert matrix.shape == (2 * 2 + 3, 4)
    np.testing.assert_array_equal(matrix[0], np.abs(conv[0, :, 0, 0]))


@pytest.mark.parametrize("seed", range(6))
def test_never_decreases_and_is_a_permutation(seed):
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((6, 16, 3, 3)), rng.standard_normal((5, 16))]
    result = search_permutation(weights, seed=seed)
    assert sorted(result.permutation) == list(range(16))
    assert result.after >= result.before
    assert result.after == pytest.approx(kept_by_permutation(search_matrix(weights), result.permutation))
    assert result.before == pytest.approx(sum(kept_magnitude(w, "Conv" if w.ndim == 4 else "MatMul")
                                              for w in [weights[0], weights[1].T]))


def test_finds_the_brute_force_optimum_on_eight_channels():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((5, 8))
    matrix = np.abs(weight)
    best = max(kept_by_permutation(matrix, np.array(p)) for p in permutations(range(8)))
    assert search_permutation([weight]).after == pytest.approx(best)


def test_recovers_a_hidden_two_four_order():
    # Columns that are 2:4 in a hidden order (every magnitude can be kept), shuffled.
    rng = np.random.default_rng(11)
    # the same kept positions in every row: the optimum pairs 2 live channels with 2 dead ones
    pattern = np.tile([1.0, 1.0, 0.0, 0.0], 4)
    hidden = rng.uniform(0.5, 1.0, (32, 16)) * pattern
    shuffle = rng.permutation(16)
    weight = hidden[:, shuffle]
    result = search_permutation([weight], seed=0)
    assert result.after == pytest.approx(np.abs(weight).sum())       # everything kept
    assert result.before < 0.95 * result.after
    kept_columns = weight[:, result.permutation].reshape(32, 4, 4)
    assert np.all(np.count_nonzero(kept_columns, axis=2) == 2)


def test_same_seed_same_permutation():
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal((8, 32, 3, 3))]
    a = search_permutation(weights, seed=4, restarts=3)
    b = search_permutation(weights, seed=4, restarts=3)
    np.testing.assert_array_equal(a.permutation, b.permutation)


def test_windows_cover_large_layers():
    rng = np.random.default_rng(9)
    weight = rng.standard_normal((16, 64))
    result = search_permutation([weight], window=16, restarts=0)
    assert sorted(result.permutation) == list(range(64))
    assert result.after > result.before


def test_permuting_consumers_and_producers_is_exact():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 8))
    producer = rng.standard_normal((12, 8))       # y = x @ producer.T : 12 channels
    bias = rng.standard_normal(12)
    consumer = rng.standard_normal((5, 12))       # z = relu(y) @ consumer.T
    result = search_permutation([consumer])
    p = result.permutation
    reference = np.maximum(x @ producer.T + bias, 0) @ consumer.T
    permuted = np.maximum(x @ producer[p].T + bias[p], 0) @ consumer[:, p].T
    np.testing.assert_allclose(permuted, reference, rtol=1e-12, atol=1e-12)
    assert kept_magnitude(consumer[:, p].T, "MatMul") == pytest.approx(result.after)


def test_rejects_channel_counts_not_multiple_of_four():
    with pytest.raises(ShapeError, match="multiple of 4"):
        search_permutation([np.ones((2, 6))])
    with pytest.raises(ValueError, match="disagree"):
        search_permutation([np.ones((2, 8)), np.ones((2, 4))])

"""DEPrune masks (DCP, BWT, HSR, PW filters) against numbers worked out by hand."""

import numpy as np
import pytest

from sparsecc.errors import OptionError
from sparsecc.sparsity.deprune import (HsrLayer, bwt_mask, dcp_mask, hsr_counts, imbalance_overhead,
                                       pw_filter_keep, real_dw_ratio, subgemm_ranges, subgemm_ratios,
                                       tapless_channels)

# 4 channels, 1x2 kernels: |w| ranks 0.1 < 0.5 < 1 < 2 < 3 < 4 < 5 < 6
W = np.array([[1.0, -5.0], [2.0, 0.5], [-3.0, 4.0], [0.1, 6.0]], np.float32).reshape(4, 1, 1, 2)


def test_dcp_prunes_the_smallest_of_the_layer():
    keep = dcp_mask(W, 0.5)
    # the four smallest (0.1, 0.5, 1, 2) go, wherever they are
    assert keep.reshape(4, 2).tolist() == [[False, True], [False, False], [True, True], [False, True]]
    # sub-GEMMs of width 2: channels {0,1} lose 3 of 4, channels {2,3} lose 1 of 4
    assert subgemm_ratios(keep, width=2).tolist() == [0.75, 0.25]
    assert real_dw_ratio(keep, width=2) == 0.25
    assert imbalance_overhead(keep, width=2) == pytest.approx(0.25)
    assert tapless_channels(keep).tolist() == [1]


def test_bwt_balances_every_sub_gemm():
    keep = bwt_mask(W, 0.5, width=2)
    # range {1, -5, 2, 0.5} loses 0.5 and 1; range {-3, 4, 0.1, 6} loses 0.1 and -3
    assert keep.reshape(4, 2).tolist() == [[False, True], [True, False], [False, True], [False, True]]
    assert subgemm_ratios(keep, width=2).tolist() == [0.5, 0.5]
    assert imbalance_overhead(keep, width=2) == 0.0
    assert tapless_channels(keep).size == 0


def test_bwt_with_explicit_counts_and_fp16():
    keep = bwt_mask(W.astype(np.float16), width=2, counts=[1, 3])
    assert (~keep).reshape(2, 4).sum(axis=1).tolist() == [1, 3]
    with pytest.raises(OptionError):
        bwt_mask(W, width=2, counts=[1])


def test_subgemm_ranges_pad_the_last():
    assert subgemm_ranges(72, 32) == [(0, 32), (32, 64), (64, 72)]


def test_hsr_over_aligns_the_layer_with_the_largest_gain_only_while_it_helps_the_total():
    # each layer: 64 channels of 3x3 -> 2 sub-GEMMs of 288 vectors; 80% is 230.4 per sub-GEMM,
    # under-aligned 224, over-aligned 256. Target total 3 * 0.8 * 576 = 1382.4; all 'u' = 1344
    # (38.4 short); one 'o' = 1408 (25.6 over, closer); a second 'o' = 1472 (89.6 over, farther).
    layers = [HsrLayer("a", 64, 9, 0.8, out_pixels=100), HsrLayer("b", 64, 9, 0.8, out_pixels=400),
              HsrLayer("c", 64, 9, 0.8, out_pixels=200)]
    choices = hsr_counts(layers, width=32, tile=32)
    assert [c.pattern for c in choices] == ["u", "o", "u"]
    assert choices[1].counts == [256, 256] and choices[0].counts == [224, 224]
    assert sum(c.pruned for c in choices) == 1408


def test_hsr_partial_sub_gemm_takes_the_full_ones_share():
    (choice,) = hsr_counts([HsrLayer("a", 40, 9, 0.8)], width=32, tile=32)
    assert choice.under == [224, 56] and choice.over == [256, 64]  # 72 * 224/288 = 56, 72 * 256/288 = 64


def test_hsr_gain_can_be_measured():
    layers = [HsrLayer("a", 64, 9, 0.8, out_pixels=400), HsrLayer("b", 64, 9, 0.8, out_pixels=100),
              HsrLayer("c", 64, 9, 0.8, out_pixels=100)]
    measured = {"a": 1e-6, "b": 5e-6, "c": 2e-6}  # b pays most on this backend
    choices = hsr_counts(layers, gain=lambda layer: measured[layer.name])
    assert [c.pattern for c in choices] == ["u", "o", "u"]


def test_pw_filter_keep_by_l2():
    weight = np.array([[3, 4], [1, 0], [0, 2], [6, 8]], np.float32).reshape(4, 2, 1, 1)  # norms 5, 1, 2, 10
    assert pw_filter_keep(weight, 0.5, multiple=1).tolist() == [0, 3]
    assert pw_filter_keep(weight, 0.5, multiple=4).tolist() == [0, 1, 2, 3]


def test_bad_input_is_refused():
    with pytest.raises(OptionError, match="depth multiplier"):
        dcp_mask(np.ones((4, 2, 3, 3)), 0.5)
    with pytest.raises(OptionError):
        dcp_mask(W, 1.0)
    with pytest.raises(OptionError):
        bwt_mask(W, 0.5, width=0)


def test_channel_first_spends_part_of_the_budget_on_whole_channels():
    from sparsecc.sparsity.deprune import channel_first_mask

    # budget round(0.5 * 8) = 4 weights; share 0.5 -> floor(2 / 2) = 1 whole channel: the smallest l2 norm
    # is channel 1 ([2, 0.5]); the other 2 pruned taps are the smallest left: 0.1 and 1
    keep = channel_first_mask(W, 0.5, 0.5, balanced=False)
    assert keep.reshape(4, 2).tolist() == [[False, True], [False, False], [True, True], [False, True]]
    assert tapless_channels(keep).tolist() == [1]
    # balanced per sub-GEMM of width 2: range {0, 1} already loses 2 (channel 1) -> also prunes 0 more;
    # range {2, 3} prunes its 2 smallest: 0.1 and -3
    keep = channel_first_mask(W, 0.5, 0.5, width=2)
    assert keep.reshape(4, 2).tolist() == [[True, True], [False, False], [False, True], [False, True]]
    # share 0 is plain BWT
    assert (channel_first_mask(W, 0.5, 0.0, width=2) == bwt_mask(W, 0.5, width=2)).all()

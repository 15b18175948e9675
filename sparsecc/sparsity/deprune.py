"""DEPrune masks for depthwise convolutions (pure numpy; no ONNX, no graph).

Diagonal-wise Refactorization (DR) turns a depthwise conv with M channels and a
kh x kw kernel into G = ceil(M / width) sub-GEMMs: sub-GEMM g holds channels
[g*width, (g+1)*width) and its weight is width x (width*kh*kw) with each
channel's taps on the diagonal. A "vector" is one column of a sub-GEMM, i.e.
one tap of one channel: pruning a depthwise weight empties that column (and the
matching im2col input row), which is why element-wise pruning of a depthwise
weight is structured in the DR view.

- :func:`dcp_mask` (DCP): rank the real (non-padding) weights of a layer by |w|
  and prune the smallest to a ratio.
- :func:`bwt_mask` (BWT): the same ranking, inside each balanced range of
  width*kh*kw (one sub-GEMM), so every sub-GEMM keeps the same K.
- :func:`hsr_counts` (HSR): per layer, round the pruned vectors of each
  sub-GEMM down (under-aligned, "u") or up (over-aligned, "o") to the tile,
  choosing per layer by gain per vector so that the model's total ratio holds.
- :func:`pw_filter_keep`: l2-norm filter pruning of a pointwise weight, kept
  count aligned.

Every function takes the weight as stored in ONNX ([M, 1, kh, kw]; FP16 is
ranked in float32) and returns boolean masks of the same shape (True = kept),
so a fine-tuning loop can call them on its own tensors (``.numpy()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sparsecc.errors import OptionError
from sparsecc.sparsity.alignment import align_count

__all__ = ["subgemm_ranges", "dcp_mask", "bwt_mask", "channel_first_mask", "subgemm_ratios", "real_dw_ratio", "imbalance_overhead",
           "tapless_channels", "HsrLayer", "HsrChoice", "hsr_counts", "analytic_gain_per_vector", "pw_filter_keep"]


def _check_weight(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[1] != 1:
        raise OptionError(f"a depthwise weight is [M, 1, kh, kw]; got shape {list(weight.shape)}",
                          fix="depth multiplier 1 only (C_out == C_in == group)")
    return np.abs(weight.astype(np.float32))


def _check_ratio(ratio: float, what: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise OptionError(f"{what} {ratio!r} is not in [0, 1)", fix="give the share of weights pruned, e.g. 0.8")
    return float(ratio)


def _check_width(width: int) -> int:
    if not isinstance(width, (int, np.integer)) or width < 1:
        raise OptionError(f"sub-GEMM width {width!r} is not a positive integer", fix="the paper uses 32")
    return int(width)


def subgemm_ranges(channels: int, width: int = 32) -> list[tuple[int, int]]:
    """Channel ranges of the DR sub-GEMMs: G = ceil(M / width); the last may be narrower.

    A narrower last sub-GEMM is the padded one of the paper (its padding columns hold no
    real weight and are never counted or ranked).
    """
    width = _check_width(width)
    return [(start, min(start + width, channels)) for start in range(0, channels, width)]


def _prune_smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """Keep-mask over a flat score array with the ``count`` smallest pruned (stable: ties by index)."""
    keep = np.ones(scores.size, dtype=bool)
    if count > 0:
        keep[np.argsort(scores, kind="stable")[:count]] = False
    return keep


def dcp_mask(weight: np.ndarray, ratio: float) -> np.ndarray:
    """DCP: prune ``round(ratio * M*kh*kw)`` smallest |w| of the layer (one ranking for the layer).

    Args:
        weight: Depthwise weight [M, 1, kh, kw].
        ratio: Share of the layer's weights pruned, in [0, 1).
    """
    scores = _check_weight(weight)
    ratio = _check_ratio(ratio)
    return _prune_smallest(scores.ravel(), int(round(ratio * scores.size))).reshape(scores.shape)


def bwt_mask(weight: np.ndarray, ratio: float | None = None, width: int = 32,
             counts: Sequence[int] | None = None) -> np.ndarray:
    """BWT: prune the same share inside every sub-GEMM (balanced range of width*kh*kw).

    Args:
        weight: Depthwise weight [M, 1, kh, kw].
        ratio: Share pruned in every sub-GEMM (of its real weights). Ignored when ``counts`` is given.
        width: Channels per sub-GEMM. Defaults to 32.
        counts: Pruned vectors per sub-GEMM, one per range of :func:`subgemm_ranges` (HSR gives them).
    """
    scores = _check_weight(weight)
    ranges = subgemm_ranges(scores.shape[0], width)
    taps = scores.shape[2] * scores.shape[3]
    if counts is None:
        ratio = _check_ratio(0.0 if ratio is None else ratio)
        counts = [int(round(ratio * (stop - start) * taps)) for start, stop in ranges]
    if len(counts) != len(ranges):
        raise OptionError(f"{len(counts)} pruned counts given for {len(ranges)} sub-GEMMs")
    keep = np.ones(scores.shape, dtype=bool)
    for (start, stop), count in zip(ranges, counts):
        real = (stop - start) * taps
        if not 0 <= count <= real:
            raise OptionError(f"cannot prune {count} of the {real} weights of sub-GEMM channels [{start}, {stop})")
        keep[start:stop] = _prune_smallest(scores[start:stop].ravel(), int(count)).reshape(scores[start:stop].shape)
    return keep


def channel_first_mask(weight: np.ndarray, ratio: float, channel_share: float, width: int = 32,
                       balanced: bool = True) -> np.ndarray:
    """A CPU-minded variant: part of the layer's pruning budget empties whole channels first.

    On a CPU, pruned taps pay only when a whole channel dies (the channel then leaves PW1, DW and
    PW2; see ``deprune-dead-channels``). ``floor(channel_share * round(ratio * M*kh*kw) / (kh*kw))``
    channels with the smallest l2 norm go whole; the rest of the budget is pruned tap by tap among
    the others, per sub-GEMM (``balanced``, BWT: every sub-GEMM ends at the layer's ratio where its
    dead channels allow) or over the layer (DCP). ``channel_share`` 0 is plain BWT/DCP.

    Args:
        weight: Depthwise weight [M, 1, kh, kw].
        ratio: Share of the layer's weights pruned, in [0, 1).
        channel_share: Share of the pruned weights taken as whole channels, in [0, 1].
        width: Channels per sub-GEMM. Defaults to 32.
        balanced: Prune the remaining taps per sub-GEMM (BWT) rather than over the layer. Defaults to True.
    """
    scores = _check_weight(weight)
    ratio = _check_ratio(ratio)
    if not 0.0 <= float(channel_share) <= 1.0:
        raise OptionError(f"channel_share {channel_share!r} is not in [0, 1]", fix="e.g. 0.5")
    m, taps = scores.shape[0], scores.shape[2] * scores.shape[3]
    budget = int(round(ratio * m * taps))
    killed = min(int(np.floor(channel_share * budget / taps)), m - 1)
    norms = np.sqrt((scores.reshape(m, -1) ** 2).sum(axis=1))
    dead = np.argsort(norms, kind="stable")[:killed]
    keep = np.ones(scores.shape, dtype=bool)
    keep[dead] = False
    # the dead channels' weights rank first (they are pruned already); the rest by |w|
    ranked = np.where(keep, scores, -1.0)
    if not balanced:
        return _prune_smallest(ranked.ravel(), budget).reshape(scores.shape)
    for start, stop in subgemm_ranges(m, width):
        count = max(int(round(ratio * (stop - start) * taps)), int((~keep[start:stop]).sum()))
        keep[start:stop] = _prune_smallest(ranked[start:stop].ravel(), count).reshape(scores[start:stop].shape)
    return keep


def subgemm_ratios(mask: np.ndarray, width: int = 32) -> np.ndarray:
    """Pruned share of the real weights of each sub-GEMM."""
    mask = np.asarray(mask, dtype=bool)
    return np.array([1.0 - mask[start:stop].mean() for start, stop in subgemm_ranges(mask.shape[0], width)])


def real_dw_ratio(mask: np.ndarray, width: int = 32) -> float:
    """The paper's "Real DW": the smallest sub-GEMM pruning ratio (the straggler sets the time)."""
    return float(subgemm_ratios(mask, width).min())


def imbalance_overhead(mask: np.ndarray, width: int = 32) -> float:
    """Layer pruning ratio minus the smallest sub-GEMM ratio (the paper's Fig. 3c)."""
    return float((1.0 - np.asarray(mask, dtype=bool).mean()) - real_dw_ratio(mask, width))


def tapless_channels(mask: np.ndarray) -> np.ndarray:
    """Channels whose every tap is pruned (their output is the bias alone)."""
    mask = np.asarray(mask, dtype=bool)
    return np.flatnonzero(~mask.reshape(mask.shape[0], -1).any(axis=1))


# ----------------------------------------------------------------------------------------------
# HSR
# ----------------------------------------------------------------------------------------------

@dataclass
class HsrLayer:
    """What HSR needs to know about one depthwise layer.

    Attributes:
        name: Layer name.
        channels: M.
        taps: kh * kw.
        ratio: Target share pruned in this layer.
        out_pixels: Output elements per channel (batch * Ho * Wo), for the analytic gain.
    """

    name: str
    channels: int
    taps: int
    ratio: float
    out_pixels: int = 1


@dataclass
class HsrChoice:
    """HSR's decision for one layer: pattern "u" or "o" and the pruned vectors of every sub-GEMM."""

    name: str
    pattern: str
    counts: list[int]
    under: list[int]
    over: list[int]
    gain_per_vector: float

    @property
    def pruned(self) -> int:
        return int(sum(self.counts))


def _aligned(layer: HsrLayer, width: int, tile: int) -> tuple[list[int], list[int]]:
    """Under- and over-aligned pruned counts per sub-GEMM.

    Full sub-GEMMs round their pruned vectors to the tile (over-alignment never empties one:
    at least one tile stays); a narrower last sub-GEMM takes the same share as the full ones.
    """
    ranges = subgemm_ranges(layer.channels, width)
    full = width * layer.taps
    target = layer.ratio * full
    under_full = int(np.floor(target / tile)) * tile
    over_full = min(int(np.ceil(target / tile)) * tile, max(full - tile, under_full))
    under, over = [], []
    for start, stop in ranges:
        real = (stop - start) * layer.taps
        if real == full:
            under.append(under_full)
            over.append(over_full)
        else:  # the padded sub-GEMM: same share, whole vectors
            under.append(min(real, int(round(real * under_full / full))))
            over.append(min(real - 1, int(round(real * over_full / full))) if real > 1 else 0)
    return under, over


def analytic_gain_per_vector(layer: HsrLayer, width: int = 32) -> float:
    """Seconds saved per pruned vector in the DR sub-GEMM form (analytic).

    Each vector is one column of a sub-GEMM: removing it saves ``width`` MACs for every output
    pixel (the column's multiply with the whole row block), so the gain scales with the output
    size. Only the ranking between layers matters to HSR; the scale (20 ps per MAC, the
    ONNX Runtime CPU figure of the group-wise cost model) is kept for reports.
    """
    return layer.out_pixels * width * 20e-12


def hsr_counts(layers: Sequence[HsrLayer], width: int = 32, tile: int = 32,
               gain: Callable[[HsrLayer], float] | None = None) -> list[HsrChoice]:
    """HSR: per layer, under- or over-align the pruned vectors to the tile, keeping the total.

    Every layer starts under-aligned ("u"); layers are then over-aligned ("o") in order of
    gain per vector (largest first) while that brings the model's total pruned vectors closer
    to the total the ratios ask for. So the model's depthwise ratio stays within a tile of the
    target and the extra pruning goes where it pays most.

    Args:
        layers: One entry per depthwise layer.
        width: Channels per sub-GEMM. Defaults to 32.
        tile: GEMM tile (pruned vectors per sub-GEMM are multiples of it). Defaults to 32.
        gain: Gain per vector of a layer (seconds; measured on a backend or analytic). Defaults
            to :func:`analytic_gain_per_vector`.
    """
    width = _check_width(width)
    if not isinstance(tile, (int, np.integer)) or tile < 1:
        raise OptionError(f"tile {tile!r} is not a positive integer", fix="the paper uses 32")
    gain = gain or (lambda layer: analytic_gain_per_vector(layer, width))
    choices, target = [], 0.0
    for layer in layers:
        _check_ratio(layer.ratio, f"ratio of layer '{layer.name}'")
        under, over = _aligned(layer, width, tile)
        choices.append(HsrChoice(layer.name, "u", list(under), under, over, float(gain(layer))))
        target += layer.ratio * layer.channels * layer.taps
    total = sum(choice.pruned for choice in choices)
    for index in sorted(range(len(choices)), key=lambda i: -choices[i].gain_per_vector):
        choice = choices[index]
        extra = sum(choice.over) - sum(choice.under)
        if extra > 0 and abs(total + extra - target) < abs(total - target):
            choice.pattern, choice.counts = "o", list(choice.over)
            total += extra
    return choices


# ----------------------------------------------------------------------------------------------
# PW-conv
# ----------------------------------------------------------------------------------------------

def pw_filter_keep(weight: np.ndarray, ratio: float, multiple: int = 8) -> np.ndarray:
    """Output filters of a pointwise weight [C_out, C_in, 1, 1] kept by l2-norm filter pruning.

    ``round(ratio * C_out)`` filters with the smallest l2 norm go; the kept count is rounded to
    ``multiple`` (:func:`~sparsecc.sparsity.alignment.align_count`). Returns the sorted kept indices.
    (In a graph the filters are planned over coupled channel groups by ``plan-filters``; this is
    the same rule for one weight, for a training loop.)
    """
    ratio = _check_ratio(ratio)
    weight = np.asarray(weight, dtype=np.float32)
    scores = np.sqrt((weight.reshape(weight.shape[0], -1) ** 2).sum(axis=1))
    keep_count = align_count(scores.size, (1.0 - ratio) * scores.size, multiple)
    return np.sort(np.argsort(-scores, kind="stable")[:keep_count])

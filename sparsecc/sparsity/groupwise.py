"""Group-wise pruning: group scores and masks (pure numpy, no ONNX).

A *group* is one row of the GEMM a layer computes (group-wise pruning paper,
section 3.2). For a Conv with weight [C_out, C_in/g, kh, kw] the im2col weight
of conv group ``gi`` is F[C_in/g*kh*kw, C_out/g]; a group is one row of it: the
same (c_in, i, j) tap across all output channels of that conv group. For a
Gemm/MatMul weight W[K, N] (reduction first, see :func:`sparsecc.plan.gemm_weight_kn`)
a group is one input feature, a row of W. Removing a group shrinks K by one,
so the pruned layer runs as a Gather of the kept inputs and a smaller dense GEMM.

Criteria score each group: ``l1`` (sum |w|), ``l2`` (Euclidean norm), ``mean``
(mean |w|, the DST criterion the paper pairs with the pattern) and ``zeros``
(keep exactly the groups that are not already all zero), and any other registered in
:mod:`sparsecc.sparsity.importance` (a function of the rows of ``|w|``).

Threshold rule (paper section 3.3, after DST): each layer has a threshold t and
a group is kept when its score is above it (mask = score > t). DST learns t
during training; offline, t is set per layer to the score of the best-scored
pruned group so that the layer keeps ``keep`` of its groups (ties broken by
position, so the kept count is exact). The global variant uses one t for all
selected layers, on scores normalised by the group length (l1 -> mean |w|,
l2 -> root mean square) so rows of different lengths compare fairly.

Grouped convolutions are thresholded per conv group, so every conv group
keeps the same number of rows. ``alignment`` rounds each kept count to a
multiple of it (tile-friendly GEMMs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsecc.errors import OptionError
from sparsecc.sparsity.alignment import align_count
from sparsecc.sparsity.importance import group_criterion

CRITERIA = ("l1", "l2", "mean", "zeros")  # the built-in ones; group_criterion_names() lists every registered one
CONV_KINDS = ("conv", "pointwise", "grouped", "depthwise")
GEMM_KINDS = ("gemm", "matmul")

__all__ = ["CRITERIA", "GroupMask", "aligned_count", "global_groupwise_masks", "group_rows",
           "group_scores", "groupwise_mask", "groupwise_result", "mask_from_rows"]


def _check_kind(kind: str) -> None:
    if kind not in CONV_KINDS + GEMM_KINDS:
        raise OptionError(f"unknown layer kind '{kind}'", fix=f"use one of {list(CONV_KINDS + GEMM_KINDS)}")


def group_rows(weight: np.ndarray, kind: str, group: int = 1, trans_b: bool = False) -> np.ndarray:
    """The weight as [conv groups, groups per conv group, group length] (a view or copy).

    Args:
        weight: The weight as stored in ONNX (Conv [C_out, C_in/g, kh, kw]; Gemm B, transB honoured).
        kind: Layer kind (conv, pointwise, grouped, depthwise, gemm, matmul).
        group: Conv ``group`` attribute. Defaults to 1.
        trans_b: The Gemm weight is stored [N, K] (transB=1). Defaults to False.
    """
    _check_kind(kind)
    if kind in GEMM_KINDS:
        kn = weight.T if trans_b else weight
        return kn[None, :, :]
    c_out = weight.shape[0]
    if c_out % group:
        raise OptionError(f"C_out={c_out} is not a multiple of group={group}")
    # [g, C_out/g, C_in/g*kh*kw] -> rows are the last axis, so move it to the middle
    return np.swapaxes(weight.reshape(group, c_out // group, -1), 1, 2)


def group_scores(weight: np.ndarray, kind: str, group: int = 1, criterion: str = "l1",
                 trans_b: bool = False, normalized: bool = False) -> np.ndarray:
    """Score of every group, shaped [conv groups, groups per conv group] ([1, K] for Gemm/MatMul).

    Args:
        weight: The weight as stored in ONNX.
        kind: Layer kind.
        group: Conv ``group`` attribute. Defaults to 1.
        criterion: "l1", "l2", "mean" or "zeros" (1 for a group holding a non-zero, else 0), or
            another registered criterion (:func:`~sparsecc.sparsity.importance.register_group_criterion`).
            Defaults to "l1".
        trans_b: Gemm weight stored [N, K]. Defaults to False.
        normalized: Divide by the group length (l1 -> mean |w|, l2 -> RMS; the criterion's own
            ``normalize``), for comparing layers under one global threshold. Defaults to False.
    """
    scorer = group_criterion(criterion)
    rows = group_rows(weight, kind, group, trans_b)
    length = rows.shape[2]
    # in slices of rows: a float64 copy of a whole 400 MB FC weight would take 1.6 GB for a moment;
    # each row's score is computed exactly as on the whole array (the same elements, in the same order)
    # (no slice one row wide unless the weight is: numpy would then sum that row in another order)
    step = max(2, SCORE_CHUNK_ELEMENTS // max(1, rows.shape[0] * length))
    bounds = list(range(0, rows.shape[1], step)) + [rows.shape[1]]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    parts = [scorer.score(np.abs(rows[:, start:stop].astype(np.float64))) for start, stop in zip(bounds, bounds[1:])]
    scores = np.concatenate(parts, axis=1) if len(parts) != 1 else parts[0]
    if normalized and scorer.normalize is not None:
        return scorer.normalize(scores, length)
    return scores


# float64 elements scored at once by group_scores (32 MB)
SCORE_CHUNK_ELEMENTS = 1 << 22


def aligned_count(total: int, keep: float, alignment: int = 1) -> int:
    """How many of ``total`` groups to keep: round(keep * total) to the nearest multiple of ``alignment``.

    At least one multiple of the alignment (or all groups, if fewer) is kept; halves round up
    (:func:`sparsecc.sparsity.alignment.align_count`).
    """
    check_keep(keep)
    if alignment < 1:
        raise OptionError(f"alignment must be a positive integer, got {alignment}")
    return align_count(total, keep * total, alignment)


def check_keep(keep: float, where: str | None = None) -> None:
    if not isinstance(keep, (int, float)) or not 0.0 < float(keep) < 1.0:
        raise OptionError(f"the share of groups kept must be strictly between 0 and 1, got {keep!r}",
                          where=where, fix="keep: 0.5 keeps half of the groups of each layer")


def _keep_top(scores: np.ndarray, count: int) -> tuple[np.ndarray, float]:
    """Boolean keep vector of the ``count`` best scores (ties: earlier position wins) and the threshold."""
    order = np.lexsort((np.arange(scores.size), -scores))  # best first, stable on position
    kept = np.zeros(scores.size, bool)
    kept[order[:count]] = True
    threshold = float(scores[order[count]]) if count < scores.size else float("-inf")
    return kept, threshold


def mask_from_rows(kept_rows: np.ndarray, weight_shape: tuple[int, ...], kind: str, group: int = 1,
                   trans_b: bool = False) -> np.ndarray:
    """Expand a [conv groups, rows] keep map to a boolean mask shaped like the ONNX weight."""
    _check_kind(kind)
    if kind in GEMM_KINDS:
        k, n = (weight_shape[1], weight_shape[0]) if trans_b else weight_shape
        mask = np.broadcast_to(kept_rows.reshape(k, 1), (k, n))
        return np.ascontiguousarray(mask.T if trans_b else mask)
    c_out = weight_shape[0]
    per = np.broadcast_to(kept_rows[:, None, :], (group, c_out // group, kept_rows.shape[1]))
    return np.ascontiguousarray(per.reshape(weight_shape))


@dataclass
class GroupMask:
    """A group-wise mask and the facts behind it.

    Attributes:
        mask: Boolean, shaped like the weight; True = kept.
        kept_rows: [conv groups, rows] keep map.
        threshold: Score at or below which groups were pruned (per conv group for grouped convs).
        scores: The group scores used.
    """

    mask: np.ndarray
    kept_rows: np.ndarray
    threshold: list[float]
    scores: np.ndarray

    @property
    def kept_groups(self) -> int:
        return int(self.kept_rows.sum())

    @property
    def total_groups(self) -> int:
        return int(self.kept_rows.size)


def groupwise_result(weight: np.ndarray, layer_kind: str, group: int = 1, keep: float = 0.5,
                     criterion: str = "l1", alignment: int = 1, trans_b: bool = False) -> GroupMask:
    """Like :func:`groupwise_mask`, with the keep map, thresholds and scores."""
    scores = group_scores(weight, layer_kind, group, criterion, trans_b)
    if criterion == "zeros":
        kept = scores > 0
        return GroupMask(mask_from_rows(kept, weight.shape, layer_kind, group, trans_b), kept,
                         [0.0] * kept.shape[0], scores)
    check_keep(keep)
    count = aligned_count(scores.shape[1], keep, alignment)
    kept = np.zeros(scores.shape, bool)
    thresholds = []
    for gi in range(scores.shape[0]):
        kept[gi], threshold = _keep_top(scores[gi], count)
        thresholds.append(threshold)
    return GroupMask(mask_from_rows(kept, weight.shape, layer_kind, group, trans_b), kept, thresholds, scores)


def groupwise_mask(weight: np.ndarray, layer_kind: str, group: int = 1, keep: float = 0.5,
                   criterion: str = "l1", alignment: int = 1, trans_b: bool = False) -> np.ndarray:
    """Per-layer group-wise mask, shaped like the weight (True = kept).

    Args:
        weight: The weight as stored in ONNX (Conv [C_out, C_in/g, kh, kw]; Gemm B as stored).
        layer_kind: conv, pointwise, grouped, depthwise, gemm or matmul.
        group: Conv ``group`` attribute; each conv group is thresholded on its own. Defaults to 1.
        keep: Share of the groups kept, strictly between 0 and 1 (ignored for "zeros"). Defaults to 0.5.
        criterion: "l1", "l2", "mean" or "zeros". Defaults to "l1".
        alignment: The kept count is a multiple of this. Defaults to 1.
        trans_b: Gemm weight stored [N, K] (transB=1). Defaults to False.

    Raises:
        OptionError: ``keep`` outside (0, 1), an unknown criterion or kind, a bad alignment.
    """
    return groupwise_result(weight, layer_kind, group, keep, criterion, alignment, trans_b).mask


def global_groupwise_masks(weights: dict[str, tuple[np.ndarray, str, int, bool]], keep: float = 0.5,
                           criterion: str = "l1", alignment: int = 1) -> tuple[dict[str, GroupMask], float]:
    """Group-wise masks under one threshold shared by all the given layers.

    Scores are normalised by group length so that layers compare fairly; the threshold keeps
    ``keep`` of all groups together. Each layer's kept count is then rounded to the alignment
    (at least one aligned tile per conv group, so no layer is cut off entirely).

    Args:
        weights: Per layer name: (weight as stored, layer kind, conv group, trans_b).
        keep: Share of all groups kept, strictly between 0 and 1. Defaults to 0.5.
        criterion: "l1", "l2" or "mean". Defaults to "l1".
        alignment: Kept counts are multiples of this. Defaults to 1.

    Returns:
        The mask of every layer, and the global threshold.
    """
    check_keep(keep)
    if criterion == "zeros":
        raise OptionError("criterion 'zeros' keeps the non-zero groups; it has no threshold to share",
                          fix="use threshold: per-layer with criterion: zeros")
    if not weights:
        raise OptionError("no layer to prune under the global threshold")
    scores = {name: group_scores(w, kind, g, criterion, tb, normalized=True)
              for name, (w, kind, g, tb) in weights.items()}
    pooled = np.concatenate([s.reshape(-1) for s in scores.values()])
    count = aligned_count(pooled.size, keep, 1)
    _, threshold = _keep_top(pooled, count)
    results = {}
    for name, (w, kind, g, tb) in weights.items():
        layer_scores = scores[name]
        per_group = int(np.ceil(np.mean((layer_scores > threshold).sum(axis=1))))
        rows = layer_scores.shape[1]
        count_here = align_count(rows, per_group, alignment)
        kept = np.zeros(layer_scores.shape, bool)
        thresholds = []
        for gi in range(layer_scores.shape[0]):
            kept[gi], layer_threshold = _keep_top(layer_scores[gi], count_here)
            thresholds.append(layer_threshold)
        results[name] = GroupMask(mask_from_rows(kept, w.shape, kind, g, tb), kept, thresholds, layer_scores)
    return results, float(threshold)

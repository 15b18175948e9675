"""Filter importance metrics for hybrid filter + 2:4 pruning (pure numpy).

From Wei et al., "CNN Models Acceleration Using Filter Pruning and Sparse
Tensor Core" (IJNC 2022), Eqs. 2-9. Filter pruning that knows 2:4 pruning
comes next should keep the filters whose weights survive 2:4 best; the
metrics here score every channel of one channel group:

- ``l1`` / ``l2``: plain norms of the filter (the producers' output channel).
- ``input-l1`` (Eq. 2): the filter's L1 norm averaged over its c*s^2 weights.
- ``output-l1`` (Eq. 3): the L1 norm of the weights that READ the channel
  (the consumers' input channel), averaged over their count.
- ``remanent-l1`` (Eq. 4): the L1 norm the filter keeps after 2:4 pruning.
- ``dominant-ratio`` (Eq. 5): all of the filter's magnitude over what 2:4 prunes.
- ``preservation`` (Eqs. 6-7): harmonic mean over the filter's groups of 4 of
  the kept share of each group.
- ``hybrid1`` (Eq. 8 on ranks): (1-k) rank(output-l1) + k rank(preservation).
- ``hybrid2`` (Eqs. 8-9): (1-k) (output-l1' - min)^2 + k preservation, output-l1' = output-l1 / mean
  (see :func:`hybrid2` for why it is normalised).

Layouts of the groups of 4 (``layout``): ``input-channel`` (TensorRT's: for a
conv filter [C, R, S], every 4 consecutive input channels at each (r, s);
the default) or ``kernel-width`` (the paper's: the filter flattened in memory
order C, R, S, every 4 consecutive weights, so they run along the kernel
width). For a GEMM weight both are the same: groups run along the reduction.
The rows and groups are those of :mod:`sparsecc.sparsity.two_four`.

The 2:4 metrics (Eqs. 4-7) are over the filter's own 2:4 groups, so they only
see the producer weights 2:4 will actually prune (``prunable``: one flag per
producer, as ``plan-24`` decides with :func:`sparsecc.sparsity.two_four.eligibility`;
without flags, a producer is prunable when its rows are a multiple of 4 long).
A depthwise conv or a first conv with C_in = 3 in the group therefore neither
counts as "well preserved" nor dilutes the others. A group with no prunable
producer is one 2:4 does not touch: the 2:4 metrics are *neutral* for it, every
live filter of the group gets the same score, so they do not order its filters
and do not favour or penalise the group against others. Scored alone that
score is 1; in a ranking across groups (:func:`filter_scores_by_group`,
``scope="global"``) it is the median score of the live channels 2:4 does prune,
so half of those rank below it.

A dead filter (all of its producer weights zero) carries nothing: it scores 0
under every metric (the hybrids included), whatever its consumers hold, so
it is the first to go. Scores are never NaN; ``dominant-ratio`` is +inf only
for a live filter 2:4 prunes nothing from (already 2:4).

Arrays: ``producers`` are the constants whose OUTPUT channels are the scored
channels, each with the channel axis first ([C, ...]); 1-D ones (bias, BN
scale) carry no filter weights and are ignored. ``consumers`` are the
constants that read the channels, each as [K_out, C, ...].

Scores are per channel, higher = more important. Choosing what to remove
(global or per layer, aligned to a multiple) is :func:`rank_global` /
:func:`rank_per_layer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sparsecc.errors import OptionError
from sparsecc.sparsity.alignment import align_count
from sparsecc.sparsity.two_four import LAYOUTS, check_layout, kept_per_group, to_rows

__all__ = ["METRICS", "LAYOUTS", "filter_scores", "filter_scores_by_group", "input_l1", "output_l1", "l1", "l2",
           "remanent_l1", "dominant_ratio", "preservation", "group_magnitudes", "rank_transform",
           "distance_to_min_squared", "hybrid1", "hybrid2", "normalize_by_mean", "rank_global", "rank_per_layer",
           "zero_dead_filters", "CROSS_GROUP"]

NEUTRAL = 1.0
"""Score of every live filter of a group 2:4 does not touch, under a 2:4 metric scored alone."""


def _filter_weights(producers: Sequence[np.ndarray]) -> list[np.ndarray]:
    weights = [np.asarray(p, dtype=np.float64) for p in producers if np.ndim(p) >= 2]
    if not weights:
        raise ValueError("no producer weight with at least 2 dimensions: the channels have no filter to score")
    channels = {w.shape[0] for w in weights}
    if len(channels) != 1:
        raise ValueError(f"producers disagree on the channel count: {sorted(channels)}")
    return weights


def _consumer_weights(consumers: Sequence[np.ndarray]) -> list[np.ndarray]:
    weights = [np.asarray(c, dtype=np.float64) for c in consumers]
    if not weights:
        raise ValueError("output-based metrics need at least one consumer weight")
    channels = {w.shape[1] for w in weights}
    if len(channels) != 1:
        raise ValueError(f"consumers disagree on the channel count (axis 1): {sorted(channels)}")
    return weights


def _dead(producers: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per channel: are all of its producer weights zero? None when no producer has filter weights."""
    weights = [np.asarray(p) for p in producers if np.ndim(p) >= 2]
    if not weights:
        return None
    return ~np.any([np.any(w.reshape(w.shape[0], -1) != 0, axis=1) for w in weights], axis=0)


def group_magnitudes(producers: Sequence[np.ndarray], layout: str = "input-channel",
                     prunable: Sequence[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per filter and 2:4 group of 4: (w, w') = the group's |w| sum and the sum of its 2 largest |w|.

    Args:
        producers: Producer weights, channel axis first.
        layout: "input-channel" or "kernel-width". Defaults to "input-channel".
        prunable: One flag per producer: will 2:4 prune it? Defaults to "its rows are a
            multiple of 4 long". A producer whose rows are not is never prunable.

    Returns:
        Two [C, n] arrays (n groups per filter, the prunable producers' groups side by side);
        n is 0 when no producer is prunable.
    """
    check_layout(layout)
    if prunable is not None and len(prunable) != len(producers):
        raise ValueError(f"{len(prunable)} prunable flag(s) for {len(producers)} producer(s)")
    channels = _filter_weights(producers)[0].shape[0]
    total, kept = [np.zeros((channels, 0))], [np.zeros((channels, 0))]
    for i, weight in enumerate(producers):
        if np.ndim(weight) < 2 or (prunable is not None and not prunable[i]):
            continue
        rows, _ = to_rows(np.asarray(weight, dtype=np.float64), "Conv", False, layout)
        if rows.shape[1] % 4:
            continue  # 2:4 cannot touch these rows
        magnitudes = np.abs(rows).reshape(channels, -1)  # a filter's rows are consecutive
        total.append(magnitudes.reshape(channels, -1, 4).sum(axis=2))
        kept.append(kept_per_group(magnitudes))
    return np.concatenate(total, axis=1), np.concatenate(kept, axis=1)


def _remanent_raw(total: np.ndarray, kept: np.ndarray) -> np.ndarray:
    return kept.sum(axis=1)


def _dominant_raw(total: np.ndarray, kept: np.ndarray) -> np.ndarray:
    whole, pruned = total.sum(axis=1), (total - kept).sum(axis=1)
    ratio = np.divide(whole, pruned, out=np.full(whole.shape, np.inf), where=pruned > 0)
    return np.where(whole > 0, ratio, 0.0)


def _preservation_raw(total: np.ndarray, kept: np.ndarray) -> np.ndarray:
    alpha = np.divide(kept, total, out=np.ones(total.shape), where=total > 0)
    inverse = (1.0 / alpha).sum(axis=1)
    return np.where(total.sum(axis=1) > 0, total.shape[1] / np.where(inverse > 0, inverse, 1.0), 0.0)


_TWO_FOUR = {"remanent-l1": _remanent_raw, "dominant-ratio": _dominant_raw, "preservation": _preservation_raw}


def _two_four_scores(metric: str, producers: Sequence[np.ndarray], layout: str,
                     prunable: Sequence[bool] | None) -> np.ndarray:
    """A 2:4 metric per channel; NaN for the live channels of a group 2:4 does not touch (to be made neutral)."""
    total, kept = group_magnitudes(producers, layout, prunable)
    if total.shape[1] == 0:
        return np.where(_dead(producers), 0.0, np.nan)
    return _TWO_FOUR[metric](total, kept)


def l1(producers: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of |w| of each filter (Li et al.), over every producer weight."""
    return sum(np.abs(w).reshape(w.shape[0], -1).sum(axis=1) for w in _filter_weights(producers))


def l2(producers: Sequence[np.ndarray]) -> np.ndarray:
    """Euclidean norm of each filter, over every producer weight."""
    return np.sqrt(sum((w ** 2).reshape(w.shape[0], -1).sum(axis=1) for w in _filter_weights(producers)))


def input_l1(producers: Sequence[np.ndarray]) -> np.ndarray:
    """Eq. 2: ||F_i||_1 / (c s^2), the mean |w| of each filter (comparable across layers)."""
    weights = _filter_weights(producers)
    total = sum(np.abs(w).reshape(w.shape[0], -1).sum(axis=1) for w in weights)
    return total / sum(w[0].size for w in weights)


def output_l1(consumers: Sequence[np.ndarray]) -> np.ndarray:
    """Eq. 3: mean |w| of the consumer weights that read each channel (all consumers together)."""
    weights = _consumer_weights(consumers)
    total = sum(np.abs(np.moveaxis(w, 1, 0)).reshape(w.shape[1], -1).sum(axis=1) for w in weights)
    return total / sum(w.size // w.shape[1] for w in weights)


def _alone(scores: np.ndarray) -> np.ndarray:
    """A 2:4 metric scored alone: the channels of a group 2:4 does not touch get :data:`NEUTRAL`."""
    return np.where(np.isnan(scores), NEUTRAL, scores)


def remanent_l1(producers: Sequence[np.ndarray], layout: str = "input-channel",
                prunable: Sequence[bool] | None = None) -> np.ndarray:
    """Eq. 4: r_i = sum_k w'_ik, the L1 norm each filter keeps after 2:4 pruning.

    :data:`NEUTRAL` for every live filter of a group with no prunable producer.
    """
    return _alone(_two_four_scores("remanent-l1", producers, layout, prunable))


def dominant_ratio(producers: Sequence[np.ndarray], layout: str = "input-channel",
                   prunable: Sequence[bool] | None = None) -> np.ndarray:
    """Eq. 5: d_i = sum_k w_ik / sum_k (w_ik - w'_ik).

    +inf for a live filter 2:4 prunes nothing from (already 2:4); 0 for a filter with no
    magnitude in its 2:4 groups; :data:`NEUTRAL` for every live filter of a group with no
    prunable producer.
    """
    return _alone(_two_four_scores("dominant-ratio", producers, layout, prunable))


def preservation(producers: Sequence[np.ndarray], layout: str = "input-channel",
                 prunable: Sequence[bool] | None = None) -> np.ndarray:
    """Eqs. 6-7: harmonic mean over the filter's 2:4 groups of alpha_ik = w'_ik / w_ik.

    An all-zero group of a live filter loses nothing, so its alpha is 1. Every alpha lies in
    [0.5, 1] (the 2 largest of 4 hold at least half), so the mean is defined. A filter with no
    magnitude in its 2:4 groups scores 0; every live filter of a group with no prunable
    producer scores :data:`NEUTRAL`.
    """
    return _alone(_two_four_scores("preservation", producers, layout, prunable))


def rank_transform(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n in ascending order (larger value, larger rank); ties share their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def distance_to_min_squared(values: np.ndarray) -> np.ndarray:
    """Eq. 9: s_i = (m_i - min_j m_j)^2."""
    values = np.asarray(values, dtype=np.float64)
    return (values - values.min()) ** 2 if values.size else values


def _check_k(k: float) -> None:
    if not 0.0 <= k <= 1.0:
        raise OptionError(f"hybrid weight k = {k} is outside [0, 1]", where="k option",
                          fix="k mixes the two metrics as (1-k) u + k v; the paper uses 0.5")


def hybrid1(u: np.ndarray, v: np.ndarray, k: float = 0.5) -> np.ndarray:
    """Eq. 8 on ranks: (1-k) rank(u) + k rank(v) (u = output-l1, v = preservation)."""
    _check_k(k)
    return (1 - k) * rank_transform(u) + k * rank_transform(v)


def hybrid2(u: np.ndarray, v: np.ndarray, k: float = 0.5, normalize_u: bool = True) -> np.ndarray:
    """Eqs. 8-9: (1-k) (u' - min u')^2 + k v (u = output-l1, v = preservation, untransformed).

    The paper relies on the squared term being the larger one, so that output
    L1 "dictates the importance of most filters" and only the filters with the
    lowest output L1 are decided by preservation. With u an average |w| (Eq. 3,
    typically ~1e-2) the literal square is ~1e-4, far below v in [0.5, 1], and
    preservation alone would decide. So u is first divided by its mean over the
    filters being ranked (u' = u / mean u), which restores the paper's regime
    whatever the weight scale. ``normalize_u=False`` gives the literal formula.
    """
    _check_k(k)
    u = np.asarray(u, dtype=np.float64)
    if normalize_u and u.size and u.mean() > 0:
        u = u / u.mean()
    return (1 - k) * distance_to_min_squared(u) + k * np.asarray(v, dtype=np.float64)


def _metric_fn(metric: str) -> Callable[..., np.ndarray]:
    def score(producers, consumers, *, k=0.5, layout="input-channel", prunable=None):
        if metric in _TWO_FOUR:
            return _alone(_two_four_scores(metric, producers, layout, prunable))
        if metric in _HYBRIDS:
            u, v = output_l1(consumers), _alone(_two_four_scores("preservation", producers, layout, prunable))
            return _HYBRIDS[metric](u, v, k)
        return _PLAIN[metric](producers, consumers)
    score.__name__ = metric.replace("-", "_")
    return score


_PLAIN = {"l1": lambda p, c: l1(p), "l2": lambda p, c: l2(p), "input-l1": lambda p, c: input_l1(p),
          "output-l1": lambda p, c: output_l1(c)}
_HYBRIDS = {"hybrid1": hybrid1, "hybrid2": hybrid2}

METRICS: dict[str, Callable[..., np.ndarray]] = {
    name: _metric_fn(name) for name in ("l1", "l2", "input-l1", "output-l1", "remanent-l1", "dominant-ratio",
                                        "preservation", "hybrid1", "hybrid2")}
"""Every metric as ``fn(producers, consumers, *, k, layout, prunable) -> scores`` (one per channel).

These are the raw metrics; :func:`filter_scores` also gives dead filters 0. They are registered as
importance functions of a group under the same names (:mod:`sparsecc.sparsity.importance`)."""

CROSS_GROUP = tuple(_TWO_FOUR) + tuple(_HYBRIDS)
"""Metrics whose global ranking transforms scores over every group at once (:func:`filter_scores_by_group`)."""


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise OptionError(f"unknown filter metric {metric!r}", where="metric option",
                          fix=f"use one of {', '.join(METRICS)}")


def zero_dead_filters(scores: np.ndarray, producers: Sequence[np.ndarray]) -> np.ndarray:
    """``scores`` with every dead filter (all of its producer weights zero) at 0."""
    dead = _dead(producers)
    return scores if dead is None else np.where(dead, 0.0, scores)


def filter_scores(metric: str, producers: Sequence[np.ndarray], consumers: Sequence[np.ndarray], *,
                  k: float = 0.5, layout: str = "input-channel", prunable: Sequence[bool] | None = None
                  ) -> np.ndarray:
    """One score per channel of one channel group, higher = more important; never NaN.

    The hybrid metrics' transformations (ranks, distance to the minimum) are
    taken over this group's channels only; for a global ranking across layers
    use :func:`filter_scores_by_group`, which takes them over every channel.

    Args:
        metric: A key of :data:`METRICS`.
        producers: Producer weights, channel axis first ([C, ...]).
        consumers: Consumer weights as [K_out, C, ...].
        k: Weight of the 2:4 term in the hybrid metrics (Eq. 8). Defaults to 0.5.
        layout: Groups of 4 along "input-channel" or "kernel-width". Defaults to "input-channel".
        prunable: One flag per producer: will 2:4 prune it (see :func:`group_magnitudes`)?
            Defaults to "its rows are a multiple of 4 long".
    """
    _check_metric(metric)
    check_layout(layout)
    return zero_dead_filters(METRICS[metric](producers, consumers, k=k, layout=layout, prunable=prunable), producers)


def _unpack(value) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[bool] | None]:
    producers, consumers, *rest = value
    return producers, consumers, (rest[0] if rest else None)


def _neutral_fill(raw: list[np.ndarray], dead: list[np.ndarray | None]) -> list[np.ndarray]:
    """Give the channels of groups 2:4 does not touch (NaN) the median of the live channels it prunes."""
    defined = [r[~np.isnan(r) & ~(np.zeros(r.shape, bool) if d is None else d)] for r, d in zip(raw, dead)]
    pooled = np.concatenate(defined) if defined else np.zeros(0)
    neutral = float(np.median(pooled)) if pooled.size else NEUTRAL
    return [np.where(np.isnan(r), neutral, r) for r in raw]


def filter_scores_by_group(metric: str, groups: Mapping[str, tuple], *, k: float = 0.5,
                           layout: str = "input-channel", scope: str = "global") -> dict[str, np.ndarray]:
    """Scores for several channel groups at once, comparable across groups for a global ranking.

    The paper ranks filters globally, so the hybrid metrics' transformations
    need every filter of every layer: with ``scope="global"`` the ranks and
    the minimum of Eq. 9 are taken over all groups together. Also with
    ``scope="global"``, a group 2:4 does not touch is neutral under the 2:4
    metrics (and the 2:4 term of the hybrids): its live channels get the
    median score of the live channels 2:4 prunes, over all groups. The hybrids' output-L1
    term is normalised per group before the global transformation (see the comment below).

    Args:
        metric: A key of :data:`METRICS`.
        groups: Group id -> (producers, consumers) or (producers, consumers, prunable), as for
            :func:`filter_scores`.
        k: Weight of the 2:4 term in the hybrid metrics. Defaults to 0.5.
        layout: "input-channel" or "kernel-width". Defaults to "input-channel".
        scope: "global" or "per-layer" (transformations within each group). Defaults to "global".
    """
    _check_metric(metric)
    check_layout(layout)
    if scope not in ("global", "per-layer"):
        raise OptionError(f"unknown scope {scope!r}", where="scope option", fix="use global or per-layer")
    unpacked = {gid: _unpack(value) for gid, value in groups.items()}
    if scope == "per-layer" or metric not in _HYBRIDS and metric not in _TWO_FOUR:
        return {gid: filter_scores(metric, p, c, k=k, layout=layout, prunable=f)
                for gid, (p, c, f) in unpacked.items()}
    ids = list(unpacked)
    dead = [_dead(unpacked[gid][0]) for gid in ids]
    two_four = "preservation" if metric in _HYBRIDS else metric
    v = _neutral_fill([_two_four_scores(two_four, p, layout, f) for p, _, f in unpacked.values()], dead)
    if metric in _HYBRIDS:
        # output L1 is not comparable across layers (it is an average of the *consumers'* weights,
        # e.g. a small classifier reads the last group): each group's u is divided by its own mean
        # first, so the global ranking compares filters within their layer's scale.
        u = [normalize_by_mean(output_l1(unpacked[gid][1])) for gid in ids]
        bounds = np.cumsum([0] + [part.size for part in u])
        flat = _HYBRIDS[metric](np.concatenate(u) if ids else np.zeros(0),
                                np.concatenate(v) if ids else np.zeros(0), k)
        v = [flat[bounds[i]:bounds[i + 1]] for i in range(len(ids))]
    return {gid: scores if d is None else np.where(d, 0.0, scores) for gid, scores, d in zip(ids, v, dead)}


def normalize_by_mean(scores: np.ndarray) -> np.ndarray:
    """Scores divided by the mean of their finite values, for a global ranking of groups of unequal scale.

    +inf stays +inf (it does not enter the mean), 0 stays 0, and nothing becomes NaN; scores
    with no positive finite mean are returned as they are.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    mean = float(finite.mean()) if finite.size else 0.0
    return scores / mean if mean > 0 else scores


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise OptionError(f"filter pruning ratio {ratio} is outside [0, 1)", where="ratio option",
                          fix="give the share of filters to remove, e.g. 0.3")


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    return np.sort(np.argsort(scores, kind="stable")[:count]).astype(np.int64)


def _refuse_all(gid: str, size: int, ratio: float, how: str) -> None:
    raise OptionError(f"pruning ratio {ratio} would remove all {size} filters of layer '{gid}' ({how})",
                      where=f"layer '{gid}'",
                      fix="lower the ratio, use per-layer ranking, or exclude this layer from filter pruning")


def _scores_of(gid: str, scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"the filter scores of layer '{gid}' contain NaN: a metric is broken for it")
    return scores


def _removed(gid: str, scores: np.ndarray, count: int, ratio: float, multiple: int | None, how: str) -> np.ndarray:
    """The ``count`` lowest channels of a group, after rounding the kept count to ``multiple``."""
    size = scores.size
    keep = size - count
    if multiple and multiple > 1:
        keep = align_count(size, keep, multiple)  # a group no larger than one multiple is left whole
    if size and keep <= 0:
        _refuse_all(gid, size, ratio, how)
    return _lowest(scores, size - keep)


def rank_global(scores_by_group: Mapping[str, np.ndarray], ratio: float, *, multiple: int | None = 8
                ) -> dict[str, np.ndarray]:
    """The channels to remove when ``ratio`` of ALL channels go, lowest scores first across groups.

    Scores must be comparable across groups (see :func:`filter_scores_by_group`).

    Args:
        scores_by_group: Group (or layer) id -> one score per channel.
        ratio: Share of all channels to remove, in [0, 1).
        multiple: Round each group's kept count to the nearest multiple of this (8 suits tensor
            cores, 32 GPU tiles), at least one multiple; a group no larger than one multiple is left
            whole (:func:`sparsecc.sparsity.alignment.align_count`). None or 1 turns it off.
            Defaults to 8.

    Returns:
        Group id -> sorted channel indices to remove (empty where none).

    Raises:
        OptionError: The ratio is out of range, or the global threshold takes every channel of a
            group and no rounding keeps any (only possible with ``multiple`` None or 1).
    """
    _check_ratio(ratio)
    ids = list(scores_by_group)
    scores = [_scores_of(gid, scores_by_group[gid]) for gid in ids]
    flat = np.concatenate(scores) if ids else np.zeros(0)
    n_remove = int(round(ratio * flat.size))
    removed = np.zeros(flat.size, dtype=bool)
    removed[np.argsort(flat, kind="stable")[:n_remove]] = True
    result, start = {}, 0
    for gid, group_scores in zip(ids, scores):
        size = group_scores.size
        count = int(removed[start:start + size].sum())
        start += size
        result[gid] = _removed(gid, group_scores, count, ratio, multiple,
                               "its scores are all below the global threshold")
    return result


def rank_per_layer(scores_by_group: Mapping[str, np.ndarray], ratio: float, *, multiple: int | None = 8
                   ) -> dict[str, np.ndarray]:
    """The channels to remove when ``ratio`` of EACH group's channels go, lowest scores first.

    Args:
        scores_by_group: Group (or layer) id -> one score per channel.
        ratio: Share of each group's channels to remove, in [0, 1).
        multiple: Round kept counts to this multiple, as in :func:`rank_global`. Defaults to 8.

    Raises:
        OptionError: The ratio is out of range, or rounds to removing a whole group that no
            rounding to ``multiple`` keeps.
    """
    _check_ratio(ratio)
    result = {}
    for gid, group_scores in scores_by_group.items():
        group_scores = _scores_of(gid, group_scores)
        count = int(round(ratio * group_scores.size))
        result[gid] = _removed(gid, group_scores, count, ratio, multiple,
                               f"{ratio} x {group_scores.size} rounds to {count}")
    return result

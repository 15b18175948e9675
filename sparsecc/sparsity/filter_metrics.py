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
A filter whose group length is not a multiple of 4 is one 2:4 pruning will
not touch (TensorRT cannot run it sparse), so it keeps all of its magnitude.

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

__all__ = ["METRICS", "LAYOUTS", "filter_scores", "filter_scores_by_group", "input_l1", "output_l1", "l1", "l2",
           "remanent_l1", "dominant_ratio", "preservation", "group_magnitudes", "rank_transform",
           "distance_to_min_squared", "hybrid1", "hybrid2", "rank_global", "rank_per_layer"]

LAYOUTS = ("input-channel", "kernel-width")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise OptionError(f"unknown 2:4 layout {layout!r}", where="layout option",
                          fix=f"use one of {', '.join(LAYOUTS)} (input-channel is TensorRT's)")


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


def _rows_of_groups(weight: np.ndarray, layout: str) -> np.ndarray:
    """One producer [C, ...] as [C, rows, L]: 2:4 groups are 4 consecutive elements of each row."""
    c = weight.shape[0]
    if layout == "kernel-width" or weight.ndim == 2:
        return weight.reshape(c, 1, -1)
    # input-channel: axis 1 is the filter's input channels; one row per kernel position
    return np.moveaxis(weight, 1, -1).reshape(c, -1, weight.shape[1])


def group_magnitudes(producers: Sequence[np.ndarray], layout: str = "input-channel"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per filter and group of 4: (w, w') = the group's |w| sum and the sum of its 2 largest |w|.

    Args:
        producers: Producer weights, channel axis first.
        layout: "input-channel" or "kernel-width". Defaults to "input-channel".

    Returns:
        Two [C, n] arrays (n groups per filter, all producers' groups side by side).
        A row whose length is not a multiple of 4 is left whole by 2:4, so its
        groups have w' = w.
    """
    _check_layout(layout)
    total, kept = [], []
    for weight in _filter_weights(producers):
        rows = np.abs(_rows_of_groups(weight, layout))
        c, n_rows, length = rows.shape
        if length % 4:
            sums = rows.sum(axis=2)  # not prunable: one "group" per row, all of it kept
            total.append(sums)
            kept.append(sums)
            continue
        groups = rows.reshape(c, n_rows * length // 4, 4)
        total.append(groups.sum(axis=2))
        kept.append(np.sort(groups, axis=2)[:, :, 2:].sum(axis=2))
    return np.concatenate(total, axis=1), np.concatenate(kept, axis=1)


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


def remanent_l1(producers: Sequence[np.ndarray], layout: str = "input-channel") -> np.ndarray:
    """Eq. 4: r_i = sum_k w'_ik, the L1 norm each filter keeps after 2:4 pruning."""
    _, kept = group_magnitudes(producers, layout)
    return kept.sum(axis=1)


def dominant_ratio(producers: Sequence[np.ndarray], layout: str = "input-channel") -> np.ndarray:
    """Eq. 5: d_i = sum_k w_ik / sum_k (w_ik - w'_ik); +inf for a filter 2:4 prunes nothing from."""
    total, kept = group_magnitudes(producers, layout)
    pruned = (total - kept).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pruned > 0, total.sum(axis=1) / np.where(pruned > 0, pruned, 1.0), np.inf)


def preservation(producers: Sequence[np.ndarray], layout: str = "input-channel") -> np.ndarray:
    """Eqs. 6-7: harmonic mean over the filter's groups of alpha_ik = w'_ik / w_ik.

    An all-zero group loses nothing, so its alpha is 1. Every alpha lies in
    [0.5, 1] (the 2 largest of 4 hold at least half), so the mean is defined.
    """
    total, kept = group_magnitudes(producers, layout)
    alpha = np.where(total > 0, kept / np.where(total > 0, total, 1.0), 1.0)
    return alpha.shape[1] / (1.0 / alpha).sum(axis=1)


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


def _hybrid_inputs(producers, consumers, layout):
    return output_l1(consumers), preservation(producers, layout)


METRICS: dict[str, Callable[..., np.ndarray]] = {
    "l1": lambda producers, consumers, *, k=0.5, layout="input-channel": l1(producers),
    "l2": lambda producers, consumers, *, k=0.5, layout="input-channel": l2(producers),
    "input-l1": lambda producers, consumers, *, k=0.5, layout="input-channel": input_l1(producers),
    "output-l1": lambda producers, consumers, *, k=0.5, layout="input-channel": output_l1(consumers),
    "remanent-l1": lambda producers, consumers, *, k=0.5, layout="input-channel": remanent_l1(producers, layout),
    "dominant-ratio": lambda producers, consumers, *, k=0.5, layout="input-channel":
        dominant_ratio(producers, layout),
    "preservation": lambda producers, consumers, *, k=0.5, layout="input-channel": preservation(producers, layout),
    "hybrid1": lambda producers, consumers, *, k=0.5, layout="input-channel":
        hybrid1(*_hybrid_inputs(producers, consumers, layout), k),
    "hybrid2": lambda producers, consumers, *, k=0.5, layout="input-channel":
        hybrid2(*_hybrid_inputs(producers, consumers, layout), k),
}
"""Every metric as ``fn(producers, consumers, *, k, layout) -> scores`` (one per channel)."""

_HYBRIDS = {"hybrid1": hybrid1, "hybrid2": hybrid2}


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise OptionError(f"unknown filter metric {metric!r}", where="metric option",
                          fix=f"use one of {', '.join(METRICS)}")


def filter_scores(metric: str, producers: Sequence[np.ndarray], consumers: Sequence[np.ndarray], *,
                  k: float = 0.5, layout: str = "input-channel") -> np.ndarray:
    """One score per channel of one channel group, higher = more important.

    The hybrid metrics' transformations (ranks, distance to the minimum) are
    taken over this group's channels only; for a global ranking across layers
    use :func:`filter_scores_by_group`, which takes them over every channel.

    Args:
        metric: A key of :data:`METRICS`.
        producers: Producer weights, channel axis first ([C, ...]).
        consumers: Consumer weights as [K_out, C, ...].
        k: Weight of the 2:4 term in the hybrid metrics (Eq. 8). Defaults to 0.5.
        layout: Groups of 4 along "input-channel" or "kernel-width". Defaults to "input-channel".
    """
    _check_metric(metric)
    _check_layout(layout)
    return METRICS[metric](producers, consumers, k=k, layout=layout)


def filter_scores_by_group(metric: str, groups: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
                           *, k: float = 0.5, layout: str = "input-channel", scope: str = "global"
                           ) -> dict[str, np.ndarray]:
    """Scores for several channel groups at once, comparable across groups for a global ranking.

    The paper ranks filters globally, so the hybrid metrics' transformations
    need every filter of every layer: with ``scope="global"`` the ranks and
    the minimum of Eq. 9 are taken over all groups together.

    Args:
        metric: A key of :data:`METRICS`.
        groups: Group id -> (producers, consumers), as for :func:`filter_scores`.
        k: Weight of the 2:4 term in the hybrid metrics. Defaults to 0.5.
        layout: "input-channel" or "kernel-width". Defaults to "input-channel".
        scope: "global" or "per-layer" (transformations within each group). Defaults to "global".
    """
    _check_metric(metric)
    _check_layout(layout)
    if scope not in ("global", "per-layer"):
        raise OptionError(f"unknown scope {scope!r}", where="scope option", fix="use global or per-layer")
    if metric not in _HYBRIDS or scope == "per-layer":
        return {gid: filter_scores(metric, p, c, k=k, layout=layout) for gid, (p, c) in groups.items()}
    ids = list(groups)
    inputs = [_hybrid_inputs(groups[gid][0], groups[gid][1], layout) for gid in ids]
    u = np.concatenate([pair[0] for pair in inputs]) if ids else np.zeros(0)
    v = np.concatenate([pair[1] for pair in inputs]) if ids else np.zeros(0)
    scores = _HYBRIDS[metric](u, v, k)
    bounds = np.cumsum([0] + [pair[0].size for pair in inputs])
    return {gid: scores[bounds[i]:bounds[i + 1]] for i, gid in enumerate(ids)}


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise OptionError(f"filter pruning ratio {ratio} is outside [0, 1)", where="ratio option",
                          fix="give the share of filters to remove, e.g. 0.3")


def _aligned_keep(size: int, keep: int, multiple: int | None) -> int:
    """Round a kept count to the nearest multiple, at least one multiple, at most the whole group."""
    if not multiple or multiple <= 1:
        return keep
    if size <= multiple:
        return size
    rounded = int(np.floor(keep / multiple + 0.5)) * multiple
    return int(min(max(rounded, multiple), size))


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    return np.sort(np.argsort(scores, kind="stable")[:count]).astype(np.int64)


def _refuse_all(gid: str, size: int, ratio: float, how: str) -> None:
    raise OptionError(f"pruning ratio {ratio} would remove all {size} filters of layer '{gid}' ({how})",
                      where=f"layer '{gid}'",
                      fix="lower the ratio, use per-layer ranking, or exclude this layer from filter pruning")


def rank_global(scores_by_group: Mapping[str, np.ndarray], ratio: float, *, multiple: int | None = 8
                ) -> dict[str, np.ndarray]:
    """The channels to remove when ``ratio`` of ALL channels go, lowest scores first across groups.

    Scores must be comparable across groups (see :func:`filter_scores_by_group`).

    Args:
        scores_by_group: Group (or layer) id -> one score per channel.
        ratio: Share of all channels to remove, in [0, 1).
        multiple: Round each group's kept count to this multiple (8 suits tensor cores, 32 GPU
            tiles); a group no larger than one multiple is left whole. None or 1 turns it off.
            Defaults to 8.

    Returns:
        Group id -> sorted channel indices to remove (empty where none).

    Raises:
        OptionError: The ratio is out of range, or the global threshold takes every channel of a group.
    """
    _check_ratio(ratio)
    ids = list(scores_by_group)
    scores = [np.asarray(scores_by_group[gid], dtype=np.float64) for gid in ids]
    flat = np.concatenate(scores) if ids else np.zeros(0)
    n_remove = int(round(ratio * flat.size))
    removed = np.zeros(flat.size, dtype=bool)
    removed[np.argsort(flat, kind="stable")[:n_remove]] = True
    result, start = {}, 0
    for gid, group_scores in zip(ids, scores):
        size = group_scores.size
        count = int(removed[start:start + size].sum())
        start += size
        if size and count == size:
            _refuse_all(gid, size, ratio, "its scores are all below the global threshold")
        keep = _aligned_keep(size, size - count, multiple)
        result[gid] = _lowest(group_scores, size - keep)
    return result


def rank_per_layer(scores_by_group: Mapping[str, np.ndarray], ratio: float, *, multiple: int | None = 8
                   ) -> dict[str, np.ndarray]:
    """The channels to remove when ``ratio`` of EACH group's channels go, lowest scores first.

    Args:
        scores_by_group: Group (or layer) id -> one score per channel.
        ratio: Share of each group's channels to remove, in [0, 1).
        multiple: Round kept counts to this multiple, as in :func:`rank_global`. Defaults to 8.

    Raises:
        OptionError: The ratio is out of range or rounds to removing a whole group.
    """
    _check_ratio(ratio)
    result = {}
    for gid, group_scores in scores_by_group.items():
        group_scores = np.asarray(group_scores, dtype=np.float64)
        size = group_scores.size
        count = int(round(ratio * size))
        if size and count >= size:
            _refuse_all(gid, size, ratio, f"{ratio} x {size} rounds to {count}")
        keep = _aligned_keep(size, size - count, multiple)
        result[gid] = _lowest(group_scores, size - keep)
    return result

"""Channels no layer reads, removed from the layers that make them (an exact edit).

A channel every consumer weight ignores (all zero along its input channel) contributes nothing:
it can leave its producers, its per-channel parameters (bias, BatchNorm, scales), depthwise convs
on the way, and the consumers' weights at once, as :func:`~sparsecc.dependency.build_channel_groups`
finds them. A lowering pass folds them first, so the Gather of the kept channels never has to be
emitted; groups the analysis cannot edit say why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsecc.dependency.analysis import build_channel_groups
from sparsecc.dependency.edits import consumer_weights, reindex_groups
from sparsecc.errors import ShapeError
from sparsecc.model import Model


@dataclass
class UnreadFold:
    """What :func:`fold_unread_channels` did.

    Attributes:
        groups: Channel groups shrunk.
        edited: The weight and per-channel parameter tensors reindexed (plan entries of them are stale).
        readers: Per consumer layer, what happened to the channels it did not read ("N unused input
            channel(s) folded into producer 'P' (a -> b)", or "not folded: " and the blockers).
        error: Why nothing was analysed (activation shapes unknown), or None.
    """

    groups: int = 0
    edited: set[str] = field(default_factory=set)
    readers: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def unread_channels(model: Model, group) -> np.ndarray | None:
    """Per channel of ``group``: is it read by some consumer weight? None when no weight reads the group."""
    reads = consumer_weights(model, group)
    if not reads:
        return None
    used = np.zeros(group.size, dtype=bool)
    for weight in reads:  # [K_out, C, ...]: channel c is read where any of its weights is non-zero
        used |= np.any(weight != 0, axis=tuple(a for a in range(weight.ndim) if a != 1))
    return used


def fold_unread_channels(model: Model) -> UnreadFold:
    """Remove every channel no consumer weight reads from all its coupled uses (in place)."""
    fold = UnreadFold()
    try:
        groups = build_channel_groups(model)
    except ShapeError as err:
        fold.error = err.what
        return fold
    edits = []
    for group in groups:
        used = unread_channels(model, group)
        if used is None or used.all() or not used.any():
            continue
        readers = list(dict.fromkeys(u.node for u in group.consumers))
        if not group.editable():
            for node in readers:
                fold.readers[node] = "not folded: " + "; ".join(group.blockers)
            continue
        edits.append((group, np.flatnonzero(used)))
        fold.edited.update(u.tensor for u in group.producers + group.consumers if u.kind in ("weight", "param"))
        makers = group.weight_nodes()
        into = f"producer '{makers[0]}'" if len(makers) == 1 else "producers " + ", ".join(f"'{m}'" for m in makers)
        for node in readers:
            fold.readers[node] = (f"{group.size - int(used.sum())} unused input channel(s) folded into {into} "
                                  f"({group.size} -> {int(used.sum())})")
    if edits:
        reindex_groups(model, edits)
    fold.groups = len(edits)
    return fold

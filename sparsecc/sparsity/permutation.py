"""Channel permutation search for 2:4 sparsity (pure numpy).

Pool and Yu, "Channel Permutations for N:M Sparsity" (NeurIPS 2021; NVIDIA
ASP's ``permutation_search_kernels``): the input channels of a layer can be
reordered, if the channels' producers are reordered the same way, without
changing what the network computes. 2:4 keeps the 2 largest |w| of every 4
consecutive input channels, so the order decides which weights survive; a
good order keeps more of the magnitude.

The search here works on the magnitudes of every consumer of one tensor
together (siblings reading the same channels must share the permutation):

1. initial order: the better of the identity and a greedy deal (channels by
   descending L1 norm, dealt round-robin so every stripe of 4 gets one
   channel of each quartile and its two strong ones survive);
2. best-improvement channel swaps between stripes, evaluated for every pair
   at once from a table of "replace channel i by channel j" gains that is
   updated incrementally (only the two stripes a swap touches change);
3. seeded random kicks (a few random swaps, then climb again; the best order
   is kept) to leave local optima;
4. an exhaustive pass over pairs of stripes (all 35 ways to split their 8
   channels), as in ASP's stripe-group search, while its work is bounded.

Large layers are searched in windows of channels. Every bound is a count,
never a time, so a seed gives the same permutation on every machine. The
returned order never keeps less magnitude than the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from sparsecc.errors import ShapeError
from sparsecc.sparsity.two_four import kept_per_group, top2_sum

__all__ = ["PermutationResult", "search_matrix", "kept_by_permutation", "search_permutation"]


@dataclass
class PermutationResult:
    """A channel order and what it gains.

    Attributes:
        permutation: New position j holds old channel ``permutation[j]`` (apply as ``w[:, permutation]``).
        before: Magnitude 2:4 keeps in the original order.
        after: Magnitude 2:4 keeps in the new order (>= before).
        swaps: Improving moves made.
    """

    permutation: np.ndarray
    before: float
    after: float
    swaps: int = 0

    @property
    def gain(self) -> float:
        """Relative increase of the kept magnitude (0.01 = 1% more)."""
        return (self.after - self.before) / self.before if self.before > 0 else 0.0

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.permutation, np.arange(self.permutation.size)))


def search_matrix(consumers: Sequence[np.ndarray]) -> np.ndarray:
    """Consumer weights [K_out, C, ...] as one [rows, C] magnitude matrix (2:4 runs along C in each row)."""
    if not consumers:
        raise ValueError("the permutation search needs at least one consumer weight")
    channels = {np.shape(w)[1] for w in consumers}
    if len(channels) != 1:
        raise ValueError(f"consumers disagree on the channel count (axis 1): {sorted(channels)}")
    c = channels.pop()
    return np.concatenate([np.abs(np.moveaxis(np.asarray(w, dtype=np.float64), 1, -1)).reshape(-1, c)
                           for w in consumers], axis=0)


def kept_by_permutation(matrix: np.ndarray, permutation: np.ndarray | None = None) -> float:
    """Magnitude 2:4 keeps in a [rows, C] magnitude matrix whose columns are taken in ``permutation`` order."""
    cols = matrix if permutation is None else matrix[:, permutation]
    return float(kept_per_group(cols).sum())


class _Climber:
    """Best-improvement channel swaps on one window: positions 0..n-1 of columns ``x``."""

    def __init__(self, x: np.ndarray):
        self.x = np.array(x, dtype=np.float32)    # [rows, n] columns in current order (float32: speed;
                                                  # the final check is in float64)
        self.n = x.shape[1]
        self.order = np.arange(self.n)            # position -> column index of the window's input
        self.delta = np.empty((self.n, self.n))   # delta[q, t]: gain of q's stripe if its column q became t's
        for s in range(self.n // 4):
            self._refresh(s)

    def total(self) -> float:
        return float(kept_per_group(self.x).sum())

    def _refresh(self, s: int) -> None:
        stripe = self.x[:, 4 * s:4 * s + 4]
        base = float(kept_per_group(stripe).sum())
        for i in range(4):
            rest = np.sort(np.delete(stripe, i, axis=1), axis=1)  # [rows, 3] ascending
            r1, r2 = rest[:, 2:3], rest[:, 1:2]
            # top-2 of {r1, r2, r3, x} for every candidate column x at once
            new = np.maximum(self.x, r1) + np.maximum(np.minimum(self.x, r1), r2)
            self.delta[4 * s + i] = new.sum(axis=0) - base
        self.delta[4 * s:4 * s + 4, 4 * s:4 * s + 4] = -np.inf  # a swap inside a stripe changes nothing

    def swap(self, q: int, t: int) -> None:
        self.x[:, [q, t]] = self.x[:, [t, q]]
        self.order[[q, t]] = self.order[[t, q]]
        self.delta[:, [q, t]] = self.delta[:, [t, q]]  # other stripes see the two columns trade places
        self._refresh(q // 4)
        self._refresh(t // 4)

    def climb(self, max_swaps: int, tolerance: float) -> int:
        swaps = 0
        while swaps < max_swaps:
            gains = self.delta + self.delta.T
            best = int(np.argmax(gains))
            q, t = divmod(best, self.n)
            if not gains[q, t] > tolerance:
                break
            self.swap(q, t)
            swaps += 1
        return swaps

    def reorder(self, positions: np.ndarray) -> None:
        """Put the columns in ``positions`` order (a full rebuild of the gain table)."""
        self.x = self.x[:, positions]
        self.order = self.order[positions]
        for s in range(self.n // 4):
            self._refresh(s)


# the 35 ways to split 8 channels into two stripes of 4 (channel 0 always in the first)
_SPLITS = np.array([[0, *rest] for rest in combinations(range(1, 8), 3)])
_OTHERS = np.array([[i for i in range(8) if i not in split] for split in _SPLITS])


def _pair_sweep(climber: _Climber, tolerance: float) -> int:
    """Best of the 35 splits for every pair of stripes; returns the improving moves made."""
    moves = 0
    stripes = climber.n // 4
    for a in range(stripes):
        for b in range(a + 1, stripes):
            positions = np.r_[4 * a:4 * a + 4, 4 * b:4 * b + 4]
            cols = np.ascontiguousarray(climber.x[:, positions].T)  # [8, rows]
            first, second = cols[_SPLITS], cols[_OTHERS]            # [35, 4, rows] each
            values = (top2_sum(*first.transpose(1, 0, 2)).sum(axis=1)
                      + top2_sum(*second.transpose(1, 0, 2)).sum(axis=1))
            best = int(np.argmax(values))
            if values[best] > values[0] + tolerance:  # split 0 is the current arrangement
                new_order = np.arange(climber.n)
                new_order[positions] = positions[np.r_[_SPLITS[best], _OTHERS[best]]]
                climber.x = climber.x[:, new_order]
                climber.order = climber.order[new_order]
                moves += 1
    if moves:
        climber.reorder(np.arange(climber.n))
    return moves


def _greedy_initial(matrix: np.ndarray) -> np.ndarray:
    c = matrix.shape[1]
    by_norm = np.argsort(-matrix.sum(axis=0), kind="stable")
    # stripe s gets the channels ranked s, s+G, s+2G, s+3G: one from each quartile
    return by_norm.reshape(4, c // 4).T.reshape(-1)


def _search_window(x: np.ndarray, rng: np.random.Generator, max_swaps: int, restarts: int,
                   pair_work: float, tolerance: float) -> tuple[np.ndarray, int]:
    climber = _Climber(x)
    moves = climber.climb(max_swaps, tolerance)
    best_value, best_order = climber.total(), climber.order.copy()
    stripes = climber.n // 4
    for _ in range(restarts if stripes > 1 else 0):
        for _ in range(max(1, stripes // 8)):
            a, b = rng.choice(stripes, size=2, replace=False)
            climber.swap(4 * a + int(rng.integers(4)), 4 * b + int(rng.integers(4)))
        moves += climber.climb(max_swaps, tolerance)
        value = climber.total()
        if value > best_value + tolerance:
            best_value, best_order = value, climber.order.copy()
        else:
            climber.reorder(np.argsort(climber.order)[best_order])
    pairs = stripes * (stripes - 1) / 2
    if pairs and pairs * x.shape[0] * 70 <= pair_work:
        while (found := _pair_sweep(climber, tolerance)) and moves < max_swaps:
            moves += found + climber.climb(max_swaps, tolerance)
    if climber.total() > best_value + tolerance:
        best_order = climber.order.copy()
    return best_order, moves


def search_permutation(consumers: Sequence[np.ndarray], *, seed: int = 0, max_swaps: int | None = None,
                       restarts: int = 2, window: int = 256, pair_work: float = 2e8) -> PermutationResult:
    """Find an input-channel order that maximises the magnitude 2:4 keeps in all ``consumers``.

    Args:
        consumers: Weights that read the channels, each [K_out, C, ...], C % 4 == 0.
        seed: Seed of the random kicks. Defaults to 0.
        max_swaps: Improving moves allowed per window. Defaults to 50 * C.
        restarts: Random kicks per window. Defaults to 2.
        window: Channels searched together (large layers go window by window, twice,
            the second time shifted by half a window). Defaults to 256.
        pair_work: Bound on the elements the exhaustive stripe-pair pass may read per
            window; larger windows skip it. Defaults to 2e8.

    Raises:
        ShapeError: C is not a multiple of 4.
    """
    matrix = search_matrix(consumers)
    c = matrix.shape[1]
    if c % 4:
        raise ShapeError(f"{c} channels: a 2:4 channel permutation needs a multiple of 4",
                         fix="leave this tensor unpermuted (its consumers are not 2:4-eligible)")
    identity = np.arange(c)
    before = kept_by_permutation(matrix)
    tolerance = 1e-6 * max(before, 1e-30)  # above float32 rounding of the search's sums
    greedy = _greedy_initial(matrix)
    perm = (greedy if kept_by_permutation(matrix, greedy) > before + tolerance else identity).copy()
    rng = np.random.default_rng(seed)
    max_swaps = 50 * c if max_swaps is None else max_swaps
    window = max(8, window - window % 4)
    starts = [list(range(0, c, window))]
    if c > window:
        half = window // 8 * 4  # half a window, kept on a stripe boundary
        starts.append(list(range(half, c - 4, window)))
    swaps = 0
    for offsets in starts:
        for start in offsets:
            positions = np.arange(start, min(start + window, c))
            order, moves = _search_window(matrix[:, perm[positions]], rng, max_swaps, restarts, pair_work, tolerance)
            perm[positions] = perm[positions][order]
            swaps += moves
    after = kept_by_permutation(matrix, perm)
    if after <= before:
        return PermutationResult(identity, before, before, 0)
    return PermutationResult(perm, before, after, swaps)

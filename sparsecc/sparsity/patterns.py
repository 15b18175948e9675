"""Element-wise, vector-wise and block-wise masks for a GEMM weight (pure numpy).

These are the three sparse-library patterns of the group-wise paper's
characterisation study (Liu et al., section 3.2), the reference points
group-wise pruning is compared against. Every function takes a GEMM weight
``W[K, N]`` (reduction axis first: for a Conv, the im2col matrix
``[C_in*kh*kw, C_out]``; for Gemm/MatMul, see :func:`sparsecc.plan.gemm_weight_kn`)
and the share of weights to keep, and returns a boolean mask shaped like the
weight, True where the weight is kept.

Ties in importance are broken towards the lower flat index, so a mask is a
deterministic function of the weight values.
"""

from __future__ import annotations

import numpy as np

from sparsecc.errors import OptionError, ShapeError

__all__ = ["element_wise_mask", "vector_wise_mask", "block_wise_mask", "kept_count", "PATTERN_NORMS"]

PATTERN_NORMS = ("l1", "l2")


def kept_count(total: int, keep: float, minimum: int = 0) -> int:
    """How many of ``total`` units a share ``keep`` keeps: ``round(keep * total)``, at least ``minimum``.

    Args:
        total: Number of units (elements, vector slots, blocks).
        keep: Share kept, in (0, 1].
        minimum: Lower bound of the result. Defaults to 0.
    """
    _check_keep(keep)
    return int(min(total, max(minimum, round(keep * total))))


def element_wise_mask(weight: np.ndarray, keep: float) -> np.ndarray:
    """Unstructured magnitude pruning, global within the weight.

    Keeps the ``round(keep * W.size)`` weights of largest ``|w|`` anywhere in the
    weight; nothing constrains where the zeros fall.

    Args:
        weight: The weight, any shape (usually ``W[K, N]``).
        keep: Share of weights kept, in (0, 1].
    """
    scores = np.abs(np.asarray(weight, dtype=np.float64)).reshape(-1)
    return _top(scores, kept_count(scores.size, keep)).reshape(np.shape(weight))


def vector_wise_mask(weight: np.ndarray, keep: float, vector: int = 4) -> np.ndarray:
    """Balanced (vector-wise) pruning: the same number of zeros in every vector.

    ``W[K, N]`` is cut into vectors of ``vector`` consecutive elements along the
    reduction axis K (vector ``(j, n)`` is ``W[j*v:(j+1)*v, n]``). Every vector
    keeps the same count, ``round(keep * v)`` (at least 1), of its largest ``|w|``;
    where they sit inside the vector is free. With v = 4 and keep = 0.5 this is
    N:M (2:4) sparsity. The share actually kept is that count divided by v.

    Args:
        weight: ``W[K, N]``.
        keep: Share of weights kept, in (0, 1].
        vector: Vector length v along K. Defaults to 4.

    Raises:
        ShapeError: the weight is not 2-D or K is not a multiple of v.
        OptionError: v is not a positive integer.
    """
    weight = _as_kn(weight, "vector-wise")
    if int(vector) != vector or vector < 1:
        raise OptionError(f"vector length must be a positive integer, got {vector!r}",
                          fix="use e.g. vector=4, 8 or 16")
    k, n = weight.shape
    if k % vector:
        raise ShapeError(f"vector-wise pruning cuts K into vectors of {vector}, but K = {k} is not a multiple of it",
                         where=f"weight [K={k}, N={n}]", fix="choose a vector length that divides K")
    per_vector = kept_count(vector, keep, minimum=1)
    # [K/v, v, N]: rank inside each vector (axis 1); stable sort keeps the lower index on ties.
    scores = np.abs(weight.astype(np.float64)).reshape(k // vector, vector, n)
    order = np.argsort(-scores, axis=1, kind="stable")
    mask = np.zeros_like(scores, dtype=bool)
    np.put_along_axis(mask, order[:, :per_vector, :], True, axis=1)
    return mask.reshape(k, n)


def block_wise_mask(weight: np.ndarray, keep: float, block: tuple[int, int] = (4, 4),
                    norm: str = "l1") -> np.ndarray:
    """Block pruning: whole ``m x n`` blocks kept or removed by their norm.

    ``W[K, N]`` is tiled by ``m x n`` blocks (m along K, n along N); each block is
    scored by the L1 or L2 norm of its weights and the ``round(keep * blocks)``
    highest-scoring blocks are kept whole.

    Args:
        weight: ``W[K, N]``.
        keep: Share of blocks (and so of weights) kept, in (0, 1].
        block: Block shape (m, n). Defaults to (4, 4).
        norm: "l1" or "l2". Defaults to "l1".

    Raises:
        ShapeError: the weight is not 2-D or the block does not tile it.
        OptionError: bad block shape or norm.
    """
    weight = _as_kn(weight, "block-wise")
    m, n = _block(block)
    if norm not in PATTERN_NORMS:
        raise OptionError(f"unknown block norm {norm!r}", fix=f"use one of {list(PATTERN_NORMS)}")
    k, cols = weight.shape
    if k % m or cols % n:
        raise ShapeError(f"a {m}x{n} block does not tile the weight [K={k}, N={cols}]",
                         where="block-wise pruning", fix="choose a block shape whose sides divide K and N")
    blocks = np.abs(weight.astype(np.float64)).reshape(k // m, m, cols // n, n)
    scores = blocks.sum(axis=(1, 3)) if norm == "l1" else np.sqrt((blocks ** 2).sum(axis=(1, 3)))
    kept_blocks = _top(scores.reshape(-1), kept_count(scores.size, keep)).reshape(scores.shape)
    return np.repeat(np.repeat(kept_blocks, m, axis=0), n, axis=1)


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` largest scores of a 1-D array (lower index first on ties)."""
    mask = np.zeros(scores.size, dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:count]] = True
    return mask


def _check_keep(keep: float) -> None:
    if not 0.0 < float(keep) <= 1.0:
        raise OptionError(f"the share kept must be in (0, 1], got {keep!r}",
                          fix="give keep as a fraction, e.g. 0.5 keeps half of the weights")


def _as_kn(weight: np.ndarray, pattern: str) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ShapeError(f"{pattern} pruning needs a GEMM weight [K, N], got shape {list(weight.shape)}",
                         where=pattern, fix="reshape a Conv weight to its im2col matrix [C_in*kh*kw, C_out] first")
    return weight


def _block(block) -> tuple[int, int]:
    try:
        m, n = (int(v) for v in block)
    except (TypeError, ValueError):
        raise OptionError(f"block shape must be two integers (m, n), got {block!r}", fix="e.g. block=(4, 4)") from None
    if m < 1 or n < 1:
        raise OptionError(f"block sides must be positive, got {block!r}", fix="e.g. block=(4, 4)")
    return m, n

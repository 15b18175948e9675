"""Rounding a kept count to a multiple (tile-friendly GEMM sizes), shared by every pruning criterion.

Filter pruning (:mod:`sparsecc.sparsity.filter_metrics`) and group-wise pruning
(:mod:`sparsecc.sparsity.groupwise`) both keep a number of channels or rows per
layer that is a multiple of a tile size; both round the same way, here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["align_count"]


def align_count(total: int, count: float, multiple: int) -> int:
    """Round ``count`` of ``total`` kept items to the nearest multiple of ``multiple`` (halves round up).

    At least one multiple is kept (the whole ``total`` if it is smaller), never more than ``total``:
    rounding never empties a layer. With ``multiple`` 1 the count is only rounded to an integer
    (and at least 1).

    Args:
        total: Items in the layer (channels, groups).
        count: Items the criterion would keep (may be fractional, e.g. a share times ``total``).
        multiple: The tile size, a positive integer.
    """
    rounded = int(np.floor(count / multiple + 0.5)) * multiple
    return int(min(total, max(rounded, min(multiple, total))))

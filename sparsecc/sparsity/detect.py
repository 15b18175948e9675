"""Read the structure of the zeros already in a weight (pure numpy).

Models pruned and fine-tuned elsewhere arrive with zeros in their weights;
detecting which structure those zeros have lets sparsecc compile them with the
rewrite that structure allows. Each detector answers "what share of the zeros
does this structure explain"; the reported pattern is the most structured one
that explains all of them.

Weight layouts: Conv [C_out, C_in/group, kh, kw]; GEMM weights are given as
[K, N] (reduction first) by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DetectedPattern:
    """The structure of the zeros of one weight.

    Attributes:
        pattern: "dense", "filter", "group-wise", "2:4", "depthwise-taps", "element-wise".
        sparsity: Share of the weight's elements that are exactly zero.
        structures: For each structure found, the share of zeros it explains.
    """

    pattern: str
    sparsity: float
    structures: dict[str, float] = field(default_factory=dict)


def conv_group_rows(weight: np.ndarray, group: int) -> np.ndarray:
    """Zero map of the im2col rows: [group, C_in/group*kh*kw] True where the whole row is zero.

    A row is one (c_in, i, j) position across all output channels of its group.
    """
    c_out = weight.shape[0]
    per_group = weight.reshape(group, c_out // group, -1)
    return np.all(per_group == 0, axis=1)


def is_two_four(rows_k: np.ndarray) -> bool:
    """True if, in every row of a [rows, K] array, each 4 consecutive elements hold at least 2 zeros."""
    rows, k = rows_k.shape
    if k % 4:
        return False
    if 2 * (rows_k.size - np.count_nonzero(rows_k)) < rows_k.size:
        return False  # 2:4 needs half the elements zero; this check needs no reordered copy
    return bool(np.all(np.count_nonzero(rows_k.reshape(rows, k // 4, 4), axis=2) <= 2))


def conv_rows_by_input_channel(weight: np.ndarray) -> np.ndarray:
    """Conv weight [K, C, R, S] as [(K, R, S), C]: TensorRT's 2:4 layout runs along C."""
    return np.moveaxis(weight, 1, -1).reshape(-1, weight.shape[1])


def detect_conv(weight: np.ndarray, group: int = 1) -> DetectedPattern:
    zeros = weight == 0
    total_zeros = int(zeros.sum())
    sparsity = total_zeros / weight.size
    if total_zeros == 0:
        return DetectedPattern("dense", 0.0)
    structures: dict[str, float] = {}
    filters = np.all(zeros.reshape(weight.shape[0], -1), axis=1)
    structures["filter"] = float(filters.sum() * weight[0].size / total_zeros)
    c_out, c_in_g = weight.shape[:2]
    is_depthwise = group > 1 and c_in_g == 1 and c_out == group
    if is_depthwise:
        structures["depthwise-taps"] = 1.0  # every zero of a depthwise weight removes one tap
    else:
        rows = conv_group_rows(weight, group)
        structures["group-wise"] = float(rows.sum() * (c_out // group) / total_zeros)
        # 2:4 in TensorRT's layout: groups of 4 along C_in for every (k, r, s)
        if group == 1 and c_in_g % 4 == 0:
            structures["2:4"] = 1.0 if is_two_four(conv_rows_by_input_channel(weight)) else 0.0
    structures["element-wise"] = 1.0
    return DetectedPattern(_most_structured(structures, sparsity), sparsity, structures)


def detect_gemm(weight_kn: np.ndarray) -> DetectedPattern:
    """Patterns of a GEMM weight given as [K, N] (K = reduction)."""
    zeros = weight_kn == 0
    total_zeros = int(zeros.sum())
    if total_zeros == 0:
        return DetectedPattern("dense", 0.0)
    structures = {
        "filter": float(np.all(zeros, axis=0).sum() * weight_kn.shape[0] / total_zeros),
        "group-wise": float(np.all(zeros, axis=1).sum() * weight_kn.shape[1] / total_zeros),
    }
    if weight_kn.shape[0] % 4 == 0:
        structures["2:4"] = 1.0 if is_two_four(weight_kn.T) else 0.0
    structures["element-wise"] = 1.0
    sparsity = total_zeros / weight_kn.size
    return DetectedPattern(_most_structured(structures, sparsity), sparsity, structures)


_ORDER = ("filter", "group-wise", "depthwise-taps", "2:4", "element-wise")
# Scattered zeros count as element-wise sparsity only from this share of the weight on: one zero
# in 2.36M weights (a trained ResNet-18 layer) is a dense weight, and nothing can exploit it.
ELEMENT_WISE_MIN_SPARSITY = 0.01


def _most_structured(structures: dict[str, float], sparsity: float = 1.0) -> str:
    for name in _ORDER:
        if structures.get(name, 0.0) >= 1.0 - 1e-9:
            if name == "element-wise" and sparsity < ELEMENT_WISE_MIN_SPARSITY:
                return "dense"
            return name
    return "element-wise" if sparsity >= ELEMENT_WISE_MIN_SPARSITY else "dense"

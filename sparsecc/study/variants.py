"""The ways the study computes one layer's GEMM: dense, sparse libraries and group-wise, each checked.

Every variant is checked numerically against the masked dense GEMM before it is timed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sparsecc.errors import ShapeError
from sparsecc.sparsity.patterns import block_wise_mask, element_wise_mask, vector_wise_mask
from sparsecc.study.config import StudyConfig
from sparsecc.study.shapes import GemmShape

# Tolerance of the check that each variant computes the masked dense GEMM (float32, K up to 25088).
CHECK_RTOL = 1e-4


def layer_weight(shape: GemmShape, rng: np.random.Generator) -> np.ndarray:
    """A random weight laid out as the ONNX initializer: Conv [C_out, C_in, kh, kw], MatMul [K, N]."""
    scale = 1.0 / math.sqrt(shape.k)
    if shape.conv is not None:
        geo = shape.conv
        return rng.normal(0.0, scale, (geo.c_out, geo.c_in, geo.kernel, geo.kernel)).astype(np.float32)
    return rng.normal(0.0, scale, (shape.k, shape.n)).astype(np.float32)


def weight_kn(shape: GemmShape, weight: np.ndarray) -> np.ndarray:
    """The layer's GEMM weight W[K, N] (a conv's im2col matrix, rows ordered (c_in, i, j))."""
    return weight.reshape(weight.shape[0], -1).T if shape.conv is not None else weight


def groupwise_rows(shape: GemmShape, weight: np.ndarray, keep: float, criterion: str) -> np.ndarray:
    """Indices of the kept rows of W[K, N] under the group-wise mask of :mod:`sparsecc.sparsity.groupwise`."""
    from sparsecc.sparsity.groupwise import groupwise_mask

    kind = "conv" if shape.conv is not None else "matmul"
    mask = groupwise_mask(weight, kind, 1, keep, criterion=criterion)
    return np.flatnonzero(weight_kn(shape, mask).any(axis=1))


def pattern_masks(shape: GemmShape, w_kn: np.ndarray, keep: float, config: StudyConfig
                  ) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """The element-, vector- and block-wise masks of W[K, N]; a pattern that does not fit is skipped with why."""
    makers = {"element-wise": lambda: element_wise_mask(w_kn, keep),
              "vector-wise": lambda: vector_wise_mask(w_kn, keep, config.vector),
              "block-wise": lambda: block_wise_mask(w_kn, keep, config.block)}
    masks, skipped = {}, []
    for pattern, make in makers.items():
        try:
            masks[pattern] = make()
        except ShapeError as err:
            skipped.append({"model": shape.model, "layer": shape.layer, "keep": keep, "pattern": pattern,
                            "reason": err.what})
    return masks, skipped


@dataclass
class Variant:
    """One way to compute a layer's GEMM, with the work it does."""

    pattern: str
    library: str
    call: Callable[[], Any]
    nnz: int
    macs: int
    k_kept: int | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.pattern}/{self.library}"

    def run(self, _feeds=None):  # the Session interface that sparsecc.bench.time_interleaved calls
        return self.call()


def torch_variants(shape: GemmShape, w_kn: np.ndarray, x_t: np.ndarray, masks: dict[str, np.ndarray],
                   rows: np.ndarray | None, block: tuple[int, int], libraries: tuple[str, ...] = ("torch",),
                   device: str = "cpu") -> list[Variant]:
    """Dense, sparse-library and group-wise GEMMs ``(W * mask)^T @ X^T``, each checked against torch.mm.

    Args:
        shape: The layer.
        w_kn: Its weight W[K, N].
        x_t: The (im2col) activation, transposed: X^T[K, M].
        masks: Pattern -> mask of W[K, N] for the sparse-library patterns.
        rows: Kept rows of W (group-wise), or None to leave group-wise out.
        block: Block shape (along K, along N) the block-wise mask was made with.
        libraries: "torch" and/or "scipy" (scipy only on the CPU). Defaults to ("torch",).
        device: "cpu" or "cuda". Defaults to "cpu".
    """
    import torch

    m = shape.m
    xt = torch.from_numpy(x_t).to(device)
    dense_wt = torch.from_numpy(np.ascontiguousarray(w_kn.T)).to(device)
    variants = [Variant("dense", "torch", lambda: torch.mm(dense_wt, xt), w_kn.size, shape.macs)]
    references = {"dense": dense_wt}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        for pattern, mask in masks.items():
            masked_np = np.ascontiguousarray((w_kn * mask).T)
            masked_t = torch.from_numpy(masked_np).to(device)
            references[pattern] = masked_t
            if "torch" in libraries:
                if pattern == "block-wise":  # W^T is [N, K], so its blocks are (n, m)
                    matrix, library = masked_t.to_sparse_bsr((block[1], block[0])), "torch-bsr"
                else:
                    matrix, library = masked_t.to_sparse_csr(), "torch-csr"
                nnz = int(matrix.values().numel())
                variants.append(Variant(pattern, library, lambda a=matrix: a @ xt, nnz, nnz * m))
            if "scipy" in libraries and device == "cpu":
                variants.append(_scipy_variant(pattern, masked_np, x_t, block, m))
    if rows is not None:
        index = torch.from_numpy(rows.astype(np.int64)).to(device)
        kept_wt = dense_wt.index_select(1, index).contiguous()
        row_mask = torch.zeros(shape.k, device=device)
        row_mask[index] = 1.0
        references["group-wise"] = dense_wt * row_mask[None, :]
        # The paper's Algorithm 2 with the coalesced layout of its Fig. 6: skip rows of X^T, then a smaller GEMM.
        variants.append(Variant("group-wise", "torch", lambda: torch.mm(kept_wt, xt.index_select(0, index)),
                                 kept_wt.numel(), m * len(rows) * shape.n, len(rows)))
    for variant in variants:
        _check(variant, torch.mm(references[variant.pattern], xt), shape)
    return variants


def _scipy_variant(pattern: str, masked_t: np.ndarray, x_t: np.ndarray, block: tuple[int, int], m: int
                   ) -> Variant:
    import scipy.sparse as sp

    if pattern == "block-wise":
        matrix, library = sp.bsr_array(masked_t, blocksize=(block[1], block[0])), "scipy-bsr"
    else:
        matrix, library = sp.csr_array(masked_t), "scipy-csr"
    nnz = int(matrix.data.size)
    return Variant(pattern, library, lambda: matrix @ x_t, nnz, nnz * m)


def _check(variant: Variant, reference, shape: GemmShape) -> None:
    """Stop if a variant does not compute the masked dense GEMM (that is a bug in the study, not a user error)."""
    import torch

    out = variant.call()
    out = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
    error = float((out.to(reference.device) - reference).abs().max())
    bound = CHECK_RTOL * float(reference.abs().max()) + 1e-6
    if not error <= bound:
        raise RuntimeError(f"{variant.label} on {shape.label} differs from the masked dense GEMM by {error:.3g} "
                           f"(allowed {bound:.3g})")

"""The pruning-pattern characterisation study of the group-wise paper, on this machine.

Liu et al. (section 3 and 5, Figs 7-10) time one GEMM per layer, pruned with
four patterns at about 75 / 50 / 25 % of the parameters kept, against the dense
GEMM: element-wise, vector-wise and block-wise through a sparse library
(cuSPARSE in the paper), and group-wise as a gather of the kept input rows plus
a smaller dense GEMM. This module reproduces that study for the GEMM and conv
layers of VGG-16, ResNet-18, ViT and BERT-base:

* every layer is its GEMM ``Y^T[N, M] = W^T[N, K] @ X^T[K, M]`` (a conv as
  im2col: M = output pixels, K = C_in*kh*kw, N = C_out; the im2col matrix is
  built beforehand and not timed, as in the paper's GEMM-level study);
* dense: ``torch.mm``; element-wise and vector-wise: torch sparse CSR;
  block-wise: torch sparse BSR (``--full`` adds scipy.sparse CSR and BSR);
* group-wise, the paper's formulation: ``index_select`` of the kept rows of
  ``X^T`` (row skipping, the coalesced layout of the paper's Fig. 6) and a
  dense ``torch.mm`` with K' = kept rows;
* group-wise through sparsecc itself: a one-layer ONNX model planned with
  ``plan-groupwise``, masked with ``apply-plan`` and rewritten by
  ``groupwise-rewrite`` (verified by the pass manager; by default with the
  paper's lowering forced, so the lowering itself is measured rather than the
  cost model's choice), timed against the dense model on ONNX Runtime;
* on a CUDA GPU, the torch variants again (cuBLAS, cuSPARSE), timed with CUDA
  events.

Every variant is checked numerically against the masked dense GEMM before it
is timed. Variants of one layer and share are timed interleaved in one process
(BENCHMARKS.md); ratios are medians over the dense median of the same round
set. The break-even share is where a pattern's ratio to dense crosses 1.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from sparsecc.errors import OptionError, ShapeError
from sparsecc.log import progress as default_progress
from sparsecc.sparsity.patterns import block_wise_mask, element_wise_mask, vector_wise_mask
from sparsecc.tables import markdown_table, text_table

__all__ = ["ConvGeometry", "GemmShape", "StudyConfig", "SHAPE_SETS", "run_study", "break_even",
           "format_table", "render_markdown", "plot_study"]

KEEPS = (0.75, 0.5, 0.25)
PATTERNS = ("element-wise", "vector-wise", "block-wise", "group-wise")
DEFAULT_RUNS = 20
DEFAULT_WARMUP = 3
# Tolerance of the check that each variant computes the masked dense GEMM (float32, K up to 25088).
CHECK_RTOL = 1e-4


@dataclass(frozen=True)
class ConvGeometry:
    """A conv layer, to build its ONNX model and derive its im2col GEMM."""

    c_in: int
    c_out: int
    size: int
    kernel: int = 3
    stride: int = 1
    pad: int | None = None

    @property
    def padding(self) -> int:
        return self.kernel // 2 if self.pad is None else self.pad

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class GemmShape:
    """One layer of the study as its GEMM ``[M, K] x [K, N]``.

    Attributes:
        model: Model (and shape group of the plot), e.g. "BERT-base".
        layer: Layer name inside the model.
        m: Rows of the activation: output pixels of a conv, tokens of a linear layer.
        k: Reduction length: C_in*kh*kw, or input features.
        n: Output channels or features.
        conv: Conv geometry, or None for a linear (MatMul) layer.
    """

    model: str
    layer: str
    m: int
    k: int
    n: int
    conv: ConvGeometry | None = None

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    @property
    def label(self) -> str:
        return f"{self.model} {self.layer}"


def conv(model: str, layer: str, c_in: int, c_out: int, size: int, kernel: int = 3, stride: int = 1,
         pad: int | None = None) -> GemmShape:
    """The im2col GEMM of a conv with a square ``size`` x ``size`` input, batch 1."""
    geo = ConvGeometry(c_in, c_out, size, kernel, stride, pad)
    return GemmShape(model, layer, geo.out_size ** 2, c_in * kernel * kernel, c_out, geo)


def linear(model: str, layer: str, tokens: int, fan_in: int, fan_out: int) -> GemmShape:
    """A linear layer applied to ``tokens`` rows (batch 1)."""
    return GemmShape(model, layer, tokens, fan_in, fan_out)


# ImageNet-size inputs (224 x 224, batch 1) for the CNNs; ViT at 224 with 16 x 16 patches (197 tokens);
# BERT-base at sequence 128, batch 1.
_VGG16 = [conv("VGG-16", "conv1_1", 3, 64, 224), conv("VGG-16", "conv1_2", 64, 64, 224),
          conv("VGG-16", "conv2_1", 64, 128, 112), conv("VGG-16", "conv2_2", 128, 128, 112),
          conv("VGG-16", "conv3_1", 128, 256, 56), conv("VGG-16", "conv3_2", 256, 256, 56),
          conv("VGG-16", "conv4_1", 256, 512, 28), conv("VGG-16", "conv4_2", 512, 512, 28),
          conv("VGG-16", "conv5_2", 512, 512, 14),
          linear("VGG-16", "fc6", 1, 25088, 4096), linear("VGG-16", "fc7", 1, 4096, 4096),
          linear("VGG-16", "fc8", 1, 4096, 1000)]
_RESNET18 = [conv("ResNet-18", "conv1", 3, 64, 224, kernel=7, stride=2),
             conv("ResNet-18", "layer1.conv", 64, 64, 56),
             conv("ResNet-18", "layer2.0.conv1", 64, 128, 56, stride=2),
             conv("ResNet-18", "layer2.conv", 128, 128, 28),
             conv("ResNet-18", "layer2.0.downsample", 64, 128, 56, kernel=1, stride=2),
             conv("ResNet-18", "layer3.0.conv1", 128, 256, 28, stride=2),
             conv("ResNet-18", "layer3.conv", 256, 256, 14),
             conv("ResNet-18", "layer4.0.conv1", 256, 512, 14, stride=2),
             conv("ResNet-18", "layer4.conv", 512, 512, 7),
             linear("ResNet-18", "fc", 1, 512, 1000)]
_VIT = [conv("ViT", "B patch-embed", 3, 768, 224, kernel=16, stride=16, pad=0),
        linear("ViT", "B qkv", 197, 768, 2304), linear("ViT", "B proj", 197, 768, 768),
        linear("ViT", "B fc1", 197, 768, 3072), linear("ViT", "B fc2", 197, 3072, 768),
        conv("ViT", "Ti patch-embed", 3, 192, 224, kernel=16, stride=16, pad=0),
        linear("ViT", "Ti qkv", 197, 192, 576), linear("ViT", "Ti proj", 197, 192, 192),
        linear("ViT", "Ti fc1", 197, 192, 768), linear("ViT", "Ti fc2", 197, 768, 192)]
_BERT = [linear("BERT-base", "attn q/k/v/out", 128, 768, 768), linear("BERT-base", "ffn up", 128, 768, 3072),
         linear("BERT-base", "ffn down", 128, 3072, 768)]


def _pick(shapes: list[GemmShape], *layers: str) -> list[GemmShape]:
    return [s for s in shapes if s.layer in layers]


SHAPE_SETS: dict[str, list[GemmShape]] = {
    # Two small ViT-Tiny layers (one conv, one linear): a smoke run for tests.
    "quick": _pick(_VIT, "Ti patch-embed", "Ti proj"),
    # One or two representative layers per model: a few minutes on 2 cores.
    "default": (_pick(_VGG16, "conv5_2", "fc7") + _pick(_RESNET18, "layer2.conv", "layer4.conv")
                + _pick(_VIT, "B fc1", "Ti qkv") + _BERT),
    # Every distinct GEMM shape of the four models (long; VGG-16 fc6 alone holds 411 MB of weights).
    "full": _VGG16 + _RESNET18 + _VIT + _BERT,
}


@dataclass
class StudyConfig:
    """What the study measures and how.

    Attributes:
        shapes: Shape set name ("quick", "default", "full"). Defaults to "default".
        keeps: Shares of the parameters kept. Defaults to (0.75, 0.5, 0.25).
        runs: Timed interleaved rounds per layer and share (at least 20 for real figures). Defaults to 20.
        warmup: Untimed rounds first. Defaults to 3.
        threads: torch and ONNX Runtime intra-op threads. Defaults to 2.
        vector: Vector length along K of the vector-wise pattern. Defaults to 4.
        block: Block shape (along K, along N) of the block-wise pattern. Defaults to (8, 8).
        criterion: Group-wise criterion passed to ``plan-groupwise``. Defaults to "l1".
        libraries: Sparse libraries on the CPU: "torch", and "scipy". Defaults to ("torch",)
            (the full set adds "scipy").
        ort: Also time the sparsecc group-wise rewrite on ONNX Runtime. Defaults to True.
        ort_lowering: "always" runs every layer with the paper's lowering (channel-gather for
            MatMul and 1x1 convs, tap-gather for larger convs); "auto" lets groupwise-rewrite's
            cost model choose, keeping a layer dense where no lowering is faster. Defaults to "always".
        seed: Seed of the random weights and inputs. Defaults to 0.
    """

    shapes: str = "default"
    keeps: tuple[float, ...] = KEEPS
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    threads: int = 2
    vector: int = 4
    block: tuple[int, int] = (8, 8)
    criterion: str = "l1"
    libraries: tuple[str, ...] = ("torch",)
    ort: bool = True
    ort_lowering: str = "always"
    seed: int = 0

    def validate(self) -> None:
        if self.shapes not in SHAPE_SETS:
            raise OptionError(f"unknown shape set {self.shapes!r}", fix=f"use one of {sorted(SHAPE_SETS)}")
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise OptionError(f"runs and threads must be at least 1 and warm-up at least 0 (got runs={self.runs}, "
                              f"threads={self.threads}, warmup={self.warmup})", fix="e.g. --runs 20 --threads 2")
        if not self.keeps or any(not 0.0 < k < 1.0 for k in self.keeps):
            raise OptionError(f"shares kept must be strictly between 0 and 1 (0 and 100%), got {list(self.keeps)}",
                              fix="e.g. --keeps 75,50,25")
        if self.vector < 1 or len(self.block) != 2 or min(self.block) < 1:
            raise OptionError(f"vector length and block sides must be positive (got vector={self.vector}, "
                              f"block={self.block})", fix="e.g. --vector 4 --block 8x8")
        if self.ort_lowering not in ("always", "auto"):
            raise OptionError(f"unknown ORT lowering choice {self.ort_lowering!r}", fix="use always or auto")
        unknown = sorted(set(self.libraries) - {"torch", "scipy"})
        if unknown:
            raise OptionError(f"unknown sparse libraries {unknown}", fix="use torch and/or scipy")


@dataclass
class Measurement:
    """One timed variant of one layer at one share kept (times in ms, host or device clock per ``device``)."""

    model: str
    layer: str
    m: int
    k: int
    n: int
    keep: float
    pattern: str
    library: str
    device: str
    baseline: str
    median_ms: float
    min_ms: float
    runs: int
    ratio: float  # median / median of the baseline, same interleaved rounds
    nnz: int  # weights the variant multiplies with (kept, incl. explicit zeros of BSR blocks)
    macs: int
    ideal: float  # macs / dense macs
    k_kept: int | None = None  # group-wise: K' of the smaller GEMM
    note: str = ""  # how the variant ran (the sparsecc rewrite's lowering, or why it stayed dense)


@dataclass
class StudyResult:
    """Everything the study measured, with the settings and environment needed to read it."""

    config: dict[str, Any]
    environment: dict[str, Any]
    shapes: list[dict[str, Any]]
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)
    clock: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "environment": self.environment, "clock": self.clock, "gpu": self.gpu,
                "shapes": self.shapes, "measurements": [asdict(m) for m in self.measurements],
                "skipped": self.skipped, "break_even": break_even(self.measurements)}


# ----------------------------------------------------------------------------------------------
# Masks and the variants built from them


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
class _Variant:
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
                   device: str = "cpu") -> list[_Variant]:
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
    variants = [_Variant("dense", "torch", lambda: torch.mm(dense_wt, xt), w_kn.size, shape.macs)]
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
                variants.append(_Variant(pattern, library, lambda a=matrix: a @ xt, nnz, nnz * m))
            if "scipy" in libraries and device == "cpu":
                variants.append(_scipy_variant(pattern, masked_np, x_t, block, m))
    if rows is not None:
        index = torch.from_numpy(rows.astype(np.int64)).to(device)
        kept_wt = dense_wt.index_select(1, index).contiguous()
        row_mask = torch.zeros(shape.k, device=device)
        row_mask[index] = 1.0
        references["group-wise"] = dense_wt * row_mask[None, :]
        # The paper's Algorithm 2 with the coalesced layout of its Fig. 6: skip rows of X^T, then a smaller GEMM.
        variants.append(_Variant("group-wise", "torch", lambda: torch.mm(kept_wt, xt.index_select(0, index)),
                                 kept_wt.numel(), m * len(rows) * shape.n, len(rows)))
    for variant in variants:
        _check(variant, torch.mm(references[variant.pattern], xt), shape)
    return variants


def _scipy_variant(pattern: str, masked_t: np.ndarray, x_t: np.ndarray, block: tuple[int, int], m: int
                   ) -> _Variant:
    import scipy.sparse as sp

    if pattern == "block-wise":
        matrix, library = sp.bsr_array(masked_t, blocksize=(block[1], block[0])), "scipy-bsr"
    else:
        matrix, library = sp.csr_array(masked_t), "scipy-csr"
    nnz = int(matrix.data.size)
    return _Variant(pattern, library, lambda: matrix @ x_t, nnz, nnz * m)


def _check(variant: _Variant, reference, shape: GemmShape) -> None:
    """Stop if a variant does not compute the masked dense GEMM (that is a bug in the study, not a user error)."""
    import torch

    out = variant.call()
    out = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
    error = float((out.to(reference.device) - reference).abs().max())
    bound = CHECK_RTOL * float(reference.abs().max()) + 1e-6
    if not error <= bound:
        raise RuntimeError(f"{variant.label} on {shape.label} differs from the masked dense GEMM by {error:.3g} "
                           f"(allowed {bound:.3g})")


# ----------------------------------------------------------------------------------------------
# The sparsecc rewrite on ONNX Runtime

NODE_NAME = "layer"


def one_layer_model(shape: GemmShape, weight: np.ndarray):
    """A one-node ONNX model of the layer (Conv with batch 1, or MatMul [M, K] x [K, N]) as a sparsecc Model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsecc.model import clamp_ir_version, model_from_proto

    if shape.conv is not None:
        geo = shape.conv
        x_shape, y_shape = [1, geo.c_in, geo.size, geo.size], [1, geo.c_out, geo.out_size, geo.out_size]
        node = helper.make_node("Conv", ["x", "w"], ["y"], name=NODE_NAME, kernel_shape=[geo.kernel] * 2,
                                strides=[geo.stride] * 2, pads=[geo.padding] * 4)
    else:
        x_shape, y_shape = [shape.m, shape.k], [shape.m, shape.n]
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name=NODE_NAME)
    graph = helper.make_graph([node], shape.label.replace(" ", "_"),
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(weight, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    clamp_ir_version(proto)
    onnx.checker.check_model(proto)
    return model_from_proto(proto, source=f"characterize: {shape.label}")


def paper_lowering(shape: GemmShape) -> str:
    """The groupwise-rewrite lowering that is the paper's formulation for this layer.

    A MatMul (or 1x1 conv) group is one input feature (channel), so dropping the pruned ones is
    ``channel-gather``; a larger conv needs the im2col rows (``tap-gather``: each kept channel plane
    copied once per kept tap, shifted into place by a one-hot depthwise Conv).
    """
    return "tap-gather" if shape.conv is not None and shape.conv.kernel > 1 else "channel-gather"


def groupwise_rewrite(shape: GemmShape, model, keep: float, criterion: str, lowering: str, threads: int):
    """Plan, mask and rewrite a one-layer model with sparsecc's group-wise passes (verified by the manager).

    Args:
        shape: The layer.
        model: Its one-layer model (see :func:`one_layer_model`).
        keep: Share of the groups kept.
        criterion: Group-wise criterion.
        lowering: "always" (the paper's lowering, see :func:`paper_lowering`) or "auto"
            (sparsecc's cost model picks, and keeps the layer dense where nothing is faster).
        threads: ONNX Runtime threads of the cost model's measurements.

    Returns:
        (rewritten model, K' kept rows, note saying which lowering ran and why, True if it was lowered).
    """
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    ctx = PassContext(model.copy())
    forced = paper_lowering(shape) if lowering == "always" else "auto"
    # Planning and masking change the function on purpose: nothing to verify. The rewrite is exact,
    # and the manager verifies it against the masked model on ONNX Runtime.
    PassManager([make_pass("plan-groupwise", keep=keep, criterion=criterion, layers={"names": [NODE_NAME]}),
                 make_pass("apply-plan")], verify=None).run(ctx)
    records = PassManager([make_pass("groupwise-rewrite", lowering=forced, threads=threads)]).run(ctx)
    entry = ctx.state["applied_plans"][-1].entries["w"]
    k_kept = int(entry.details["kept_groups"])
    info = records[-1].result.details.get("layers", {}).get(NODE_NAME, {})
    chosen = info.get("lowering", "dense")
    note = f"{chosen}: {info.get('reason', 'no reason given')}"
    return ctx.model, k_kept, note, chosen != "dense"


# ----------------------------------------------------------------------------------------------
# Timing


def _time_cuda(variants: list[_Variant], warmup: int, runs: int) -> dict[str, list[float]]:
    """Device time of each variant with CUDA events, interleaved like the CPU timing."""
    import torch

    for _ in range(warmup):
        for variant in variants:
            variant.call()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for index in range(runs):
        for variant in (variants if index % 2 == 0 else variants[::-1]):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            variant.call()
            end.record()
            end.synchronize()
            times[variant.label].append(start.elapsed_time(end))
    return times


def _time_cpu(variants: list[_Variant], warmup: int, runs: int) -> dict[str, list[float]]:
    from sparsecc.bench import time_interleaved

    sessions = {v.label: v for v in variants}
    timings = time_interleaved(sessions, dict.fromkeys(sessions), warmup=warmup, runs=runs)
    return {label: t.times_ms for label, t in timings.items()}


def _measurements(shape: GemmShape, keep: float, variants: list[_Variant], times: dict[str, list[float]],
                  device: str, baseline: _Variant) -> list[Measurement]:
    base = statistics.median(times[baseline.label])
    out = []
    for v in variants:
        median = statistics.median(times[v.label])
        out.append(Measurement(shape.model, shape.layer, shape.m, shape.k, shape.n, keep, v.pattern, v.library,
                               device, baseline.label, round(median, 5), round(min(times[v.label]), 5),
                               len(times[v.label]), round(median / base, 5), v.nnz, v.macs,
                               round(v.macs / baseline.macs, 5), v.k_kept, v.note))
    return out


def _ort_variants(shape: GemmShape, weight: np.ndarray, keep: float, config: StudyConfig, dense_bytes: bytes,
                  rng: np.random.Generator) -> list[_Variant]:
    from sparsecc.backends.ort import OrtBackend

    model = one_layer_model(shape, weight)
    rewritten, k_kept, note, lowered = groupwise_rewrite(shape, model, keep, config.criterion, config.ort_lowering,
                                                         config.threads)
    backend = OrtBackend(threads=config.threads)
    x_shape = model.static_input_shapes()["x"]
    feeds = {"x": rng.standard_normal(x_shape, dtype=np.float32)}
    dense, pruned = backend.load(dense_bytes), backend.load(rewritten.to_bytes())
    k_run = k_kept if lowered else shape.k  # a layer kept dense still multiplies its zeros
    return [_Variant("dense", "ort", lambda: dense.run(feeds), weight.size, shape.macs, note="dense model"),
            _Variant("group-wise", "ort", lambda: pruned.run(feeds), k_run * shape.n, shape.m * k_run * shape.n,
                     k_kept, note)]


# ----------------------------------------------------------------------------------------------
# The study


def study_environment(config: StudyConfig) -> dict[str, Any]:
    """Machine, versions and thread settings of the study."""
    import scipy
    import torch

    from sparsecc.environment import environment

    env = environment()
    env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), ort_threads=config.threads,
               scipy=scipy.__version__, cuda=torch.cuda.is_available(),
               # Other work on a shared machine steals the cores a 2-thread GEMM waits for: say how busy it was.
               load_average_start=[round(v, 2) for v in os.getloadavg()])
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def gpu_status() -> dict[str, Any]:
    """Whether the cuSPARSE / cuBLAS part runs, and if not, why."""
    import torch

    if torch.cuda.is_available():
        return {"available": True, "device": torch.cuda.get_device_name(0),
                "clock": "CUDA events around each call, interleaved"}
    cuda = torch.version.cuda
    reason = ("torch.cuda.is_available() is False: " + (f"torch {torch.__version__} is a CPU-only build"
                                                        if cuda is None else "no CUDA device is visible"))
    return {"available": False, "reason": reason + "; the cuBLAS / cuSPARSE timings were skipped"}


def passive_openmp() -> str:
    """Make torch's OpenMP workers sleep, not spin, between calls (if torch is not loaded yet); say which.

    The same reason as ONNX Runtime's ``session.force_spinning_stop`` (BENCHMARKS.md): on a busy
    2-core machine, libgomp's spinning workers are preempted and a 0.3 ms GEMM measured 8 ms with
    2 threads; with ``OMP_WAIT_POLICY=PASSIVE`` it measured 0.5 ms. libgomp reads the variable
    when torch loads it, so an explicit setting in the environment is respected and a torch
    already imported keeps the policy it started with.
    """
    if "torch" in sys.modules:
        return f"{os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')} (torch was loaded before the study)"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"]


def run_study(config: StudyConfig | None = None, progress: Callable[[str], None] | None = None) -> StudyResult:
    """Run the characterisation study and return every measurement.

    Args:
        config: What to measure. Defaults to StudyConfig() (the default shape set).
        progress: Called with a line per layer and share. Defaults to sparsecc's stderr progress log.
    """
    config = config or StudyConfig()
    config.validate()
    progress = progress or default_progress
    omp_policy = passive_openmp()
    import torch

    torch.set_num_threads(config.threads)
    shapes = SHAPE_SETS[config.shapes]
    gpu = gpu_status()
    result = StudyResult(
        config={**asdict(config), "patterns": list(PATTERNS)},
        environment={**study_environment(config), "omp_wait_policy": omp_policy},
        shapes=[{**asdict(s), "macs": s.macs} for s in shapes], gpu=gpu,
        clock={"cpu": f"host wall-clock (time.perf_counter) around each call, {config.warmup} warm-up + "
                      f"{config.runs} timed rounds, variants interleaved in one process (order alternating)",
               "cuda": "CUDA events around each call (device time)"})
    rng = np.random.default_rng(config.seed)
    for number, shape in enumerate(shapes, 1):
        weight = layer_weight(shape, rng)
        w_kn = weight_kn(shape, weight)
        x_t = rng.standard_normal((shape.k, shape.m), dtype=np.float32)
        dense_bytes = one_layer_model(shape, weight).to_bytes() if config.ort else b""
        for keep in config.keeps:
            progress(f"[{number}/{len(shapes)}] {shape.label} (M={shape.m} K={shape.k} N={shape.n}) "
                     f"at {keep:.0%} kept")
            masks, skipped = pattern_masks(shape, w_kn, keep, config)
            result.skipped += skipped
            rows = groupwise_rows(shape, weight, keep, config.criterion)
            variants = torch_variants(shape, w_kn, x_t, masks, rows, config.block, config.libraries)
            times = _time_cpu(variants, config.warmup, config.runs)
            result.measurements += _measurements(shape, keep, variants, times, "cpu", variants[0])
            if gpu["available"]:
                cuda_variants = torch_variants(shape, w_kn, x_t, masks, rows, config.block, ("torch",), "cuda")
                times = _time_cuda(cuda_variants, config.warmup, config.runs)
                result.measurements += _measurements(shape, keep, cuda_variants, times, "cuda", cuda_variants[0])
            if config.ort:
                ort_variants = _ort_variants(shape, weight, keep, config, dense_bytes, rng)
                times = _time_cpu(ort_variants, config.warmup, config.runs)
                result.measurements += _measurements(shape, keep, ort_variants, times, "cpu", ort_variants[0])
    result.environment["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


# ----------------------------------------------------------------------------------------------
# Break-even


def crossing(points: list[tuple[float, float]], floor: float = 1.0) -> dict[str, Any]:
    """Smallest share pruned at which a ratio to dense drops below ``floor``.

    Args:
        points: (share pruned, ratio to dense) pairs.
        floor: The ratio to beat. Defaults to 1.0 (as fast as dense).

    Returns:
        ``{"pruned": share or None, "how": ...}``: linearly interpolated between the
        last measured share at or above ``floor`` and the first below it; at the
        smallest share measured if that one is already faster (the crossing may lie
        lower); None if no share measured is faster.
    """
    points = sorted(points)
    for index, (pruned, ratio) in enumerate(points):
        if ratio < floor:
            if index == 0:
                return {"pruned": round(pruned, 4), "how": "faster already at the least-pruned share measured"}
            before_pruned, before_ratio = points[index - 1]
            share = before_pruned + (before_ratio - floor) / (before_ratio - ratio) * (pruned - before_pruned)
            return {"pruned": round(share, 4), "how": "interpolated between measured shares"}
    top = f"{points[-1][0]:.0%}" if points else "any"
    return {"pruned": None, "how": f"never faster than dense up to {top} pruned"}


def break_even(measurements: list[Measurement]) -> dict[str, Any]:
    """Break-even share pruned per device, variant and layer, and overall (geometric mean of the ratios)."""
    grouped: dict[tuple[str, str], dict[str, dict[float, float]]] = {}
    for m in measurements:
        if m.pattern == "dense":
            continue
        by_shape = grouped.setdefault((m.device, f"{m.pattern}/{m.library}"), {})
        by_shape.setdefault(f"{m.model} {m.layer}", {})[m.keep] = m.ratio
    out: dict[str, Any] = {}
    for (device, label), by_shape in sorted(grouped.items()):
        keeps = sorted(set.intersection(*(set(r) for r in by_shape.values())), reverse=True)
        overall = {k: math.exp(statistics.fmean(math.log(r[k]) for r in by_shape.values())) for k in keeps}
        out.setdefault(device, {})[label] = {
            "per_shape": {name: crossing([(1 - k, r) for k, r in ratios.items()]) for name, ratios in by_shape.items()},
            "overall_ratio": {str(k): round(v, 4) for k, v in overall.items()},
            "overall": crossing([(1 - k, r) for k, r in overall.items()]),
        }
    return out


# ----------------------------------------------------------------------------------------------
# Output


def _columns(measurements: list[Measurement]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for m in measurements:
        if m.pattern != "dense":
            seen[(m.device, f"{m.pattern}/{m.library}")] = None
    return list(seen)


def _rows(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    columns = _columns(result.measurements)
    cells: dict[tuple[str, str, float], dict[str, Measurement]] = {}
    for m in result.measurements:
        cells.setdefault((m.model, m.layer, m.keep), {})[f"{m.device}:{m.pattern}/{m.library}"] = m
    multi_device = len({d for d, _ in columns}) > 1
    headers = ["model", "layer", "M x K x N", "kept", "dense ms med/min"]
    headers += [f"{label} [{d}]" if multi_device else label for d, label in columns]
    has_ort = any(label.endswith("/ort") for _, label in columns)
    if has_ort:
        headers.append("ORT dense ms med/min")
    rows = []
    for (model, layer, keep), found in cells.items():
        dense = found["cpu:dense/torch"]
        row = [model, layer, f"{dense.m}x{dense.k}x{dense.n}", f"{keep:.0%}",
               f"{dense.median_ms:.3f}/{dense.min_ms:.3f}"]
        row += [f"{found[f'{d}:{label}'].ratio:.2f}" if f"{d}:{label}" in found else "-" for d, label in columns]
        if has_ort:
            ort = found.get("cpu:dense/ort")
            row.append(f"{ort.median_ms:.3f}/{ort.min_ms:.3f}" if ort else "-")
        rows.append(row)
    return headers, rows


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    return text_table(rows, headers, rule=False)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    return markdown_table(rows, headers)


def _break_even_rows(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    data = break_even(result.measurements)
    shapes = [f"{s['model']} {s['layer']}" for s in result.shapes]
    headers = ["variant", "overall"] + shapes
    rows = []
    for device, labels in data.items():
        for label, entry in labels.items():
            name = label if len(data) == 1 else f"{label} [{device}]"
            rows.append([name, _share(entry["overall"])] + [_share(entry["per_shape"].get(s)) for s in shapes])
    return headers, rows


def _share(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    if entry["pruned"] is None:
        return "never"
    prefix = "<=" if entry["how"].startswith("faster already") else ""
    return f"{prefix}{entry['pruned']:.0%}"


def _legend(result: StudyResult) -> str:
    env, cfg = result.environment, result.config
    lines = [
        "Cells: latency relative to dense (median of the variant / median of dense over the same interleaved "
        "rounds; < 1 is faster). */ort columns are relative to the dense model on ONNX Runtime, the others to "
        "torch.mm.",
        f"Timing: {result.clock['cpu']}. Threads: torch {env['torch_threads']} (OMP_WAIT_POLICY "
        f"{env['omp_wait_policy']}), ONNX Runtime {env['ort_threads']} (session.force_spinning_stop=1).",
        f"Patterns: element-wise (global magnitude), vector-wise (v={cfg['vector']} along K, equal count kept "
        f"per vector), block-wise ({cfg['block'][0]}x{cfg['block'][1]} blocks by L1), group-wise "
        f"(rows of W[K, N] by {cfg['criterion']}). Sparse libraries: {', '.join(_libraries(result))}.",
        f"Environment: {env['cpu']} ({env['cpu_count']} CPUs), torch {env['torch']}, onnxruntime "
        f"{env.get('onnxruntime')}, numpy {env.get('numpy')}, scipy {env['scipy']}; load average (1/5/15 min) "
        f"{env['load_average_start']} at the start, {env.get('load_average_end')} at the end.",
        "GPU: " + (result.gpu.get("device", "") if result.gpu.get("available") else result.gpu.get("reason", "")),
        f"Settings: shape set '{cfg['shapes']}', kept {', '.join(f'{k:.0%}' for k in cfg['keeps'])}, "
        f"group-wise on ONNX Runtime with lowering '{cfg['ort_lowering']}', seed {cfg['seed']} (random weights "
        "and inputs: latency does not depend on the values).",
    ]
    return "\n".join(lines)


def _libraries(result: StudyResult) -> list[str]:
    return sorted({m.library for m in result.measurements if m.pattern in PATTERNS[:3]})


def format_table(result: StudyResult) -> str:
    """The latency table, the break-even table and the settings, as plain text."""
    headers, rows = _rows(result)
    be_headers, be_rows = _break_even_rows(result)
    text = [_text_table(headers, rows), "", _legend(result), "",
            "Break-even: smallest share pruned at which the variant beats dense ('never' = not up to the "
            "most-pruned share measured; '<=' = already faster at the least-pruned share measured):",
            _text_table(be_headers, be_rows)]
    if result.skipped:
        text += ["", "Skipped:"] + [f"  {s['model']} {s['layer']} {s['pattern']} at {s['keep']:.0%}: {s['reason']}"
                                    for s in result.skipped]
    return "\n".join(text)


def render_markdown(result: StudyResult, plot: str | None = None) -> str:
    """A Markdown report: latency table, break-even table, every median/min, settings and environment."""
    headers, rows = _rows(result)
    be_headers, be_rows = _break_even_rows(result)
    detail = [[m.model, m.layer, f"{m.keep:.0%}", f"{m.pattern}/{m.library}", m.device, f"{m.median_ms:.3f}",
               f"{m.min_ms:.3f}", f"{m.ratio:.3f}", f"{m.ideal:.3f}", m.k_kept if m.k_kept is not None else "",
               m.note]
              for m in result.measurements]
    parts = ["# Pruning-pattern characterisation (sparsecc characterize)", "",
             "Reproduces the study of Liu et al., *Performance characterization and optimization of pruning "
             "patterns for sparse DNN inference* (sections 3 and 5, Figs 7-10) on this machine.", "",
             "## Latency relative to dense", "", _md_table(headers, rows), "", _legend(result).replace("\n", "\n\n"),
             "", "## Break-even share pruned", "", _md_table(be_headers, be_rows), ""]
    if plot:
        parts += [f"![latency relative to dense]({plot})", ""]
    parts += ["## Every measurement", "",
              _md_table(["model", "layer", "kept", "variant", "device", "median ms", "min ms", "ratio", "ideal",
                         "K'", "note"], detail), ""]
    if result.skipped:
        parts += ["## Skipped", ""] + [f"- {s['model']} {s['layer']} {s['pattern']} at {s['keep']:.0%}: "
                                       f"{s['reason']}" for s in result.skipped] + [""]
    return "\n".join(parts)


def plot_study(result: StudyResult, path: str) -> None:
    """Latency relative to dense vs % kept, one line per variant, one panel per model (like Figs 7-10).

    Each point is the geometric mean of the ratios of the model's layers at that share.
    """
    import io
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsecc.model import write_bytes_atomic

    models = list(dict.fromkeys(s["model"] for s in result.shapes))
    devices = list(dict.fromkeys(m.device for m in result.measurements))
    fig, axes = plt.subplots(len(devices), len(models), figsize=(max(4.2 * len(models), 9.0), 3.8 * len(devices) + 1.2),
                             squeeze=False, sharey=True)
    for row, device in enumerate(devices):
        for col, model in enumerate(models):
            ax = axes[row][col]
            series: dict[str, dict[float, list[float]]] = {}
            for m in result.measurements:
                if m.model == model and m.device == device and m.pattern != "dense":
                    series.setdefault(f"{m.pattern}/{m.library}", {}).setdefault(m.keep, []).append(m.ratio)
            for label, by_keep in series.items():
                keeps = sorted(by_keep, reverse=True)
                ratios = [math.exp(statistics.fmean(math.log(r) for r in by_keep[k])) for k in keeps]
                style = "-" if label.startswith("group-wise") else "--"
                ax.plot([100 * k for k in keeps], ratios, style, marker="o", label=label)
            keeps = sorted(result.config["keeps"], reverse=True)
            ax.plot([100 * k for k in keeps], keeps, ":", color="gray", label="ideal (MACs kept)")
            ax.axhline(1.0, color="black", linewidth=1, label="dense")
            ax.set_yscale("log")
            ax.set_xlim(100 * max(keeps) + 5, 100 * min(keeps) - 5)
            ax.set_title(f"{model} ({device})", fontsize=10)
            ax.set_xlabel("parameters kept (%)")
            if col == 0:
                ax.set_ylabel("latency / dense (log)")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    env = result.environment
    fig.suptitle(f"Pruning patterns vs dense GEMM: {env['cpu']}, {env['torch_threads']} threads", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())

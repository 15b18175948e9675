"""The pruning-pattern characterisation study of the group-wise paper, on this machine.

Liu et al. (section 3 and 5, Figs 7-10) time one GEMM per layer, pruned with
four patterns at about 75 / 50 / 25 % of the parameters kept, against the dense
GEMM: element-wise, vector-wise and block-wise through a sparse library
(cuSPARSE in the paper), and group-wise as a gather of the kept input rows plus
a smaller dense GEMM. This package reproduces that study for the GEMM and conv
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

The package, by job: :mod:`~sparsecc.study.shapes` (the layers), :mod:`~sparsecc.study.config`
(settings and results), :mod:`~sparsecc.study.variants` (masks and the torch / scipy variants),
:mod:`~sparsecc.study.onnx_rewrite` (the sparsecc rewrite on ONNX Runtime), :mod:`~sparsecc.study.timing`
(clocks and the machine), :mod:`~sparsecc.study.run` (:func:`run_study`), :mod:`~sparsecc.study.analysis`
(break-even) and :mod:`~sparsecc.study.render` (tables, Markdown, plot). Needs torch (the torch extra).
"""

from sparsecc.study.analysis import break_even, crossing
from sparsecc.study.config import KEEPS, PATTERNS, Measurement, StudyConfig, StudyResult
from sparsecc.study.render import format_table, plot_study, render_markdown
from sparsecc.study.run import run_study
from sparsecc.study.shapes import SHAPE_SETS, ConvShape, GemmShape, conv, linear

__all__ = ["ConvShape", "GemmShape", "KEEPS", "Measurement", "PATTERNS", "SHAPE_SETS", "StudyConfig", "StudyResult",
           "break_even", "conv", "crossing", "format_table", "linear", "plot_study", "render_markdown", "run_study"]

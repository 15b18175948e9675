"""Prune and fine-tune a PyTorch model with sparsecc's plans, then export it for ``compile``.

The masks come from the ONNX side, made by the very passes ``sparsecc compile`` runs
(``plan-groupwise``, ``plan-filters`` over the coupled channel groups of
:func:`sparsecc.dependency.build_channel_groups`, ``plan-24``, ``plan-deprune``: depthwise
taps by DCP/BWT/HSR and PW2 filters through ``plan-filters``), so there is one
implementation of every criterion and pattern (``sparsecc/sparsity/``):

1. :func:`plan_for_module` exports the module with PyTorch's TorchScript exporter
   (``dynamo=False``), which names every weight initializer after its parameter
   (``layer1.0.conv1.weight``), canonicalises it as ``compile`` does (BatchNorm folded
   into Conv; the folded weight keeps its name and shape) and runs the recipe's planning
   passes — those before its first ``apply-plan``.
2. :func:`masks_for_module` maps each plan entry to a parameter **by name**: the
   initializer name must equal a key of ``module.named_parameters()`` (a
   ``DistributedDataParallel`` / ``torch.compile`` wrapper's prefix is ignored), and the
   mask must have the parameter's shape (a 2-D mask that is its transpose, a MatMul
   weight stored [K, N], is transposed back). A name that maps to no parameter, or a
   shape that does not fit, is a :class:`~sparsecc.errors.PlanError` naming the weight,
   its layer and what to do: make the plan on an export with parameter names (this
   module's exporter, or ``torch.onnx.export(..., dynamo=False)``), not on an ONNX file
   edited or re-exported since.
3. :class:`MaskKeeper` zeroes the masked weights, masks their gradients, and after every
   optimizer step zeroes them and their optimizer state again, so they stay exactly zero
   through fine-tuning (SGD momentum, Adam moments).
4. :func:`finetune` runs one-shot (plan once, then train) or gradual (cubic schedule of
   Zhu and Gupta 2017: the target rises over the first epochs, masks only grow) pruning
   with fine-tuning; it runs unchanged under ``torchrun`` with DistributedDataParallel.
5. :func:`export_pruned_onnx` checks that every masked weight is still zero (a
   :class:`~sparsecc.errors.PlanError` lists those that are not), then exports with either
   exporter; ``sparsecc compile --recipe zeros`` finds the structure in the weights
   (``--recipe deprune-zeros`` for DEPrune's: depthwise tap zeros, depthwise channels left with
   no tap, PW2 filters).

The package, by job: :mod:`~sparsecc.finetuning.masks` (plans and masks),
:mod:`~sparsecc.finetuning.export` (ONNX export and weight loading), :mod:`~sparsecc.finetuning.training`
(the loop) and :mod:`~sparsecc.finetuning.job` (what ``sparsecc finetune`` runs). Needs the ``torch``
extra; ``import sparsecc`` never imports this package. (Its former name, ``sparsecc.torch``, still
imports it.)
"""

from sparsecc.finetuning.export import check_masks, export_pruned_onnx, load_onnx_weights
from sparsecc.finetuning.masks import (MaskKeeper, mask_digest, masks_for_module, plan_for_module, planning_passes,
                                       pruned_share)
from sparsecc.finetuning.training import (FinetuneResult, evaluate, finetune, gradual_fractions, random_shift,
                                          recalibrate_batchnorm)

__all__ = ["plan_for_module", "masks_for_module", "MaskKeeper", "check_masks", "export_pruned_onnx", "finetune",
           "FinetuneResult", "planning_passes", "evaluate", "recalibrate_batchnorm", "gradual_fractions",
           "load_onnx_weights", "mask_digest", "pruned_share", "random_shift"]

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
5. :func:`export_onnx` checks that every masked weight is still zero (a
   :class:`~sparsecc.errors.PlanError` lists those that are not), then exports with either
   exporter; ``sparsecc compile --recipe zeros`` finds the structure in the weights
   (``--recipe deprune-zeros`` for DEPrune's: depthwise tap zeros, depthwise channels left with
   no tap, PW2 filters).

Needs the ``torch`` extra; ``import sparsecc`` never imports this module.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sparsecc.errors import OptionError, PlanError, ShapeError, install_hint

try:
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    raise OptionError("sparsecc.torch needs PyTorch, which is not installed",
                      fix=install_hint("torch", "PyTorch")) from None

__all__ = ["plan_for_module", "masks_for_module", "MaskKeeper", "check_masks", "export_onnx", "finetune",
           "FinetuneResult", "planning_passes", "evaluate", "recalibrate_batchnorm", "gradual_fractions",
           "load_onnx_weights", "pruned_share", "random_shift"]

_PLAN_PASSES = ("plan-groupwise", "plan-filters", "plan-24", "plan-deprune")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


# ---------------------------------------------------------------------------------------------
# Plans on the ONNX side, masks on the torch side
# ---------------------------------------------------------------------------------------------

def planning_passes(recipe, fraction: float = 1.0) -> list[tuple[str, dict[str, Any]]]:
    """The recipe's planning stage: its passes before the first ``apply-plan``.

    Args:
        recipe: A recipe name, file or :class:`~sparsecc.recipe.Recipe`.
        fraction: Share of the recipe's pruning to plan (gradual schedules): ``keep``
            becomes ``1 - fraction * (1 - keep)``, ``ratio`` becomes ``fraction * ratio``.
            Defaults to 1.0.

    Raises:
        OptionError: The recipe plans nothing the torch side can mask, plans again after a
            rewrite (a second stage works on a graph the torch model does not have), or asks
            for a gradual 2:4 (2:4 is all or nothing).
    """
    from sparsecc.recipe import Recipe, load_recipe

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    names = [name for name, _ in recipe.passes]
    stop = names.index("apply-plan") if "apply-plan" in names else len(names)
    stage = recipe.passes[:stop]
    unknown = [name for name, _ in stage if name not in _PLAN_PASSES]
    later = [name for name, _ in recipe.passes[stop:] if name in _PLAN_PASSES or name == "plan-from-zeros"]
    if not any(name in _PLAN_PASSES for name, _ in stage) or unknown or later:
        why = (f"its planning stage has {unknown}, which changes the graph" if unknown else
               f"it plans again ({later}) after a rewrite" if later else "it plans no pruning")
        raise OptionError(f"recipe '{recipe.name}' cannot be fine-tuned in PyTorch: {why}",
                          where=recipe.source,
                          fix=f"use a recipe whose passes before apply-plan are only {', '.join(_PLAN_PASSES)} "
                              "(groupwise-*, filter-l1, filter-l2, deprune, deprune-b, deprune-bh, deprune-cpu, "
                              "or your own); fine-tune each stage apart")
    scaled = []
    for name, options in stage:
        options = dict(options)
        if fraction < 1.0:
            if name == "plan-24":
                raise OptionError("a gradual schedule cannot ramp 2:4 pruning (it keeps 2 of every 4)",
                                  where=f"recipe '{recipe.name}'", fix="use --schedule one-shot for 2:4 recipes")
            if name == "plan-groupwise":
                options["keep"] = 1.0 - fraction * (1.0 - float(options.get("keep", 0.5)))
                if options.get("ratios"):
                    options["ratios"] = {k: 1.0 - fraction * (1.0 - v) for k, v in options["ratios"].items()}
            if name == "plan-filters" and (options.get("target_speedup") or options.get("target_latency")):
                options["target_share"] = fraction * float(options.get("target_share", 1.0))  # of the saving
            elif name == "plan-filters":
                options["ratio"] = fraction * float(options.get("ratio", 0.4))
            if name == "plan-deprune":  # depthwise taps and PW2 filters ramp together
                options["dw_ratio"] = fraction * float(options.get("dw_ratio", 0.8))
                options["pw_ratio"] = fraction * float(options.get("pw_ratio", 0.5))
                if options.get("ratios"):
                    options["ratios"] = {k: fraction * v for k, v in options["ratios"].items()}
        scaled.append((name, options))
    return scaled


def _unwrapped(module):
    return getattr(module, "module", module)


def _example_input(module, example):
    if example is not None:
        return example
    raise OptionError("an example input is needed to export the model", where="sparsecc.torch",
                      fix="pass example=torch.zeros(1, C, H, W) (batch 1, the model's input shape)")


def _export_bytes(module, example, dynamo: bool = False, opset: int = 17, dynamic_batch: bool = False) -> bytes:
    import io
    import warnings

    module = _unwrapped(module)
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if dynamo:
                program = torch.onnx.export(module, (example,), dynamo=True, opset_version=max(opset, 18),
                                            input_names=["input"], output_names=["logits"], verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch
                                            else None)
                return program.model_proto.SerializeToString()
            buffer = io.BytesIO()
            axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
            # The TorchScript exporter merges initializers of equal value (fresh BatchNorm scales
            # and variances) into Identity nodes unless the top module says it is training, and
            # then only merges shared storage. Only the top flag is set: every submodule stays
            # in eval mode, so BatchNorm is exported for inference (PRESERVE keeps it apart from
            # Conv), and every weight initializer keeps its parameter's name.
            module.training = True
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"], dynamic_axes=axes,
                              training=torch.onnx.TrainingMode.PRESERVE)
            return buffer.getvalue()
    finally:
        module.train(was_training)


def plan_for_module(module, recipe, example=None, fraction: float = 1.0, timing_cache=None,
                    report: dict | None = None):
    """Makes the recipe's sparsity plan on an ONNX export of ``module``, as ``compile`` would.

    Args:
        module: The model (a DistributedDataParallel wrapper is fine).
        recipe: Recipe name, file or Recipe; only its planning stage runs (see
            :func:`planning_passes`).
        example: One input batch (batch 1) for the export.
        fraction: Share of the recipe's pruning, for gradual schedules. Defaults to 1.0.
        timing_cache: The timing cache file of measured choices (speed targets), or "off". Defaults to
            ``$SPARSECC_TIMING_CACHE``, else ``~/.cache/sparsecc/timing-cache.json``.
        report: A dict to receive what a speed target found (``plan-filters``' result). Defaults to none.

    Returns:
        A :class:`~sparsecc.plan.SparsityPlan` keyed by ONNX initializer names, which are the
        parameter names.
    """
    import onnx

    from sparsecc.lowering import open_timing_cache
    from sparsecc.model import clamp_ir_version, load_model
    from sparsecc.passes.canonicalize import CANONICAL_PASSES
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    stage = planning_passes(recipe, fraction)
    proto = onnx.load_from_string(_export_bytes(module, _example_input(module, example)))
    clamp_ir_version(proto)
    with tempfile.TemporaryDirectory(prefix="sparsecc-plan-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        model = load_model(path)
        passes = [make_pass(n) for n in CANONICAL_PASSES] + [make_pass(n, **o) for n, o in stage]
        ctx = PassContext(model, timing_cache=open_timing_cache(timing_cache))  # speed targets time layers
        records = PassManager(passes).run(ctx)
    for record in records:
        if report is not None and record.result is not None and "speed_target" in record.result.details:
            report.update(record.result.details["speed_target"]["result"])
    if ctx.plan is None or not len(ctx.plan):
        raise PlanError("the recipe planned no weight of this model", where="plan_for_module",
                        fix="check the recipe's layer selection against `sparsecc inspect` of the export")
    return ctx.plan


def masks_for_module(plan, module) -> dict[str, "torch.Tensor"]:
    """Maps a plan's masks to the module's parameters by name (see the module docstring).

    Returns:
        ``{parameter name: bool tensor shaped like the parameter}`` (True = kept).

    Raises:
        PlanError: A plan weight names no parameter, or its mask does not fit the parameter.
    """
    params = dict(_unwrapped(module).named_parameters())
    masks = {}
    for entry in plan.entries.values():
        name = entry.weight
        for prefix in _WRAPPER_PREFIXES:
            name = name[len(prefix):] if name.startswith(prefix) else name
        param = params.get(name)
        if param is None:
            near = [p for p in params if p.split(".")[-1] == name.split(".")[-1]][:3]
            raise PlanError(f"the plan's weight '{entry.weight}' (layer '{entry.layer}') is not a parameter "
                            f"of the model; plan weights map to parameters by name"
                            + (f" (parameters of that kind: {near})" if near else ""),
                            where="masks_for_module",
                            fix="make the plan on an export that names initializers after parameters: "
                                "sparsecc.torch.plan_for_module, `sparsecc finetune`, or "
                                "torch.onnx.export(..., dynamo=False, training=TrainingMode.PRESERVE)")
        mask = entry.mask
        if tuple(mask.shape) != tuple(param.shape):
            if mask.ndim == 2 and tuple(mask.T.shape) == tuple(param.shape):
                mask = mask.T  # MatMul stores Linear's weight as [K, N]
            else:
                raise PlanError(f"the mask for '{entry.weight}' has shape {list(entry.mask.shape)} but the "
                                f"parameter has shape {list(param.shape)}", where=f"layer '{entry.layer}'",
                                fix="make the plan for this model (the same architecture and widths)")
        masks[name] = torch.from_numpy(np.ascontiguousarray(mask)).to(param.device)
    return masks


def check_masks(module, masks: dict[str, "torch.Tensor"]) -> None:
    """Raises PlanError when a masked weight is no longer zero (e.g. a training loop without
    :class:`MaskKeeper`, or an optimizer step after it was removed), listing every such weight."""
    params = dict(_unwrapped(module).named_parameters())
    bad = []
    for name, mask in masks.items():
        values = params[name].detach()[~mask]
        if values.numel() and bool((values != 0).any()):
            bad.append(f"{name}: {int((values != 0).sum())} of {values.numel()} pruned weights non-zero "
                       f"(max |w| {float(values.abs().max()):.3g})")
    if bad:
        raise PlanError("masked weights became non-zero after pruning: " + "; ".join(bad),
                        where="before export",
                        fix="keep the masks during fine-tuning (sparsecc.torch.MaskKeeper after the optimizer "
                            "is built), or re-apply them with MaskKeeper.apply() before exporting")


class MaskKeeper:
    """Keeps masked weights at zero during training, optimizer state included.

    Zeroes the weights when created, masks each gradient (a hook on the parameter, so
    DistributedDataParallel all-reduces masked gradients), and after every step of
    ``optimizer`` zeroes the weights and every per-parameter optimizer tensor shaped like
    the weight (momentum buffers, Adam moments) where the mask is False.

    Args:
        module: The model (or its DistributedDataParallel wrapper).
        masks: From :func:`masks_for_module`.
        optimizer: Optional; its steps are followed by re-masking. Defaults to none.
    """

    def __init__(self, module, masks: dict[str, "torch.Tensor"], optimizer=None):
        params = dict(_unwrapped(module).named_parameters())
        self._params = {name: params[name] for name in masks}
        self.optimizer = optimizer
        self._handles: list = []
        self._attach(dict(masks))

    def _attach(self, masks: dict) -> None:
        self.remove()
        self.masks = masks
        self._handles = [self._params[n].register_hook(self._gradient_hook(m)) for n, m in masks.items()]
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply()))
        self.apply()

    @staticmethod
    def _gradient_hook(mask):
        return lambda grad: grad * mask

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights and their optimizer state now."""
        for name, mask in self.masks.items():
            param = self._params[name]
            param.mul_(mask)
            if self.optimizer is not None:
                for value in self.optimizer.state.get(param, {}).values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value.mul_(mask)

    def update(self, masks: dict[str, "torch.Tensor"]) -> None:
        """Replace the masks (a gradual schedule's next step): masks only grow, never shrink."""
        merged = dict(self.masks)
        for name, mask in masks.items():
            if name not in self._params:
                raise PlanError(f"the new masks name '{name}', which the keeper does not hold",
                                where="MaskKeeper.update", fix="make every plan of a schedule for the same model")
            merged[name] = mask & merged[name] if name in merged else mask
        self._attach(merged)

    def remove(self) -> None:
        """Stop keeping the masks (hooks removed); the weights stay as they are."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def sparsity(self) -> float:
        """Share of the masked parameters' weights that are pruned."""
        return pruned_share(self.masks)


def pruned_share(masks: dict) -> float:
    """Share of the weights that ``{parameter: bool mask}`` prunes (0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    return float(sum(int((~m).sum()) for m in masks.values()) / total) if total else 0.0


def export_onnx(module, path, example=None, *, masks: dict | None = None, dynamo: bool = False,
                opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Exports a pruned (fine-tuned) model to ONNX after checking that its masks held.

    Args:
        module: The model.
        path: Output .onnx, written atomically.
        example: One input batch.
        masks: Masks to check first (:func:`check_masks`). Defaults to none.
        dynamo: Use the torch.export-based exporter (opset >= 18) instead of TorchScript.
            Defaults to False.
        opset: ONNX opset. Defaults to 17.
        dynamic_batch: Make dimension 0 a symbolic ``batch``. Defaults to True.

    Raises:
        PlanError: A masked weight is not zero.
    """
    import onnx

    from sparsecc.model import clamp_ir_version, write_bytes_atomic

    if masks:
        check_masks(module, masks)
    data = _export_bytes(module, _example_input(module, example), dynamo=dynamo, opset=opset,
                         dynamic_batch=dynamic_batch)
    proto = onnx.load_from_string(data)
    clamp_ir_version(proto)
    path = Path(path)
    write_bytes_atomic(path, proto.SerializeToString())
    return path


def load_onnx_weights(module, path) -> int:
    """Loads a model's parameters and buffers from the initializers of an ONNX file, by name.

    The file must be an export of the same architecture that names initializers after the
    state-dict keys (the zoo checkpoints, this module's exporter, the TorchScript exporter in
    PRESERVE mode). Returns the number of tensors loaded.

    Raises:
        ModelLoadError: A tensor of the model is missing from the file or has another shape.
    """
    import onnx
    from onnx import numpy_helper

    from sparsecc.errors import ModelLoadError

    from sparsecc.model import check_model_file

    graph = onnx.load(str(check_model_file(path))).graph
    weights = {t.name: t for t in graph.initializer}
    # the TorchScript exporter may give equal weights one initializer, reached through Identity nodes
    weights.update({n.output[0]: weights[n.input[0]] for n in graph.node
                    if n.op_type == "Identity" and n.input[0] in weights})
    state = _unwrapped(module).state_dict()
    wanted = [key for key in state if not key.endswith("num_batches_tracked")]
    missing = [key for key in wanted if key not in weights]
    if missing:
        raise ModelLoadError(f"the ONNX file lacks {len(missing)} tensor(s) of the model, e.g. {missing[:3]}",
                             where=str(path), fix="give an export of this architecture (--arch) whose "
                                                  "initializers are named after its parameters")
    loaded = {}
    for key in wanted:
        value = torch.from_numpy(numpy_helper.to_array(weights[key]).copy())
        if tuple(value.shape) != tuple(state[key].shape):
            raise ModelLoadError(f"tensor '{key}' has shape {list(value.shape)} in the file but "
                                 f"{list(state[key].shape)} in the model", where=str(path),
                                 fix="give an export of this architecture and width (--arch)")
        loaded[key] = value
    _unwrapped(module).load_state_dict(loaded, strict=False)
    return len(loaded)


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------

@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        module: The fine-tuned model (unwrapped), in eval mode.
        plan: The final plan, keyed by ONNX initializer (= parameter) names.
        masks: ``{parameter: bool mask}``.
        history: Per epoch: epoch, pruned share of the masked weights, train loss, seconds.
        top1_before_finetune: Test accuracy right after the first pruning, before training.
        top1_one_shot_bn: The same after re-estimating BatchNorm statistics (no training; None
            when ``epochs`` is 0).
        top1: Test accuracy after fine-tuning (torch, eval mode).
        n: Number of test images.
        rank, world_size: This process in a distributed run (0 and 1 otherwise).
        mask_digest: SHA-256 of the final masks (names and bits), to compare runs.
        rank_mask_digests: Every rank's digest, gathered (one entry when not distributed).
        speed_target: With a speed target, the last plan's result: target, predicted, measured, ideal.
    """

    module: Any
    plan: Any
    masks: dict
    history: list[dict] = field(default_factory=list)
    top1_before_finetune: float | None = None
    top1_one_shot_bn: float | None = None
    top1: float | None = None
    n: int = 0
    rank: int = 0
    world_size: int = 1
    mask_digest: str = ""
    rank_mask_digests: list[str] = field(default_factory=list)
    speed_target: dict = field(default_factory=dict)


def evaluate(module, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of a torch module on numpy inputs (eval mode, no gradients)."""
    inner = _unwrapped(module)
    was_training = inner.training
    inner.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = inner(torch.from_numpy(x[start:start + batch]))
            correct += int((logits.argmax(dim=1).numpy() == y[start:start + batch]).sum())
    inner.train(was_training)
    return correct / len(x) if len(x) else 0.0


def _distributed():
    """(rank, world size), starting the process group when torchrun launched us."""
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def recalibrate_batchnorm(module, x: np.ndarray, batch: int = 256) -> int:
    """Re-estimates every BatchNorm's running statistics on ``x`` with the current weights.

    Pruning changes what each BatchNorm sees; its running averages, updated with momentum
    during a short fine-tuning, still remember the dense model. A cumulative average over the
    training inputs (no gradients, weights untouched) makes eval mode match the weights.
    Returns the number of BatchNorm layers re-estimated. Ranks of a distributed run see the
    same ``x``, so they agree.
    """
    inner = _unwrapped(module)
    norms = [m for m in inner.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = inner.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    inner.train()
    with torch.no_grad():
        for start in range(0, len(x), batch):
            inner(torch.from_numpy(np.ascontiguousarray(x[start:start + batch])))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    inner.train(was_training)
    return len(norms)


def mask_digest(masks: dict[str, "torch.Tensor"]) -> str:
    """SHA-256 over the masks' names, shapes and bits (equal masks, equal digest)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().cpu().numpy()
        digest.update(f"{name}{list(mask.shape)}".encode())
        digest.update(np.packbits(mask.reshape(-1)).tobytes())
    return digest.hexdigest()


def _gather_digests(digest: str, world: int) -> list[str]:
    if world == 1:
        return [digest]
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, digest)
    return gathered


def gradual_fractions(epochs: int, ramp: int | None = None) -> list[float]:
    """Per epoch, the share of the final pruning planned at its start (cubic, Zhu and Gupta 2017).

    The target rises as ``1 - (1 - t/ramp)^3`` over the first ``ramp`` epochs (two thirds of
    them by default, at least 1) and stays at 1 after, so the last epochs fine-tune at the
    final sparsity.
    """
    ramp = max(1, ramp if ramp is not None else (2 * epochs) // 3)
    return [1.0 - (1.0 - min(t + 1, ramp) / ramp) ** 3 for t in range(epochs)]


def random_shift(batch, generator, pad: int = 2):
    """Random translation by up to ``pad`` pixels (the zoo checkpoints' training augmentation)."""
    padded = torch.nn.functional.pad(batch, (pad,) * 4, value=float(batch.min()))
    height, width = batch.shape[-2:]
    offsets = torch.randint(0, 2 * pad + 1, (len(batch), 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())])


def finetune(module, split, recipe=None, *, plan=None, epochs: int = 3, schedule: str = "one-shot",
             lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 5e-4, seed: int = 0,
             augment: bool = True, train_limit: int | None = None,
             log: Callable[[str], None] | None = None, timing_cache=None) -> FinetuneResult:
    """Prunes ``module`` by a recipe (or applies a given plan) and fine-tunes it with the masks kept.

    Runs unchanged under ``torchrun``: with ``WORLD_SIZE > 1`` it joins the process group (gloo
    on CPU, NCCL on GPUs), wraps the model in DistributedDataParallel, and gives each rank an
    equal share of every batch of one seeded order (so the global batch is ``batch_size``).
    Every rank plans on the same weights, so every rank holds the same masks.

    Args:
        module: The model, with trained weights.
        split: A :class:`sparsecc.data.Split`.
        recipe: Recipe whose planning stage makes the masks. Required unless ``plan`` is given.
        plan: A plan (:class:`~sparsecc.plan.SparsityPlan`) to apply instead. Defaults to none.
        epochs: Fine-tuning epochs. Defaults to 3.
        schedule: "one-shot" (plan once, then train) or "gradual" (the cubic schedule of
            :func:`gradual_fractions`, re-planning at the start of each ramp epoch). Defaults to
            "one-shot".
        lr: AdamW learning rate, cosine-annealed to 0. Defaults to 1e-3.
        batch_size: Global batch. Defaults to 64.
        weight_decay: AdamW decoupled weight decay. Defaults to 5e-4.
        seed: Seeds the data order and augmentation. Defaults to 0.
        augment: Random shifts of up to 2 pixels. Defaults to True.
        train_limit: Use only the first N training images (quick checks). Defaults to all.
        log: Progress callback (rank 0 only). Defaults to sparsecc's progress lines on stderr.
        timing_cache: Timing cache file for a speed target's measurements, or "off". Defaults to the
            user's (see :func:`plan_for_module`).

    Raises:
        OptionError: Neither or both of recipe and plan; unknown schedule; a gradual plan.
        PlanError: The plan does not map onto the model.
    """
    if (recipe is None) == (plan is None):
        raise OptionError("give either a recipe or a plan", where="finetune",
                          fix="--recipe NAME to prune here, or --plan plan.json to apply a plan made elsewhere")
    if schedule not in ("one-shot", "gradual"):
        raise OptionError(f"unknown schedule {schedule!r}", where="finetune", fix="use one-shot or gradual")
    if schedule == "gradual" and plan is not None:
        raise OptionError("a gradual schedule re-plans as it goes, so it needs a recipe, not a plan",
                          where="finetune", fix="use --schedule one-shot with --plan")
    if not isinstance(epochs, int) or epochs < 0:
        raise OptionError(f"epochs {epochs!r} is not a non-negative integer", where="finetune")
    if log is None:
        from sparsecc.log import progress as log
    rank, world = _distributed()
    say = log if rank == 0 else (lambda message: None)

    inner = _unwrapped(module)
    example = torch.from_numpy(split.x_test[:1].copy())
    with torch.no_grad():
        try:
            inner.eval()(example)
        except RuntimeError as exc:
            raise ShapeError(f"the model cannot take data set '{split.name}' inputs "
                             f"{list(example.shape)}: {str(exc).splitlines()[0]}", where="finetune",
                             fix="use a model made for this data set's input shape, or another data set") from None

    fractions = gradual_fractions(epochs) if schedule == "gradual" and epochs else [1.0]
    speed_target: dict = {}

    def make_plan(fraction: float):
        if plan is not None:
            return plan
        return plan_for_module(inner, recipe, example, fraction, timing_cache, report=speed_target)

    current = make_plan(fractions[0])
    masks = masks_for_module(current, inner)
    x_train, y_train = split.x_train, split.y_train
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    training = torch.nn.parallel.DistributedDataParallel(inner) if world > 1 else inner
    optimizer = torch.optim.AdamW(inner.parameters(), lr=lr, weight_decay=weight_decay)
    keeper = MaskKeeper(inner, masks, optimizer)
    result = FinetuneResult(inner, current, keeper.masks, n=int(len(split.y_test)), rank=rank, world_size=world,
                            speed_target=speed_target)
    result.top1_before_finetune = evaluate(inner, split.x_test, split.y_test)
    if epochs:  # what one-shot pruning gives once BatchNorm has seen the pruned weights (no training)
        recalibrate_batchnorm(inner, x_train)
        result.top1_one_shot_bn = evaluate(inner, split.x_test, split.y_test)
    say(f"pruned {keeper.sparsity():.1%} of the planned weights; top-1 before fine-tuning "
        f"{result.top1_before_finetune:.4f} (BatchNorm re-estimated: {result.top1_one_shot_bn}) "
        f"on {result.n} test images")

    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    schedule_lr = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train)
    for epoch in range(epochs):
        started = time.perf_counter()
        if schedule == "gradual" and epoch > 0 and fractions[epoch] > fractions[epoch - 1]:
            current = make_plan(fractions[epoch])
            keeper.update(masks_for_module(current, inner))
            result.plan, result.masks = current, keeper.masks
        training.train()
        order = torch.randperm(len(x_all), generator=generator)
        total, count = 0.0, 0
        for step, start in enumerate(range(0, len(order), batch_size)):
            index = order[start:start + batch_size]
            batch = random_shift(x_all[index], generator) if augment else x_all[index]
            local = slice(rank * len(index) // world, (rank + 1) * len(index) // world)
            loss = torch.nn.functional.cross_entropy(training(batch[local]), y_all[index][local])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule_lr.step()
            total, count = total + float(loss.detach()) * len(index), count + len(index)
        result.history.append({"epoch": epoch + 1, "pruned": round(keeper.sparsity(), 4),
                               "train_loss": round(total / max(count, 1), 4),
                               "seconds": round(time.perf_counter() - started, 2)})
        say(f"epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.3f}, pruned {keeper.sparsity():.1%}, "
            f"{time.perf_counter() - started:.1f} s")
    keeper.remove()
    check_masks(inner, result.masks)
    result.mask_digest = mask_digest(result.masks)
    result.rank_mask_digests = _gather_digests(result.mask_digest, world)
    if len(set(result.rank_mask_digests)) > 1:
        raise PlanError(f"the ranks of this distributed run hold different masks ({result.rank_mask_digests})",
                        where=f"rank {rank}", fix="start every rank from the same weights and data (same seed)")
    if epochs:
        recalibrate_batchnorm(inner, x_train)
    result.top1 = evaluate(inner, split.x_test, split.y_test)
    say(f"top-1 after fine-tuning {result.top1:.4f} on {result.n} test images")
    inner.eval()
    return result

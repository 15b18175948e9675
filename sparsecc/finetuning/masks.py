"""Plans on the ONNX side, masks on the torch side, kept at zero through training.

:func:`plan_for_module` makes a recipe's plan on an export of the module with the very passes
``compile`` runs; :func:`masks_for_module` maps each plan entry to the parameter of the same name;
:class:`MaskKeeper` keeps the masked weights (and their optimizer state) at zero.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.errors import OptionError, PlanError, install_hint

try:
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    raise OptionError("sparsecc.finetuning needs PyTorch, which is not installed",
                      fix=install_hint("torch", "PyTorch")) from None

from sparsecc.finetuning.export import WRAPPER_PREFIXES, example_input, export_bytes, unwrapped  # noqa: E402


def planning_passes(recipe, fraction: float = 1.0) -> list[tuple[str, dict[str, Any]]]:
    """The recipe's planning stage: its passes before the first ``apply-plan``.

    Args:
        recipe: A recipe name, file or :class:`~sparsecc.recipe.Recipe`.
        fraction: Share of the recipe's pruning to plan (gradual schedules): each planner scales
            its options (:meth:`~sparsecc.passmanager.Pass.options_at`; e.g. ``keep`` becomes
            ``1 - fraction * (1 - keep)``, ``ratio`` becomes ``fraction * ratio``). Defaults to 1.0.

    Raises:
        OptionError: The recipe plans nothing the torch side can mask (no planner, or only planners
            that detect zeros already there), plans again after a rewrite (a second stage works on a
            graph the torch model does not have), or asks for a gradual schedule of a planner that
            cannot take one (2:4 is all or nothing).
    """
    from sparsecc.passmanager import Role, available_passes
    from sparsecc.recipe import Recipe, load_recipe

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    recipe.load_imports()
    passes = available_passes()
    roles = [passes[name].role if name in passes else None for name, _ in recipe.passes]
    stop = roles.index(Role.APPLY) if Role.APPLY in roles else len(roles)
    stage = recipe.passes[:stop]

    def pruning_planner(name: str) -> bool:
        return name in passes and passes[name].role == Role.PLAN and not passes[name].detects

    unknown = [name for name, _ in stage if not pruning_planner(name)]
    later = [name for (name, _), role in zip(recipe.passes[stop:], roles[stop:]) if role == Role.PLAN]
    if not any(pruning_planner(name) for name, _ in stage) or unknown or later:
        why = (f"its planning stage has {unknown}, which changes the graph" if unknown else
               f"it plans again ({later}) after a rewrite" if later else "it plans no pruning")
        planners = sorted(name for name, cls in passes.items() if cls.role == Role.PLAN and not cls.detects)
        raise OptionError(f"recipe '{recipe.name}' cannot be fine-tuned in PyTorch: {why}",
                          where=recipe.source,
                          fix=f"use a recipe whose passes before apply-plan are only {', '.join(planners)} "
                              "(groupwise-*, filter-l1, filter-l2, deprune, deprune-b, deprune-bh, deprune-cpu, "
                              "or your own); fine-tune each stage apart")
    scaled = []
    for name, options in stage:
        options = dict(options)
        if fraction < 1.0:
            try:
                options = passes[name].options_at(options, fraction)
            except OptionError as err:
                err.where = err.where or f"recipe '{recipe.name}'"
                raise
        scaled.append((name, options))
    return scaled


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
    from sparsecc.nothing_planned import empty_plan_reason
    from sparsecc.passes.canonicalize import Canonicalize
    from sparsecc.passmanager import PassContext, PassManager, make_pass

    stage = planning_passes(recipe, fraction)
    proto = onnx.load_from_string(export_bytes(module, example_input(module, example)))
    clamp_ir_version(proto)
    with tempfile.TemporaryDirectory(prefix="sparsecc-plan-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        model = load_model(path)
        passes = [Canonicalize()] + [make_pass(n, **o) for n, o in stage]
        ctx = PassContext(model, timing_cache=open_timing_cache(timing_cache))  # speed targets time layers
        PassManager(passes).run(ctx)
    if report is not None and "speed_target" in ctx.details_of("plan-filters"):
        report.update(ctx.details_of("plan-filters")["speed_target"]["result"])
    if ctx.plan is None or not len(ctx.plan):
        if ctx.plan is not None and empty_plan_reason(ctx.history):
            return ctx.plan  # nothing to prune, by design (a speed target the model already meets at this step)
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
    params = dict(unwrapped(module).named_parameters())
    masks = {}
    for entry in plan.entries.values():
        name = entry.weight
        for prefix in WRAPPER_PREFIXES:
            name = name[len(prefix):] if name.startswith(prefix) else name
        param = params.get(name)
        if param is None:
            near = [p for p in params if p.split(".")[-1] == name.split(".")[-1]][:3]
            raise PlanError(f"the plan's weight '{entry.weight}' (layer '{entry.layer}') is not a parameter "
                            f"of the model; plan weights map to parameters by name"
                            + (f" (parameters of that kind: {near})" if near else ""),
                            where="masks_for_module",
                            fix="make the plan on an export that names initializers after parameters: "
                                "sparsecc.finetuning.plan_for_module, `sparsecc finetune`, or "
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
        self._params = dict(unwrapped(module).named_parameters())  # a later step may mask more of them
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
                raise PlanError(f"the new masks name '{name}', which is not a parameter of the module",
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


def mask_digest(masks: dict[str, "torch.Tensor"]) -> str:
    """SHA-256 over the masks' names, shapes and bits (equal masks, equal digest)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().cpu().numpy()
        digest.update(f"{name}{list(mask.shape)}".encode())
        digest.update(np.packbits(mask.reshape(-1)).tobytes())
    return digest.hexdigest()

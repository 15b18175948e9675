"""Fine-tuning with the masks kept: one-shot or gradual pruning, single process or under torchrun."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sparsecc.errors import OptionError, PlanError, ShapeError, install_hint

try:
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    raise OptionError("sparsecc.finetuning needs PyTorch, which is not installed",
                      fix=install_hint("torch", "PyTorch")) from None

from sparsecc.finetuning.export import check_masks, unwrapped  # noqa: E402
from sparsecc.finetuning.masks import MaskKeeper, mask_digest, masks_for_module, plan_for_module  # noqa: E402


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


def evaluate(module, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of a torch module on numpy inputs (eval mode, no gradients)."""
    inner = unwrapped(module)
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
    inner = unwrapped(module)
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
             log: Callable[[str], None] | None = None) -> FinetuneResult:
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

    inner = unwrapped(module)
    example = torch.from_numpy(split.x_test[:1].copy())
    with torch.no_grad():
        try:
            inner.eval()(example)
        except RuntimeError as exc:
            raise ShapeError(f"the model cannot take data set '{split.name}' inputs "
                             f"{list(example.shape)}: {str(exc).splitlines()[0]}", where="finetune",
                             fix="use a model made for this data set's input shape, or another data set") from None

    fractions = gradual_fractions(epochs) if schedule == "gradual" and epochs else [1.0]

    def make_plan(fraction: float):
        return plan if plan is not None else plan_for_module(inner, recipe, example, fraction)

    current = make_plan(fractions[0])
    masks = masks_for_module(current, inner)
    x_train, y_train = split.x_train, split.y_train
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    training = torch.nn.parallel.DistributedDataParallel(inner) if world > 1 else inner
    optimizer = torch.optim.AdamW(inner.parameters(), lr=lr, weight_decay=weight_decay)
    keeper = MaskKeeper(inner, masks, optimizer)
    result = FinetuneResult(inner, current, keeper.masks, n=int(len(split.y_test)), rank=rank, world_size=world)
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

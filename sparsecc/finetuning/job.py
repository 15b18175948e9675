"""A fine-tuning job as ``sparsecc finetune`` runs it: load, prune, fine-tune, export, score, write.

MODEL is a zoo model with a trained checkpoint, or an .onnx export of a zoo architecture named by
``arch``. The outputs (``model.onnx``, ``plan.json`` + ``plan.npz``, ``finetune.json``) go into
``output``; rank 0 of a distributed run writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sparsecc.errors import OptionError


@dataclass
class FinetuneJob:
    """What to fine-tune and how (the options of ``sparsecc finetune``).

    Attributes:
        model: A zoo model with a checkpoint, or an .onnx file (with ``arch``).
        data: The data set (:data:`sparsecc.data.DATASETS`).
        output: The output folder.
        recipe: Recipe whose planning passes make the masks; or ``plan``.
        plan: A plan.json made on the model's ONNX file, applied instead of a recipe.
        arch: The zoo architecture of an .onnx ``model``.
        epochs, schedule, lr, batch_size, train_limit, seed: As :func:`sparsecc.finetuning.finetune` takes them.
        threads: torch CPU threads per process.
        dynamo: Export with the torch.export-based exporter.
        force: Write into an output folder that is not empty (the outputs replace theirs).
    """

    model: str
    data: str
    output: str
    recipe: str | None = None
    plan: str | None = None
    arch: str | None = None
    epochs: int = 3
    schedule: str = "one-shot"
    lr: float = 1e-3
    batch_size: int = 64
    train_limit: int | None = None
    seed: int = 0
    threads: int = 1
    dynamo: bool = False
    force: bool = False


def run_finetune_job(job: FinetuneJob) -> dict | None:
    """Run the job; its summary (what ``finetune.json`` holds), or None on a rank other than 0."""
    import os
    from contextlib import nullcontext

    import torch

    from sparsecc import zoo
    from sparsecc.compiler import plan_files
    from sparsecc.data import load_dataset
    from sparsecc.finetuning import evaluate, finetune, load_onnx_weights
    from sparsecc.log import progress
    from sparsecc.outputs import OutputFolder
    from sparsecc.plan import SparsityPlan
    from sparsecc.recipe import load_recipe

    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    path = Path(job.model)
    if path.suffix == ".onnx" or path.exists():
        if not job.arch:
            raise OptionError("an .onnx MODEL needs --arch, the zoo architecture it was exported from",
                              where=str(path), fix="e.g. --arch resnet18-digits (sparsecc zoo list)")
        name, source = job.arch, path
        module = zoo.build_model(name)
        load_onnx_weights(module, source)
    else:
        if job.arch:
            raise OptionError("--arch is for an .onnx MODEL; a zoo MODEL is its own architecture",
                              where="--arch", fix="drop --arch, or give the .onnx file")
        name, source = job.model, zoo.checkpoint_path(job.model)
        module = zoo.build_model(name, pretrained=True)
    split = load_dataset(job.data)
    # a bad recipe or plan is refused before the output folder is made
    recipe = load_recipe(job.recipe) if job.recipe else None
    plan = SparsityPlan.load(job.plan) if job.plan else None
    # rank 0 writes (torchrun sets RANK); a folder that cannot be written is refused before training
    writer = int(os.environ.get("RANK", "0")) == 0
    inputs = [source, *plan_files(job.plan)]
    with OutputFolder(job.output, "finetune", inputs=inputs, force=job.force) if writer else nullcontext() as folder:
        dense = evaluate(module, split.x_test, split.y_test)
        result = finetune(module, split, recipe, plan=plan, epochs=job.epochs, schedule=job.schedule, lr=job.lr,
                          batch_size=job.batch_size, seed=job.seed, train_limit=job.train_limit)
        if result.rank != 0 or folder is None:
            return None
        summary = _write_outputs(job, folder.staging, result, split, dense, name, source)
        folder.commit()
    progress(f"wrote {job.output}")
    return summary


def _write_outputs(job: FinetuneJob, out: Path, result, split, dense: float, name: str, source) -> dict:
    """model.onnx, plan.json (+ .npz) and finetune.json into ``out`` (the output's staging folder)."""
    import torch

    from sparsecc.evaluate import evaluate_onnx
    from sparsecc.finetuning import export_pruned_onnx, pruned_share
    from sparsecc.outputs import write_bytes_atomic

    example = torch.from_numpy(split.x_test[:1].copy())
    export_pruned_onnx(result.module, out / "model.onnx", example, masks=result.masks, dynamo=job.dynamo)
    result.plan.source = f"sparsecc finetune {name} ({job.recipe or job.plan})"
    result.plan.save(out / "plan.json")
    onnx_top1 = evaluate_onnx(out / "model.onnx", job.data)["top1"]
    summary = {"model": name, "source": str(source), "data": job.data, "recipe": job.recipe, "plan": job.plan,
               "schedule": job.schedule, "epochs": job.epochs, "lr": job.lr, "batch_size": job.batch_size,
               "train_images": int(min(len(split.y_train), job.train_limit or len(split.y_train))),
               "seed": job.seed, "world_size": result.world_size, "mask_digest": result.mask_digest,
               "rank_mask_digests": result.rank_mask_digests, "n": result.n, "dense_top1": dense,
               "top1_before_finetune": result.top1_before_finetune,
               "top1_one_shot_bn": result.top1_one_shot_bn, "top1": result.top1, "onnx_top1": onnx_top1,
               "pruned_share_of_planned_weights": round(pruned_share(result.masks), 4),
               "history": result.history, "exporter": "dynamo" if job.dynamo else "torchscript",
               "torch_version": torch.__version__}
    write_bytes_atomic(out / "finetune.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary

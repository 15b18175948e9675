"""Prunes and fine-tunes a trained zoo checkpoint with ``sparsecc finetune`` and bundles the result.

For each recipe, writes into ``models/checkpoints/``: ``<model>.<recipe>.ft.onnx`` (the fine-tuned
model, masked weights exactly zero, dynamic batch), ``<model>.<recipe>.ft.plan.json`` + ``.npz``
(the plan it was pruned by), and a manifest entry (recipe, schedule, epochs, data, dense and
fine-tuned top-1 on ONNX Runtime, number of test images, torch version). The demo compiles these
in zero-detect mode, without torch.

Run: ``python tools/finetune_checkpoints.py --model resnet18-digits --recipes groupwise-50 filter-l1``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent.parent / "models" / "checkpoints"


def main(argv: list[str] | None = None) -> int:
    from sparsecc.finetuning.job import FinetuneJob, run_finetune_job

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18-digits")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--recipes", nargs="+", default=["groupwise-50", "filter-l1"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--schedule", default="one-shot")
    parser.add_argument("--out", type=Path, default=CHECKPOINTS)
    args = parser.parse_args(argv)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for recipe in args.recipes:
        stem = f"{args.model}.{recipe}.ft"
        with tempfile.TemporaryDirectory() as folder:
            summary = run_finetune_job(FinetuneJob(args.model, args.data, folder, recipe=recipe, epochs=args.epochs,
                                                   schedule=args.schedule))
            shutil.copyfile(Path(folder) / "model.onnx", args.out / f"{stem}.onnx")
            plan = json.loads((Path(folder) / "plan.json").read_text())
            plan["masks"] = f"{stem}.plan.npz"
            (args.out / f"{stem}.plan.json").write_text(json.dumps(plan, indent=2) + "\n")
            shutil.copyfile(Path(folder) / "plan.npz", args.out / f"{stem}.plan.npz")
        manifest[stem] = {
            "file": f"{stem}.onnx", "plan": f"{stem}.plan.json", "finetuned_from": args.model,
            "recipe": recipe, "schedule": args.schedule, "epochs": args.epochs, "data": args.data,
            "dense_top1": summary["dense_top1"], "top1_before_finetune": summary["top1_before_finetune"],
            "top1": summary["onnx_top1"], "n": summary["n"], "lr": summary["lr"],
            "batch_size": summary["batch_size"], "optimizer": "AdamW, cosine to 0, masks kept",
            "pruned_share_of_planned_weights": summary["pruned_share_of_planned_weights"],
            "command": f"sparsecc finetune {args.model} --data {args.data} --recipe {recipe} "
                       f"--epochs {args.epochs} --schedule {args.schedule}",
            "torch_version": summary["torch_version"],
        }
        print(f"{stem}: top-1 {summary['onnx_top1']:.4f} (dense {summary['dense_top1']:.4f}, one-shot "
              f"{summary['top1_before_finetune']:.4f}) on {summary['n']} test images", flush=True)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

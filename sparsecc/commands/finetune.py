"""sparsecc finetune MODEL --data NAME (--recipe R | --plan P): prune in PyTorch by a sparsecc plan,
fine-tune with the masks kept, and write the fine-tuned ONNX and its plan.

MODEL is a zoo model with a trained checkpoint (``sparsecc zoo list``), or an .onnx file of a zoo
architecture named with --arch. The masks come from the recipe's planning passes run on an export
of the model (the ones ``sparsecc compile`` runs), or from a plan.json made on the model's ONNX
file; they map to the PyTorch parameters by name. Runs unchanged under torchrun (DistributedDataParallel;
gloo on CPU, NCCL on GPUs); rank 0 writes. Then compile the result in zero-detect mode:
``sparsecc compile OUT/model.onnx --recipe zeros --shape input:1x1x32x32 -o OUT2``
(``--recipe deprune-zeros`` after a DEPrune recipe; the command prints which).
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from sparsecc.commands._common import add_speed_target_options
    from sparsecc.data import DATASETS

    parser = subparsers.add_parser("finetune", help="prune by a recipe or plan and fine-tune in PyTorch "
                                                    "(needs the torch extra)", description=__doc__)
    parser.add_argument("model", metavar="MODEL", help="zoo model with a checkpoint, or an .onnx with --arch")
    parser.add_argument("--arch", help="zoo architecture of an .onnx MODEL (e.g. resnet18-digits)")
    parser.add_argument("--data", required=True, metavar="NAME", help="data set: " + ", ".join(DATASETS))
    parser.add_argument("--recipe", help="recipe whose planning passes make the masks (e.g. groupwise-50)")
    parser.add_argument("--plan", help="plan.json made on MODEL's ONNX file, applied instead of a recipe")
    add_speed_target_options(parser)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs. Default: 3")
    parser.add_argument("--schedule", choices=["one-shot", "gradual"], default="one-shot",
                        help="prune once then train, or ramp the pruning up (cubic) over the first "
                             "two thirds of the epochs. Default: one-shot")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine to 0. Default: 1e-3")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch. Default: 64")
    parser.add_argument("--train-limit", type=int, help="use only the first N training images (quick runs)")
    parser.add_argument("--seed", type=int, default=0, help="data order and augmentation seed. Default: 0")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per process (1 keeps runs repeatable). Default: 1")
    parser.add_argument("--timing-cache", metavar="FILE",
                        help="timing cache of a speed target's measurements ('off': measure afresh, keep nothing). "
                             "Default: $SPARSECC_TIMING_CACHE, else ~/.cache/sparsecc/timing-cache.json")
    parser.add_argument("--dynamo", action="store_true", help="export with the torch.export-based exporter")
    parser.add_argument("-o", "--output", required=True, help="output folder (model.onnx, plan.json, finetune.json)")
    parser.add_argument("--force", action="store_true",
                        help="write into an output folder that is not empty (the outputs replace theirs)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.commands._common import print_json
    from sparsecc.errors import OptionError, install_hint

    if args.epochs < 0 or args.batch_size < 1 or args.threads < 1:
        raise OptionError("--epochs must be at least 0, --batch-size and --threads at least 1")
    if (args.recipe is None) == (args.plan is None):
        raise OptionError("give either --recipe or --plan", where="finetune",
                          fix="--recipe groupwise-50 prunes here; --plan plan.json applies a plan made elsewhere")
    if args.plan is not None and (args.target_speedup is not None or args.target_latency is not None):
        raise OptionError("a speed target plans the filters, so it needs --recipe, not --plan", where="finetune",
                          fix="e.g. --recipe filter-l2 --target-speedup 2")
    if Path(args.model).suffix == ".onnx" and not args.arch:
        raise OptionError("an .onnx MODEL needs --arch, the zoo architecture it was exported from",
                          where=args.model, fix="e.g. --arch resnet18-digits (sparsecc zoo list)")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise OptionError("finetune needs PyTorch, which is not installed",
                          fix=install_hint("torch", "PyTorch")) from None
    from sparsecc.finetuning.job import FinetuneJob, run_finetune_job

    summary = run_finetune_job(FinetuneJob(
        args.model, args.data, args.output, recipe=args.recipe, plan=args.plan, arch=args.arch, epochs=args.epochs,
        schedule=args.schedule, lr=args.lr, batch_size=args.batch_size, train_limit=args.train_limit,
        seed=args.seed, threads=args.threads, dynamo=args.dynamo, force=args.force,
        target_speedup=args.target_speedup, target_latency=args.target_latency, timing_cache=args.timing_cache))
    if summary is None:  # a rank other than 0 of a distributed run
        return 0
    if args.json:
        print_json(summary)
    else:
        print(f"fine-tuned {summary['model']} on '{summary['data']}' ({summary['recipe'] or summary['plan']}, "
              f"{summary['schedule']}, {summary['epochs']} epochs): top-1 dense {summary['dense_top1']:.4f}, "
              f"pruned {summary['top1_before_finetune']:.4f}, fine-tuned {summary['top1']:.4f} "
              f"on {summary['n']} test images (ONNX Runtime: {summary['onnx_top1']:.4f})")
        if summary.get("speed_target"):
            print(f"  {speed_line(summary['speed_target'])}")
        print(f"wrote {args.output}/: model.onnx, plan.json, plan.npz, finetune.json")
        print(f"next: sparsecc compile {args.output}/model.onnx --recipe {detect_recipe(Path(args.output))} "
              "--shape input:1x1x32x32 -o OUT")
    return 0


def speed_line(result: dict) -> str:
    """The speed target's outcome in one line (measured on the pruned export before fine-tuning)."""
    if result.get("already_met"):
        return result["summary"]
    if "achieved" not in result:
        return (f"speed target {result['target']}: predicted {result['predicted']}x (not measured), "
                f"ideal {result['ideal']}x")
    return (f"speed target {result['target']}: {'reached' if result['reached'] else 'NOT reached'}: "
            f"{result['achieved']:.3f}x measured (CPU time, 1 thread; wall {result['wall']:.3f}x), predicted "
            f"{result['predicted']}x, ideal {result['ideal']}x")


def detect_recipe(folder: Path) -> str:
    """The detect-mode recipe that finds what the saved plan pruned: ``deprune-zeros`` for depthwise
    tap masks (it also removes dead depthwise channels), else ``zeros``."""
    import json

    try:
        weights = json.loads((folder / "plan.json").read_text()).get("weights", [])
    except (OSError, ValueError):
        return "zeros"
    return "deprune-zeros" if any(w.get("pattern") == "depthwise-taps" for w in weights) else "zeros"

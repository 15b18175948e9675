"""sparsecc demo [-o DIR]: a bundled trained model pruned and fine-tuned by sparsecc, compiled in zero-detect
mode, next to the dense model and to every recipe applied one-shot; verified, scored, timed, reported."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the main job: compile a bundled trained model with every "
                                                "built-in recipe, verify, benchmark and report",
                                   description=__doc__)
    parser.add_argument("-o", "--output", default="sparsecc-demo", help="output folder. Default: sparsecc-demo")
    parser.add_argument("--model", help="zoo model with a trained checkpoint (sparsecc zoo list)")
    parser.add_argument("--recipe", action="append", dest="recipes", metavar="NAME",
                        help="run only this recipe (repeatable). Default: every built-in recipe")
    parser.add_argument("--no-finetuned", action="store_true",
                        help="leave out the bundled fine-tuned checkpoints (one-shot recipes only)")
    parser.add_argument("--runs", type=int, default=20, help="timed rounds. Default: 20")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads. Default: 2")
    parser.add_argument("--force", action="store_true",
                        help="write into an output folder that is not empty (an earlier demo's outputs there are "
                             "replaced)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from sparsecc.demo import render_demo_markdown, run_demo

    summary = run_demo(args.output, args.model, args.recipes, runs=args.runs, threads=args.threads,
                       finetuned=not args.no_finetuned, force=args.force)
    print(render_demo_markdown(summary))
    print(f"wrote {args.output}/report.md and report.json, and one folder per recipe")
    return 1 if any(r["status"] != "ok" for r in summary["rows"]) else 0
